"""A wrong input or parameter is printed as its message, not after a page of traceback.

cellsynth's own errors (:class:`~cellsynth.config.ConfigError`,
:class:`~cellsynth.data.validation.InputDataError`, :class:`~cellsynth.generators.base.GeneratorError`,
:class:`~cellsynth.project_lock.ProjectLockedError`) already say what is wrong and how to fix it; the
100–250 lines of traceback Python prints above them hide that. :func:`install` replaces ``sys.excepthook`` so that such an error prints as ``Error: <message>``
and its traceback goes to ``logs/last_error.log`` (printed in full with ``CELLSYNTH_VERBOSE=1``).
Every other exception keeps the usual traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from types import TracebackType

from cellsynth.config import ConfigError
from cellsynth.data.validation import InputDataError
from cellsynth.generators.base import GeneratorError
from cellsynth.project_lock import ProjectLockedError

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, InputDataError, GeneratorError, ProjectLockedError)
VERBOSE_VARIABLE = "CELLSYNTH_VERBOSE"


def user_error(exc: BaseException | None) -> BaseException | None:
    """The cellsynth input or parameter error ``exc`` is or wraps (``raise ... from``), else ``None``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, USER_ERRORS):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install(log_dir: Path) -> None:
    """Print cellsynth's input and parameter errors as their message; their traceback to ``log_dir``."""
    previous = getattr(sys.excepthook, "cellsynth_previous", sys.excepthook)

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        error = user_error(exc)
        if error is None or os.environ.get(VERBOSE_VARIABLE, "").lower() in ("1", "true", "yes"):
            previous(kind, exc, tb)
            return
        log = log_dir / "last_error.log"
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            log.write_text("".join(traceback.format_exception(kind, exc, tb)))
            where = f"(traceback in {log}; {VERBOSE_VARIABLE}=1 prints it)"
        except OSError:
            where = f"({VERBOSE_VARIABLE}=1 prints the traceback)"
        print(f"\nError: {error}\n{where}", file=sys.stderr)

    excepthook.cellsynth_previous = previous  # type: ignore[attr-defined]
    sys.excepthook = excepthook
