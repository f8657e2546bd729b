"""``ProvenanceDataset``: the provenance record of a dataset's cells as JSON (``None`` while none was written)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset

from cellsynth.datasets.atomic import atomic_file


class ProvenanceDataset(AbstractDataset[dict[str, Any] | None, dict[str, Any]]):
    """A :mod:`cellsynth.provenance` record (input files' hashes, the parameters that made the cells).

    The report reads it to name the data its sections describe; it loads ``None`` when preprocessing
    has not run (e.g. folds made by hand), so the report still builds. Saves are atomic.
    """

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def load(self) -> dict[str, Any] | None:
        return json.loads(self._filepath.read_text(encoding="utf-8")) if self._filepath.is_file() else None

    def save(self, data: dict[str, Any]) -> None:
        with atomic_file(self._filepath) as partial:
            partial.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")

    def _exists(self) -> bool:
        return self._filepath.is_file() and self._filepath.stat().st_size > 0
