"""Kedro datasets of cellsynth."""

from cellsynth.datasets.anndata_dataset import AnnDataDataset

__all__ = ["AnnDataDataset"]
