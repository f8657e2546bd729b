"""Every parameter of a run checked before its first node, so a typo stops the run in seconds.

Each node parses its own block (``GenerationSettings.from_params``) when it runs, which for a wrong
generator name or hyperparameter is after preprocessing, splitting and the other generators.
:func:`validate_parameters` parses every block up front, checks each generator name against the
registry and builds each generator with its preset's hyperparameters (which runs the generator's
own ``Params`` checks); :class:`ParameterValidationHook` calls it before the pipeline runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from cellsynth import short_errors
from cellsynth.config import (
    ConfigError,
    DatasetSettings,
    DownstreamSettings,
    EvaluationSettings,
    GenerationSettings,
    IntegrationSettings,
    PreprocessingSettings,
    Settings,
    SplittingSettings,
    TrackingSettings,
)

BLOCKS: dict[str, type[Settings]] = {
    "dataset": DatasetSettings,
    "tracking": TrackingSettings,
    "preprocessing": PreprocessingSettings,
    "integration": IntegrationSettings,
    "splitting": SplittingSettings,
    "generation": GenerationSettings,
    "evaluation": EvaluationSettings,
    "downstream": DownstreamSettings,
}


def _check_generators(generation: GenerationSettings, presets: Any) -> None:
    """Known names; each generator built with its preset's hyperparameters (its ``Params`` checks)."""
    from cellsynth.generators import GENERATORS
    from cellsynth.pipelines.generation.nodes import build_generator, resolve_hyperparameters

    unknown = [g for g in generation.generators if g not in GENERATORS]
    if unknown:
        raise ConfigError(f"generation.generators: unknown generator(s) {unknown}; known: {sorted(GENERATORS)}")
    if len(set(generation.generators)) != len(generation.generators):
        raise ConfigError(f"generation.generators: {list(generation.generators)} names a generator twice")
    if presets is not None and not isinstance(presets, dict):
        raise ConfigError(f"generator_presets: expected a mapping of generator → preset → hyperparameters, got {presets!r}")
    for name in generation.generators:
        choices = (presets or {}).get(name) or {}
        where = f"generator_presets.{name}.{generation.preset if generation.preset in choices else 'default'}"
        try:
            build_generator(name, resolve_hyperparameters(presets or {}, name, generation.preset), generation.strategy)
        except (TypeError, ValueError) as exc:  # TypeError: an unknown hyperparameter
            raise ConfigError(f"{where}: {exc}") from None


def _check_counts_not_corrected(generation: GenerationSettings, integration: IntegrationSettings) -> None:
    """Count generators sample uncorrected counts: they cannot stand in for batch-corrected cells."""
    from cellsynth.generators import GENERATORS

    counting = [g for g in generation.generators if getattr(GENERATORS[g], "models_counts", False)]
    if counting and integration.method != "none":
        kept = [g for g in generation.generators if g not in counting]
        raise ConfigError(
            f"generation.generators: {counting} model raw counts, which integration.method={integration.method!r} "
            "does not correct, so their cells would not be in the space of the batch-corrected real cells. "
            f"Leave them out for integrated data (--params generation.generators={'+'.join(kept) or 'smote'}) or "
            "set integration.method: none.")


OUTPUT_FOLDERS = ("02_intermediate", "03_primary", "04_feature", "05_model_input", "06_models",
                  "07_model_output", "08_reporting")
"""The catalog's output folders under ``data/``: an input file there would be overwritten by a run."""


def _check_input_outside_outputs(path: str, setting: str, project_path: Path) -> None:
    resolved = (project_path / path).resolve()
    for folder in OUTPUT_FOLDERS:
        outputs = (project_path / "data" / folder).resolve()
        if resolved == outputs or outputs in resolved.parents:
            raise ConfigError(
                f"{setting}={path!r} is inside data/{folder}, where cellsynth writes its outputs (a run would "
                "overwrite or delete it): copy your file to data/01_raw/ or any folder outside data/.")


def validate_parameters(params: dict[str, Any], *, generators: bool = True, project_path: Path | None = None) -> None:
    """Raise :class:`~cellsynth.config.ConfigError` naming the first wrong parameter of ``params``.

    Checks every settings block, ``folds_to_run`` against ``splitting.n_folds``, the ``datasets``
    list and, with ``generators`` (a run that trains them), the generator names and each generator's
    hyperparameters. (Evaluation alone may read the cells of a generator cellsynth does not have.)
    With ``project_path``, input files inside the output folders of ``data/`` are refused.
    """
    from cellsynth.data import integration
    from cellsynth.run_matrix import RunMatrix

    dataset = params.get("dataset")
    if (isinstance(dataset, dict) and dataset.get("label_key", "") is None and not params.get("datasets")
            and not dataset.get("cluster_if_unlabelled")):
        raise ConfigError(
            "dataset.label_key is null: cellsynth models cells per cell type, so each cell needs a label. "
            "Unlabelled data: set dataset.cluster_if_unlabelled: true (--params "
            "dataset.cluster_if_unlabelled=true) to label the cells by Leiden clusters after QC (named "
            "'cluster 0', 'cluster 1', ... in every table; preprocessing.clustering sets the resolution), or "
            "cluster it first yourself and set dataset.label_key to the cluster column.")
    parsed = {block: cls.from_params(params.get(block)) for block, cls in BLOCKS.items()}
    matrix = RunMatrix.from_params(params)
    if project_path is not None:
        inputs = [(spec.get("path"), f"datasets[{i}].path") for i, spec in enumerate(params.get("datasets") or [])
                  if isinstance(spec, dict)]
        for path, setting in [(parsed["dataset"].path, "dataset.path"), *inputs]:
            if path:
                _check_input_outside_outputs(str(path), setting, Path(project_path))
    if generators:
        _check_generators(parsed["generation"], params.get("generator_presets"))
    datasets = params.get("datasets") or []
    if datasets:
        try:
            specs = integration.parse_dataset_specs(datasets)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        for spec in specs:
            try:
                parsed["preprocessing"].qc_for(spec.name, spec.qc)
            except ConfigError as exc:
                raise ConfigError(f"datasets[{spec.name}].qc: {exc}") from None
        if generators:
            _check_counts_not_corrected(parsed["generation"], parsed["integration"])
    from cellsynth.pipelines.downstream.pipeline import downstream_folds

    try:
        downstream_folds(matrix, parsed["downstream"].folds)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class ParameterValidationHook:
    """Validates the run's parameters before its first node (see :func:`validate_parameters`), and
    has cellsynth's input and parameter errors printed as their message (:mod:`cellsynth.short_errors`)."""

    @hook_impl
    def after_context_created(self, context) -> None:
        short_errors.install(Path(context.project_path) / "logs")

    @hook_impl(tryfirst=True)  # before the tracking hook opens an MLflow run for a run that cannot start
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        trains = any(node.name.endswith(".generate_cells") for node in pipeline.nodes)
        validate_parameters(catalog.load("parameters"), generators=trains, project_path=Path(run_params["project_path"]))
