"""Kedro datasets of cellsynth."""

from cellsynth.datasets.anndata_collection import AnnDataCollectionDataset
from cellsynth.datasets.anndata_dataset import AnnDataDataset
from cellsynth.datasets.generator_dataset import GeneratorDataset
from cellsynth.datasets.section_dataset import ReportSectionDataset

__all__ = ["AnnDataCollectionDataset", "AnnDataDataset", "GeneratorDataset", "ReportSectionDataset"]
