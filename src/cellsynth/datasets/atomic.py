"""Atomic saves for every file type of the catalog: a temporary file in the target's folder, then a rename.

A process killed while writing leaves the previous output whole (or none): ``os.replace`` within one
folder is atomic on POSIX filesystems. The temporary file is hidden and named after the target and
the writing process (``.<name>.<pid>-<random>.tmp<suffix>``; the suffix keeps formats that are read
from the extension, such as Pillow's); a later save of the same target removes those whose process
is gone. ``kedro-datasets``' file datasets write to ``self._get_save_path()`` through fsspec, so the
subclasses below redirect that path to the temporary file for the duration of one save.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.pandas import CSVDataset as _CSVDataset
from kedro_datasets.pandas import ParquetDataset as _ParquetDataset
from kedro_datasets.pickle import PickleDataset as _PickleDataset
from kedro_datasets.pillow import ImageDataset as _ImageDataset
from kedro_datasets.text import TextDataset as _TextDataset

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
"""The mode a plain ``open`` gives a new file (``mkstemp`` would give 0600)."""
FOLDER_MODE = 0o777 & ~_UMASK
"""The mode ``mkdir`` gives a new folder (``mkdtemp`` would give 0700)."""


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(target: Path) -> list[Path]:
    """Delete the temporary files and folders of earlier saves of ``target`` whose process is gone."""
    removed = []
    if not target.parent.is_dir():
        return removed
    for leftover in target.parent.glob(f".{target.name}.*.tmp*"):
        pid_text = leftover.name[len(target.name) + 2:].split("-", 1)[0]
        if pid_text.isdigit() and process_alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def partial_path(target: Path) -> Path:
    """A fresh temporary path for a save of ``target``, in the same folder."""
    return target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{target.suffix}"


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` (usual file mode)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    partial = partial_path(target)
    try:
        yield partial
        if partial.is_file():
            os.chmod(partial, FILE_MODE)
        os.replace(partial, target)
    finally:
        if partial.exists() and not partial.is_dir():
            partial.unlink()


class _AtomicSave:
    """Mixin over a ``kedro-datasets`` file dataset: :meth:`save` writes a temporary file, then renames.

    ``_exists`` also requires a non-empty file that :meth:`_complete` accepts, so an output truncated
    by anything (a disk filled up, a copy cut short) counts as missing for ``--only-missing-outputs``.
    """

    _partial: PurePosixPath | None = None

    def _get_save_path(self) -> PurePosixPath:
        return self._partial if self._partial is not None else super()._get_save_path()

    def save(self, data: Any) -> None:
        target = Path(str(super()._get_save_path()))
        with atomic_file(target) as partial:
            self._partial = PurePosixPath(partial.as_posix())
            try:
                super().save(data)
            finally:
                self._partial = None

    def _exists(self) -> bool:
        if not super()._exists():
            return False
        path = Path(str(self._get_load_path()))
        try:
            return path.stat().st_size > 0 and self._complete(path)
        except OSError:
            return False

    @staticmethod
    def _complete(path: Path) -> bool:
        """Whether the file at ``path`` was written to its end (format-specific; default: yes)."""
        return True


class ParquetDataset(_AtomicSave, _ParquetDataset):
    """``pandas.ParquetDataset`` with atomic saves; a file without Parquet's closing magic is missing."""

    @staticmethod
    def _complete(path: Path) -> bool:
        with path.open("rb") as handle:
            head = handle.read(4)
            handle.seek(-4, os.SEEK_END)
            return head == b"PAR1" and handle.read(4) == b"PAR1"


class CSVDataset(_AtomicSave, _CSVDataset):
    """``pandas.CSVDataset`` with atomic saves."""


class JSONDataset(_AtomicSave, _JSONDataset):
    """``json.JSONDataset`` with atomic saves."""


class TextDataset(_AtomicSave, _TextDataset):
    """``text.TextDataset`` with atomic saves."""


class PickleDataset(_AtomicSave, _PickleDataset):
    """``pickle.PickleDataset`` with atomic saves."""


class ImageDataset(_AtomicSave, _ImageDataset):
    """``pillow.ImageDataset`` with atomic saves; a PNG without its ``IEND`` chunk is missing."""

    @staticmethod
    def _complete(path: Path) -> bool:
        if path.suffix.lower() != ".png":
            return True
        with path.open("rb") as handle:
            handle.seek(-12, os.SEEK_END)
            return handle.read(12)[4:8] == b"IEND"
