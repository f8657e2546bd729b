"""Node of the ``report`` pipeline: ``report.html`` from every section, whichever pipelines ran."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cellsynth import provenance
from cellsynth.config import DatasetSettings, GenerationSettings, split_list
from cellsynth.data import integration
from cellsynth.data import report as data_report
from cellsynth.downstream import report as downstream_report
from cellsynth.evaluation import report as evaluation_report
from cellsynth.reporting.html import missing_section, page, section_dataset

SHOWN_PARAMETERS = ("dataset", "datasets", "folds_to_run", "preprocessing", "integration", "splitting", "generation",
                    "evaluation", "downstream")


def _checked(fragment: str | None, section_id: str, title: str, pipeline: str, dataset: str) -> str:
    """``fragment``, or a section saying why it is not shown (never computed, or computed for other data)."""
    rerun = f"Run `kedro run --pipelines {pipeline}` to compute it."
    if fragment is None:
        return missing_section(section_id, title, f"This run has no {pipeline} results yet. {rerun}", dataset=dataset)
    computed_for = section_dataset(fragment)
    if computed_for not in (None, dataset):
        return missing_section(section_id, title, f"The saved {pipeline} results are for the dataset "
                               f"{computed_for!r}, not {dataset!r}. {rerun}", dataset=dataset)
    return fragment


def _shown_parameters(parameters: Mapping[str, Any], generators: tuple[str, ...]) -> dict[str, Any]:
    shown = {key: parameters[key] for key in SHOWN_PARAMETERS if parameters.get(key) not in (None, [], {})}
    presets = parameters.get("generator_presets") or {}
    shown["generator_presets"] = {g: presets[g] for g in generators if g in presets}
    return shown


def build_report(
    data_section: str | None,
    evaluation_section: str | None,
    integration_section: str | None,
    downstream_section: str | None,
    dataset_provenance: dict[str, Any] | None,
    parameters: dict[str, Any],
) -> str:
    """The self-contained ``report.html``: the data (QC, cell types), evaluation, integration (when several
    datasets are integrated) and downstream sections, each as last computed for this dataset or a note that it
    was not.

    The dataset is named from ``dataset_provenance`` (what preprocessing recorded: its files and their
    SHA-256), the parameters only when there is no record."""
    dataset = str(((dataset_provenance or {}).get("dataset") or {}).get("name")
                  or DatasetSettings.from_params(parameters.get("dataset")).name)
    generators = GenerationSettings.from_params(parameters.get("generation")).generators
    sections = [_checked(data_section, data_report.SECTION_ID, data_report.SECTION_TITLE, "splitting", dataset),
                _checked(evaluation_section, evaluation_report.SECTION_ID, evaluation_report.SECTION_TITLE,
                         "evaluation", dataset)]
    if parameters.get("datasets"):
        sections.append(_checked(integration_section, integration.SECTION_ID, integration.SECTION_TITLE, "preprocessing",
                                 dataset))
    sections.append(_checked(downstream_section, downstream_report.SECTION_ID, downstream_report.SECTION_TITLE,
                             "downstream", dataset))
    source = provenance.describe(dataset_provenance) if dataset_provenance else f"{dataset} (no provenance record)"
    folds = split_list(parameters.get("folds_to_run", []))
    folds = [folds] if isinstance(folds, int | str) else folds  # `--params folds_to_run=0` gives one number
    summary = [f"Dataset: {source}", f"Folds: {', '.join(str(k) for k in folds)}",
               f"Generators: {', '.join(generators) or 'none'}"]
    return page(title=f"cellsynth report: {dataset}", sections=sections, summary_lines=summary,
                parameters=_shown_parameters(parameters, generators))
