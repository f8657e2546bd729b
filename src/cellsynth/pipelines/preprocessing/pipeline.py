"""``preprocessing``: one dataset (``params:dataset``), or several integrated ones (``params:datasets``).

With an empty ``datasets`` list (the default) the pipeline reads ``raw_cells`` (the catalog entry of
``dataset.path``), validates it, applies QC and normalises it into ``normalised_cells``.

With a non-empty ``datasets`` list it reads every listed file, applies QC to each, keeps the shared
genes, harmonises the labels (``label_mapping``), concatenates with ``obs["batch"]``, normalises,
batch-corrects (``integration.method``) into the same ``normalised_cells`` and scores the
correction (silhouettes, UMAPs, report section). Everything downstream is the same in both cases.
Which shape is built is decided from the run's parameters, as for the folds (see
:mod:`cellsynth.run_matrix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kedro.pipeline import Pipeline, node, pipeline

from cellsynth import run_matrix
from cellsynth.pipelines.preprocessing.nodes import (
    combine_datasets,
    correct_batches,
    filter_cells_and_genes,
    load_datasets,
    log_normalise,
    record_provenance,
    score_integration,
    validate_input,
)


def configured_datasets() -> list[Any]:
    """The ``datasets`` parameter of the run being set up (or of the on-disk configuration)."""
    return list(run_matrix.active_parameters().get("datasets") or [])


def create_pipeline(datasets: Sequence[Any] | None = None, **kwargs) -> Pipeline:
    datasets = configured_datasets() if datasets is None else list(datasets)
    if datasets:
        return _integration_pipeline()
    return pipeline(
        [
            node(validate_input, ["raw_cells", "params:dataset"], "validated_counts", name="validate_input"),
            node(
                filter_cells_and_genes,
                ["validated_counts", "params:preprocessing", "params:splitting", "params:dataset"],
                ["qc_cells", "qc_summary", "cell_types", "qc_figure"],
                name="quality_control",
            ),
            node(log_normalise, ["qc_cells", "params:preprocessing"], "normalised_cells", name="normalise"),
            # From the in-memory qc_cells (the same record): no second read of normalised_cells.
            node(record_provenance, "qc_cells", "dataset_provenance", name="record_provenance"),
        ]
    )


def _integration_pipeline() -> Pipeline:
    return pipeline(
        [
            node(load_datasets, ["raw_datasets", "params:datasets", "params:integration"], "validated_datasets",
                 name="load_datasets"),
            node(
                combine_datasets,
                [
                    "validated_datasets",
                    "params:datasets",
                    "params:label_mapping",
                    "params:preprocessing",
                    "params:splitting",
                    "params:integration",
                    "params:dataset",
                ],
                ["qc_cells", "qc_summary", "integration_genes", "label_harmonisation", "cell_types", "qc_figure"],
                name="combine_datasets",
            ),
            node(log_normalise, ["qc_cells", "params:preprocessing"], "uncorrected_cells", name="normalise"),
            node(correct_batches, ["uncorrected_cells", "params:integration"], "normalised_cells", name="batch_correction"),
            node(record_provenance, "qc_cells", "dataset_provenance", name="record_provenance"),
            node(
                score_integration,
                ["normalised_cells", "integration_genes", "label_harmonisation", "params:integration", "params:dataset"],
                [
                    "integration_scores",
                    "integration_asw_per_type",
                    "integration_cells_per_type",
                    "integration_figure",
                    "integration_section",
                ],
                name="score_integration",
            ),
        ]
    )
