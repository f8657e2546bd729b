from __future__ import annotations

from typing import Any

from kedro.pipeline import Pipeline, node, pipeline

from cellsynth import run_matrix
from cellsynth.config import DownstreamSettings, IntegrationSettings
from cellsynth.pipelines._binding import bind
from cellsynth.pipelines.downstream.nodes import (
    build_downstream_section,
    collect_frames,
    explain_downstream_skipped,
    plot_fold_interactions,
    real_cell_markers,
    real_train_vs_test,
    reference_interactions,
    reference_markers,
    score_generator,
    synthetic_interactions,
    synthetic_markers,
    textbook_markers_by_set,
)
from cellsynth.run_matrix import RunMatrix

PARAMS = {"params:downstream", "params:dataset"}


def downstream_folds(matrix: RunMatrix, setting: Any = None) -> tuple[int, ...]:
    """The folds to analyse: ``downstream.folds`` (``first``, ``all`` or a list) within ``matrix.folds``.

    ``setting`` defaults to the run's ``downstream.folds`` parameter (``first``: the paper analysed
    its first fold).
    """
    if setting is None:
        setting = DownstreamSettings.from_params(run_matrix.active_parameters().get("downstream")).folds
    if setting == "first":
        return (matrix.folds[0],)
    if setting == "all":
        return tuple(matrix.folds)
    folds = (int(setting),) if isinstance(setting, int | str) else tuple(int(k) for k in setting)
    outside = [k for k in folds if k not in matrix.folds]
    if outside or not folds:
        raise ValueError(f"downstream.folds={list(folds)} must be `first`, `all` or folds of "
                         f"folds_to_run={list(matrix.folds)} (the generated folds)")
    return folds


def correction_method(params: dict[str, Any] | None = None) -> str | None:
    """The batch correction applied to the expression the generators model, or ``None`` if none.

    Correction happens when several ``datasets`` are integrated with ``integration.method`` other
    than ``none``; the corrected values (which may be negative) are what the folds hold.
    """
    params = run_matrix.active_parameters() if params is None else params
    method = IntegrationSettings.from_params(params.get("integration")).method
    return method if len(params.get("datasets") or []) > 1 and method != "none" else None


def _fold_pipeline(k: int) -> Pipeline:
    return pipeline(
        [
            node(bind(real_cell_markers, fold=k), ["train", "test", "params:downstream", "params:dataset"],
                 ["real_marker_ranking", "real_top_markers", "real_candidate_markers", "textbook_markers",
                  "real_marker_violins"], name="real_cell_markers"),
            node(bind(reference_markers, fold=k), ["train", "test", "params:downstream"],
                 ["test_marker_ranking", "train_marker_ranking"], name="reference_markers"),
            node(bind(reference_interactions, fold=k), ["train", "test", "params:downstream"],
                 ["test_interactions", "train_interactions"], name="reference_interactions"),
            node(bind(real_train_vs_test, fold=k),
                 ["test_marker_ranking", "train_marker_ranking", "test_interactions", "train_interactions", "train",
                  "params:downstream"],
                 ["real_marker_preservation", "real_interaction_comparison"], name="real_train_vs_test"),
        ],
        namespace=f"fold_{k}",
        parameters=PARAMS,
    )


def _generator_pipeline(name: str, k: int) -> Pipeline:
    fold_level = {"train", "test", "real_top_markers", "test_marker_ranking", "test_interactions"}
    return pipeline(
        [
            node(bind(synthetic_markers, generator=name, fold=k),
                 ["synthetic", "test", "real_top_markers", "params:downstream"],
                 ["marker_ranking", "candidate_markers", "marker_violins"], name="synthetic_markers"),
            node(bind(synthetic_interactions, generator=name, fold=k),
                 ["train", "synthetic", "upsample", "params:downstream"],
                 ["interactions_synthetic_only", "interactions_real_plus_synthetic"], name="synthetic_interactions"),
            node(bind(score_generator, generator=name, fold=k),
                 ["test_marker_ranking", "marker_ranking", "test_interactions", "interactions_synthetic_only",
                  "interactions_real_plus_synthetic", "train", "synthetic", "upsample", "params:downstream"],
                 ["marker_preservation", "interaction_comparison"], name="score_downstream"),
        ],
        namespace=f"{name}.fold_{k}",
        inputs={dataset: f"fold_{k}.{dataset}" for dataset in fold_level},
        parameters={"params:downstream"},
    )


