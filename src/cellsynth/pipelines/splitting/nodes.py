"""Nodes of the ``splitting`` pipeline: stratified folds, then per-fold train/test with HVGs."""

from __future__ import annotations

from typing import Any

import pandas as pd
from anndata import AnnData

from cellsynth import provenance
from cellsynth.config import SplittingSettings
from cellsynth.data import assign_folds, make_fold


def split_folds(normalised_cells: AnnData, splitting: dict[str, Any]) -> pd.DataFrame:
    """Stratified K-fold assignment of every cell (seeded)."""
    settings = SplittingSettings.from_params(splitting)
    return assign_folds(normalised_cells, n_folds=settings.n_folds, seed=settings.seed)


def build_fold(
    normalised_cells: AnnData, fold_assignments: pd.DataFrame, splitting: dict[str, Any], fold: int
) -> tuple[AnnData, AnnData]:
    """Training and test cells of one fold, on HVGs selected from its training cells only."""
    settings = SplittingSettings.from_params(splitting)
    train, test = make_fold(normalised_cells, fold_assignments, fold=fold, n_top_genes=settings.n_top_genes,
                            hvg_flavor=settings.hvg_flavor)
    record = provenance.with_sections(provenance.record_of(normalised_cells),
                                      splitting=provenance.splitting_section(splitting, fold))
    for part in (train, test):
        provenance.stamp(part, record)
    return train, test
