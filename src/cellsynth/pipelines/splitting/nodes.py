"""Nodes of the ``splitting`` pipeline: stratified folds, then per-fold train/test with HVGs."""

from __future__ import annotations

from typing import Any

import pandas as pd
from anndata import AnnData

from cellsynth import provenance
from cellsynth.config import DatasetSettings, PreprocessingSettings, SplittingSettings
from cellsynth.data import assign_folds, make_fold
from cellsynth.data.report import data_section
from cellsynth.data.splits import describe_type_split
from cellsynth.reporting.figures import image_to_png
from cellsynth.schema import LABEL_KEY


def split_folds(normalised_cells: AnnData, splitting: dict[str, Any]) -> pd.DataFrame:
    """Stratified K-fold assignment of every cell (seeded)."""
    settings = SplittingSettings.from_params(splitting)
    return assign_folds(normalised_cells, n_folds=settings.n_folds, seed=settings.seed)


def build_fold(
    normalised_cells: AnnData, fold_assignments: pd.DataFrame, splitting: dict[str, Any], fold: int
) -> tuple[AnnData, AnnData]:
    """Training and test cells of one fold, on HVGs chosen on its training cells (or on all cells: ``hvg_cells``)."""
    settings = SplittingSettings.from_params(splitting)
    train, test = make_fold(normalised_cells, fold_assignments, fold=fold, n_top_genes=settings.n_top_genes,
                            hvg_flavor=settings.hvg_flavor, hvg_cells=settings.hvg_cells)
    record = provenance.with_sections(provenance.record_of(normalised_cells),
                                      splitting=provenance.splitting_section(splitting, fold))
    for part in (train, test):
        provenance.stamp(part, record)
    return train, test


def describe_data(
    normalised_cells: AnnData, fold_assignments: pd.DataFrame, cell_types: pd.DataFrame, qc_summary: pd.DataFrame,
    qc_figure: Any, preprocessing: dict[str, Any], splitting: dict[str, Any], dataset: dict[str, Any],
) -> tuple[pd.DataFrame, str]:
    """The cell-type table with each kept type's split (``cell_type_split.csv``) and the report's data section."""
    split = describe_type_split(cell_types, normalised_cells.obs[LABEL_KEY], fold_assignments)
    settings = PreprocessingSettings.from_params(preprocessing)
    folds = SplittingSettings.from_params(splitting).n_folds
    organism = normalised_cells.uns.get("organism", {})
    facts = [
        f"Cells after QC and cell-type filtering: {normalised_cells.n_obs}; genes: {normalised_cells.n_vars}",
        f"Organism: {organism.get('name', 'unknown')} ("
        + ("detected from the gene names" if organism.get("detected") else "dataset.organism") + ")",
        f"Cell types need at least max(preprocessing.min_cells_per_type={settings.min_cells_per_type}, "
        f"splitting.n_folds={folds}) cells",
    ]
    section = data_section(DatasetSettings.from_params(dataset).name, qc_summary, split, image_to_png(qc_figure), facts)
    return split, section
