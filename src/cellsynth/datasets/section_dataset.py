"""``ReportSectionDataset``: an HTML fragment of the report that may not have been computed yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset

from cellsynth.datasets.atomic import atomic_file


class ReportSectionDataset(AbstractDataset[str | None, str]):
    """One section of ``report.html`` (a UTF-8 HTML fragment); loads ``None`` while no pipeline wrote it.

    The report node takes every section as an input, so ``kedro run --pipelines evaluation`` works
    before ``downstream`` has ever run: the report then says that section was not computed. Saves
    are atomic (a temporary file moved into place).
    """

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def load(self) -> str | None:
        return self._filepath.read_text(encoding="utf-8") if self._filepath.is_file() else None

    def save(self, data: str) -> None:
        with atomic_file(self._filepath) as partial:
            partial.write_text(data, encoding="utf-8")

    def _exists(self) -> bool:
        return self._filepath.is_file()
