"""``GeneratorDataset``: a fitted cellsynth generator (a checkpoint folder) in the Kedro catalog."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

from cellsynth.datasets.atomic import FOLDER_MODE, partial_path, remove_stale_partials
from cellsynth.generators.base import Generator


class GeneratorDataset(AbstractDataset[Generator, Generator]):
    """Save with :meth:`Generator.save` into ``path/``, load with :meth:`Generator.load`.

    The folder is written next to the target and swapped in at the end, so an interrupted save
    leaves the previous checkpoint (or nothing), never half a checkpoint.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}

    def load(self) -> Generator:
        if not (self._path / "generator.json").is_file():
            raise DatasetError(f"No fitted generator in '{self._path}' (run the generation pipeline first).")
        return Generator.load(self._path)

    def save(self, data: Generator) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self._path)
        staging = partial_path(self._path)
        staging.mkdir(mode=FOLDER_MODE)
        previous = partial_path(self._path)
        try:
            data.save(staging)
            if self._path.exists():
                self._path.rename(previous)
            staging.rename(self._path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(previous, ignore_errors=True)

    def _exists(self) -> bool:
        return (self._path / "generator.json").is_file()
