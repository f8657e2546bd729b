"""``ReportSectionDataset``: an HTML fragment of the report that may not have been computed yet."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset


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
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self._filepath.name}.", suffix=".tmp", dir=self._filepath.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(data)
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, self._filepath)
        finally:
            if os.path.exists(tmp_name):
                os.remove(tmp_name)

    def _exists(self) -> bool:
        return self._filepath.is_file()
