"""MLflow helpers: the parent run of a ``kedro run`` and child runs per generator × fold.

Child runs are created with :class:`mlflow.MlflowClient` from the parent's id and the tracking
URI, both published through environment variables of the driver process, so a node can log its
child run from any process as long as it reaches the same tracking store or server. Another process
(a Dask worker) gets them from :func:`run_context` in the driver and :func:`attached_run` around the
node: that overrides the environment for the current thread only, so a worker running tasks of two
runs at once files each child under its own parent. When tracking is disabled, :func:`child_run`
yields a recorder that does nothing, and nodes run unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "CELLSYNTH_MLFLOW_PARENT_RUN_ID"
TRACKING_URI_ENV = "CELLSYNTH_MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "CELLSYNTH_MLFLOW_EXPERIMENT_ID"
MAX_PARAM_LENGTH = 6000
_UNSAFE_NAME = re.compile(r"[^\w\-. /]")
_CONTEXT_NAMES = (PARENT_RUN_ENV, TRACKING_URI_ENV, EXPERIMENT_ENV)
_attached: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("cellsynth_mlflow_run", default=None)


def _setting(name: str) -> str | None:
    """``name`` from the run attached to this thread (:func:`attached_run`), else the environment."""
    attached = _attached.get()
    if attached is not None:
        return attached.get(name)
    return os.environ.get(name)


def run_context() -> dict[str, str]:
    """The MLflow parent run of the current ``kedro run`` as plain strings, to hand to another process.

    Empty when no parent run is open (tracking disabled): attached elsewhere, it then disables
    child runs there too, whatever that process's environment says.
    """
    return {name: value for name in _CONTEXT_NAMES if (value := _setting(name))}


@contextlib.contextmanager
def attached_run(context: Mapping[str, str]) -> Iterator[None]:
    """Log child runs of this thread under the parent run described by ``context``.

    Parameters
    ----------
    context
        What :func:`run_context` returned in the driver process.
    """
    token = _attached.set({name: str(context[name]) for name in _CONTEXT_NAMES if context.get(name)})
    try:
        yield
    finally:
        _attached.reset(token)


def resolve_tracking_uri(configured: str | None, project_path: Path | None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the configured URI with a relative SQLite path made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and project_path is not None:
        uri = prefix + str((project_path / uri[len(prefix) :]).resolve())
    return uri


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}} -> {"a.b": "1"}`` with values cut to MLflow's parameter length.

    Characters MLflow refuses in names (e.g. the ``+`` of ``CD14+ Mono``) become ``_``.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{_UNSAFE_NAME.sub('_', str(key))}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start_parent_run(
    *, tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> str:
    """Create the run of one ``kedro run`` and publish its id for child runs; returns the id."""
    from mlflow.entities import Param, RunTag

    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    flat = flatten(params)
    items = [Param(k, v) for k, v in flat.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start : start + 100])
    client.log_batch(run.info.run_id, tags=[RunTag("cellsynth.role", "parent")])
    os.environ[PARENT_RUN_ENV] = run.info.run_id
    os.environ[TRACKING_URI_ENV] = tracking_uri
    os.environ[EXPERIMENT_ENV] = experiment_id
    log.info("MLflow run %s in experiment %r (%s)", run.info.run_id, experiment, tracking_uri)
    return run.info.run_id


def end_parent_run(status: str = "FINISHED") -> None:
    """Close the parent run (if one is open) and forget it."""
    run_id = os.environ.pop(PARENT_RUN_ENV, None)
    uri = os.environ.pop(TRACKING_URI_ENV, None)
    os.environ.pop(EXPERIMENT_ENV, None)
    if run_id and uri:
        _client(uri).set_terminated(run_id, status=status)


def parent_run_id() -> str | None:
    return _setting(PARENT_RUN_ENV)


class RunRecorder:
    """Logs into one MLflow run; every method is a no-op when ``run_id`` is ``None``."""

    def __init__(self, client=None, run_id: str | None = None):
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.run_id:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id:
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id:
            self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.run_id:
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, str(value))


@contextlib.contextmanager
def child_run(name: str, tags: Mapping[str, str] | None = None) -> Iterator[RunRecorder]:
    """A child of the current ``kedro run``'s MLflow run (or a no-op recorder without one).

    The run ends ``FINISHED``, or ``FAILED`` if the body raises.
    """
    parent = _setting(PARENT_RUN_ENV)
    uri = _setting(TRACKING_URI_ENV)
    experiment_id = _setting(EXPERIMENT_ENV)
    if not (parent and uri and experiment_id):
        yield RunRecorder()
        return
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client = _client(uri)
    run = client.create_run(
        experiment_id, run_name=name, tags={MLFLOW_PARENT_RUN_ID: parent, **{k: str(v) for k, v in (tags or {}).items()}}
    )
    recorder = RunRecorder(client, run.info.run_id)
    try:
        yield recorder
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def parent_recorder() -> RunRecorder:
    """A recorder into the parent run itself (for tables, figures, the report)."""
    parent = _setting(PARENT_RUN_ENV)
    uri = _setting(TRACKING_URI_ENV)
    if not (parent and uri):
        return RunRecorder()
    return RunRecorder(_client(uri), parent)
