"""Kedro datasets of cellsynth."""

from cellsynth.datasets.anndata_dataset import AnnDataDataset
from cellsynth.datasets.generator_dataset import GeneratorDataset

__all__ = ["AnnDataDataset", "GeneratorDataset"]
