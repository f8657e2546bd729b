"""One ``kedro run`` at a time per project folder.

Two runs in one project write the same outputs (``fold_assignments.parquet``, the model folders) and
race on the MLflow store (creating the experiment, the first database migration). The first run
takes an exclusive ``flock`` on ``.cellsynth-run.lock`` at the project root and writes who holds it;
a second run stops at once with :class:`ProjectLockedError` naming that process (pid, command, start
time). The operating system releases the lock when the process ends, however it ends (``kill -9``
included), so a stale lock file never blocks a run.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from kedro.framework.hooks import hook_impl

LOCK_NAME = ".cellsynth-run.lock"


class ProjectLockedError(RuntimeError):
    """Another ``kedro run`` holds this project's lock (the message names it)."""


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        holder = {}
    if not holder:
        return "another process"
    return f"process {holder.get('pid')} (`{holder.get('command')}`, started {holder.get('started')})"


def acquire(project_path: Path) -> IO[str]:
    """Take the project's run lock; the open lock file (keep it open to hold the lock).

    Raises :class:`ProjectLockedError` naming the holder when another process has it.
    """
    path = Path(project_path) / LOCK_NAME
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(handle)
        handle.close()
        raise ProjectLockedError(
            f"another cellsynth run is using this project ({Path(project_path).resolve()}): {holder}. "
            "Wait for it to end, or run in a copy of the project; two runs in one project would write "
            "the same outputs."
        ) from None
    handle.seek(0)
    handle.truncate()
    json.dump({"pid": os.getpid(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, handle)
    handle.flush()
    return handle


def release(handle: IO[str] | None) -> None:
    """Let the lock go (the file stays; an unlocked file means no run)."""
    if handle is None or handle.closed:
        return
    handle.seek(0)
    handle.truncate()
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


class ProjectLockHook:
    """Holds the project's run lock from the start of a ``kedro run`` to its end."""

    def __init__(self) -> None:
        self._project_path: Path | None = None
        self._handle: IO[str] | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project_path = Path(context.project_path)

    @hook_impl(tryfirst=True)  # before MLflow opens a run and before any node
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        release(self._handle)  # a run of this process that never reached its end hook (e.g. a failed hook)
        self._handle = acquire(self._project_path or Path(run_params["project_path"]))

    @hook_impl(trylast=True)  # after MLflow closed the run
    def after_pipeline_run(self) -> None:
        release(self._handle)
        self._handle = None

    @hook_impl(trylast=True)
    def on_pipeline_error(self) -> None:
        release(self._handle)
        self._handle = None
