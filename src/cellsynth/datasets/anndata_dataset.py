"""``AnnDataDataset``: an ``.h5ad`` file in the Kedro catalog (kedro-datasets has none).

Saves are atomic: the object is written to a temporary file next to the target and moved into
place with ``os.replace``, so an interrupted save never leaves a truncated ``.h5ad`` behind.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
from kedro.io.core import AbstractVersionedDataset, DatasetError, Version

from cellsynth import provenance
from cellsynth.datasets.atomic import atomic_file


class AnnDataDataset(AbstractVersionedDataset[ad.AnnData, ad.AnnData]):
    """Load and save an :class:`~anndata.AnnData` as ``.h5ad`` on the local filesystem.

    Example catalog entry::

        fold_0.train:
          type: cellsynth.datasets.AnnDataDataset
          filepath: data/05_model_input/pbmc3k/fold_0/train.h5ad
          save_args:
            compression: gzip

    Parameters
    ----------
    filepath
        Path of the ``.h5ad`` file.
    load_args
        Keyword arguments of :func:`anndata.read_h5ad` (e.g. ``backed: r``).
    save_args
        Keyword arguments of :meth:`anndata.AnnData.write_h5ad` (e.g. ``compression: gzip``).
    version
        Kedro versioning (``versioned: true`` in the catalog).
    fingerprint
        Put the file's size, time and SHA-256 (:func:`cellsynth.provenance.file_fingerprint`) in
        ``uns["cellsynth_file"]`` of what is loaded: the user's input file, whose content hash names the
        data every output was made from.
    metadata
        Free-form metadata, ignored by Kedro (shown in kedro-viz).
    """

    def __init__(
        self,
        *,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        fingerprint: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            filepath=PurePosixPath(Path(filepath).expanduser().as_posix()),
            version=version,
            exists_function=lambda path: Path(path).is_file(),
            glob_function=lambda pattern: sorted(glob.glob(pattern)),
        )
        self._load_args = dict(load_args or {})
        self._save_args = dict(save_args or {})
        self._fingerprint = bool(fingerprint)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": str(self._filepath),
            "version": self._version,
            "load_args": self._load_args,
            "save_args": self._save_args,
        }

    def load(self) -> ad.AnnData:
        path = Path(self._get_load_path())
        if not path.is_file():
            raise DatasetError(f"No .h5ad file at '{path}'. Check the path (relative paths start at the project root).")
        try:
            adata = ad.read_h5ad(path, **self._load_args)
        except OSError as exc:
            raise DatasetError(f"'{path}' is not a readable .h5ad file: {exc}") from exc
        if self._fingerprint:
            adata.uns[provenance.FILE_KEY] = json.dumps(provenance.file_fingerprint(path))
        return adata

    def save(self, data: ad.AnnData) -> None:
        if not isinstance(data, ad.AnnData):
            raise DatasetError(f"AnnDataDataset can only save AnnData objects, got {type(data).__name__}")
        with atomic_file(Path(self._get_save_path())) as partial:
            data.write_h5ad(partial, **self._save_args)

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError:
            return False
        return Path(path).is_file() and Path(path).stat().st_size > 0