def _figures_node(k: int, generators: tuple[str, ...]):
    """Fold reporting node (outside ``fold_<k>``: it follows the generator namespaces)."""
    tables = [f"{g}.fold_{k}.{kind}" for g in generators
              for kind in ("interactions_synthetic_only", "interactions_real_plus_synthetic")]
    return node(
        bind(plot_fold_interactions, generators=generators, fold=k),
        ["params:downstream", f"fold_{k}.test_interactions", f"fold_{k}.train_interactions", *tables],
        [f"fold_{k}.interaction_heatmaps", f"fold_{k}.interaction_dotplot"],
        name=f"plot_interactions_fold_{k}",
    )


def create_pipeline(matrix: RunMatrix, folds: tuple[int, ...] | None = None, **kwargs) -> Pipeline:
    """Marker genes and cell–cell interactions of real and synthetic cells (paper 2.5–2.6).

    * ``fold_<k>``: ``real_cell_markers`` (S1 Table ``fold_<k>.real_candidate_markers``, Fig 5
      ``fold_<k>.real_marker_violins``, ``fold_<k>.textbook_markers``), ``reference_markers`` and
      ``reference_interactions`` (test and training cells), ``real_train_vs_test``;
    * ``<generator>.fold_<k>``: ``synthetic_markers``, ``synthetic_interactions`` (synthetic only;
      real + synthetic), ``score_downstream`` (against the test cells; logged into the generator's
      MLflow run);
    * reporting: ``plot_interactions_fold_<k>`` (Figs 6–7), ``collect_marker_preservation``
      (``marker_preservation``), ``collect_interactions_rmse`` (``interactions_rmse``),
      ``textbook_markers_by_set`` (which textbook markers each set recovers) and
      ``build_downstream_section`` (``downstream_section``, the report's downstream section).

    Folds: ``downstream.folds`` (default the first of ``folds_to_run``), or ``folds`` when given.
    Reads what the generation pipeline saved.

    On batch-corrected expression (several ``datasets`` with an ``integration.method``) marker
    tests and CellPhoneDB have no meaning (see :func:`cellsynth.downstream.require_log_normalised`):
    the pipeline is then the one node ``explain_downstream_skipped``, which says so in the log and
    in the report's downstream section, so that the whole chain still runs end to end.
    """
    method = correction_method()
    if method is not None:
        return pipeline([node(bind(explain_downstream_skipped, method=method), "params:dataset",
                              "downstream_section", name="explain_downstream_skipped")])
    folds = tuple(folds) if folds is not None else downstream_folds(matrix)
    generators = tuple(matrix.generators)
    per_fold = sum((_fold_pipeline(k) for k in folds), Pipeline([]))
    per_generator = sum((_generator_pipeline(g, k) for g in generators for k in folds), Pipeline([]))

    preservation = [f"fold_{k}.real_marker_preservation" for k in folds]
    preservation += [f"{g}.fold_{k}.marker_preservation" for k in folds for g in generators]
    comparison = [f"fold_{k}.real_interaction_comparison" for k in folds]
    comparison += [f"{g}.fold_{k}.interaction_comparison" for k in folds for g in generators]
    fold_objects = []
    for k in folds:
        fold_objects += [f"fold_{k}.real_candidate_markers", f"fold_{k}.textbook_markers",
                         f"fold_{k}.test_interactions", f"fold_{k}.real_marker_violins", f"fold_{k}.interaction_heatmaps",
                         f"fold_{k}.interaction_dotplot", *[f"{g}.fold_{k}.marker_violins" for g in generators]]
    textbook = []
    for k in folds:
        textbook += [f"fold_{k}.textbook_markers", f"fold_{k}.test_marker_ranking",
                     *[f"{g}.fold_{k}.marker_ranking" for g in generators]]
    reporting = pipeline(
        [
            *(_figures_node(k, generators) for k in folds),
            node(bind(textbook_markers_by_set, generators=generators, folds=folds),
                 ["params:downstream", "params:dataset", *textbook], "textbook_markers_by_set",
                 name="textbook_markers_by_set"),
            node(collect_frames, preservation, "marker_preservation", name="collect_marker_preservation"),
            node(collect_frames, comparison, "interactions_rmse", name="collect_interactions_rmse"),
            node(bind(build_downstream_section, generators=generators, folds=folds),
                 ["marker_preservation", "interactions_rmse", "textbook_markers_by_set", "params:downstream",
                  "params:dataset", *fold_objects],
                 "downstream_section", name="build_downstream_section"),
        ]
    )
    return per_fold + per_generator + reporting
