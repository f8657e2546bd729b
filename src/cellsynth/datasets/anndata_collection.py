"""``AnnDataCollectionDataset``: the ``.h5ad`` files of the ``datasets`` list, read through the catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad
from kedro.io.core import AbstractDataset, DatasetError

from cellsynth import provenance
from cellsynth.data.integration import parse_dataset_specs


class AnnDataCollectionDataset(AbstractDataset[dict[str, ad.AnnData], None]):
    """Several user files as ``{name: AnnData}`` (read-only: cellsynth never writes the user's data).

    Parameters
    ----------
    datasets
        The ``datasets`` list (each entry with ``name``, ``path``, ``label_key``, ...), as in
        ``conf/<env>/globals.yml``; an empty list loads an empty mapping.
    """

    def __init__(self, *, datasets: list[dict[str, Any]] | None = None, metadata: dict[str, Any] | None = None):
        self._entries = list(datasets or [])
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"datasets": {str(e.get("name")): str(e.get("path")) for e in self._entries}}

    def load(self) -> dict[str, ad.AnnData]:
        if not self._entries:
            return {}
        loaded = {}
        for spec in parse_dataset_specs(self._entries):
            if not Path(spec.path).is_file():
                raise DatasetError(f"{spec.source}: no such file. Fix its path in the `datasets` list.")
            loaded[spec.name] = ad.read_h5ad(spec.path)
            # The file's content hash: what every output of these datasets was made from.
            loaded[spec.name].uns[provenance.FILE_KEY] = json.dumps(provenance.file_fingerprint(spec.path))
        return loaded

    def save(self, data: Any) -> None:
        raise DatasetError("the `datasets` files are the user's input: cellsynth never writes them")

    def _exists(self) -> bool:
        return all(Path(str(e.get("path"))).is_file() for e in self._entries)
