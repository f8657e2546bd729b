"""Kedro datasets of cellsynth; every file dataset saves atomically (:mod:`cellsynth.datasets.atomic`)."""

from cellsynth.datasets.anndata_collection import AnnDataCollectionDataset
from cellsynth.datasets.anndata_dataset import AnnDataDataset
from cellsynth.datasets.atomic import (
    CSVDataset,
    ImageDataset,
    JSONDataset,
    ParquetDataset,
    PickleDataset,
    TextDataset,
)
from cellsynth.datasets.generator_dataset import GeneratorDataset
from cellsynth.datasets.provenance_dataset import ProvenanceDataset
from cellsynth.datasets.reference_space import ReferenceSpaceDataset
from cellsynth.datasets.section_dataset import ReportSectionDataset

__all__ = [
    "AnnDataCollectionDataset",
    "AnnDataDataset",
    "CSVDataset",
    "GeneratorDataset",
    "ImageDataset",
    "JSONDataset",
    "ParquetDataset",
    "PickleDataset",
    "ProvenanceDataset",
    "ReferenceSpaceDataset",
    "ReportSectionDataset",
    "TextDataset",
]
