"""Nodes of the ``preprocessing`` pipeline: thin adapters over :mod:`cellsynth.data`."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from anndata import AnnData

from cellsynth.data import normalise, quality_control, validate_counts
from cellsynth.data.validation import drop_unusable_cells

log = logging.getLogger(__name__)


def validate_input(raw_cells: AnnData, dataset: dict[str, Any]) -> AnnData:
    """Check the user's file (raw counts, labels, names) and return a clean copy of its counts."""
    clean, report = validate_counts(
        raw_cells,
        source=str(dataset["path"]),
        label_key=dataset["label_key"],
        batch_key=dataset.get("batch_key"),
        counts_layer=dataset.get("counts_layer"),
    )
    log.info(
        "%s: %d cells × %d genes, counts read from %s, %d cells without a label",
        report.source, clean.n_obs, clean.n_vars, report.counts_from, report.n_unlabelled,
    )
    clean.uns["dataset_name"] = dataset["name"]
    return clean


def filter_cells_and_genes(
    validated_counts: AnnData, preprocessing: dict[str, Any], n_folds: int, dataset: dict[str, Any]
) -> tuple[AnnData, pd.DataFrame]:
    """QC with the configured thresholds, then drop unlabelled cells and types too small to stratify."""
    qc = preprocessing["qc"]
    filtered, summary = quality_control(
        validated_counts,
        min_cells_per_gene=qc["min_cells_per_gene"],
        min_genes_per_cell=qc["min_genes_per_cell"],
        max_genes_per_cell=qc["max_genes_per_cell"],
        max_pct_mito=qc["max_pct_mito"],
        mito_prefixes=qc["mito_prefixes"],
        source=str(dataset["path"]),
    )
    kept, dropped, unlabelled = drop_unusable_cells(
        filtered, preprocessing["min_cells_per_type"], source=str(dataset["path"]), n_folds=n_folds
    )
    if unlabelled:
        summary.loc[len(summary)] = [f"cells with a label (dropped {unlabelled})", filtered.n_obs - unlabelled, kept.n_vars]
    if dropped:
        step = f"cell types with >= {preprocessing['min_cells_per_type']} cells (dropped {dropped})"
        summary.loc[len(summary)] = [step, kept.n_obs, kept.n_vars]
    summary.insert(0, "dataset", dataset["name"])
    return kept, summary


def log_normalise(qc_cells: AnnData, preprocessing: dict[str, Any]) -> AnnData:
    """Library-size normalisation and log1p; raw counts kept in ``layers["counts"]``."""
    return normalise(qc_cells, target_sum=float(preprocessing["target_sum"]))
