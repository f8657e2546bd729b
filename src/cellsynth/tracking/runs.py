"""MLflow runs of a ``kedro run``: the parent run, one child run per namespace, and what is logged.

The parent run of the current ``kedro run`` lives in this process (set by the tracking hook) and can
be handed to another process as a plain dict (:func:`run_context`, e.g. to a Dask worker) and
attached there for one thread (:func:`attached_run`). A child run is keyed on a node namespace
(``maf.fold_0``): it is created the first time something of that namespace is logged, and a later
``kedro run`` (evaluation after generation) logs into the newest run of the same namespace.
Every call here goes through :class:`mlflow.MlflowClient`; nothing touches MLflow's global state.

Artifact locations are relative: an experiment that cellsynth creates in a SQLite store records
``mlflow-artifacts:/<experiment>`` (not MLflow's default, an absolute ``file://`` path), and its
artifacts are written to ``mlartifacts/`` beside the store, which is where ``mlflow ui`` started
next to the store (its default ``--artifacts-destination ./mlartifacts``) serves them from. A project
moved with its ``mlflow.db`` and ``mlartifacts/`` reads its artifacts in the new place.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000
ROLE_TAG = "cellsynth.role"
#: The experiment type of MLflow 3 ("Machine learning", not "GenAI apps & agents"), set when cellsynth
#: creates or reuses an experiment that has none. MLflow 3.17's UI picks the view from its global
#: GenAI / Model training switch or the address instead (``summary.runs_table_url``).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
NAMESPACE_TAG = "cellsynth.namespace"
PID_TAG = "cellsynth.pid"
"""The process (and ``HOST_TAG`` its machine) that opened a run: a later run closes it if that process is gone."""
HOST_TAG = "cellsynth.host"
END_REASON_TAG = "cellsynth.end_reason"
"""Why a run ended other than FINISHED: the error message, the signal, or the process found gone."""
#: The folder beside a SQLite store that holds its ``mlflow-artifacts:`` artifacts (``mlflow ui``'s default).
ARTIFACTS_FOLDER = "mlartifacts"
PROXIED_SCHEME = "mlflow-artifacts"
_UNSAFE_KEY = re.compile(r"[^\w\-. /:]")
_UNSAFE_NAME = re.compile(r"[^\w\-. /]")


@dataclasses.dataclass(frozen=True)
class ActiveRun:
    """The parent run of a ``kedro run``: where child runs and reports are filed."""

    tracking_uri: str
    experiment_id: str
    run_id: str


_process_run: ActiveRun | None = None
_NOT_ATTACHED: Any = object()
_attached: contextvars.ContextVar[ActiveRun | None] = contextvars.ContextVar("cellsynth_mlflow_run",
                                                                            default=_NOT_ATTACHED)
_children: dict[tuple[str, str], str] = {}
_children_lock = threading.Lock()


def active_run() -> ActiveRun | None:
    """The run attached to this thread (:func:`attached_run`, ``None`` included), else this process's parent run."""
    attached = _attached.get()
    return _process_run if attached is _NOT_ATTACHED else attached


def run_context() -> dict[str, str]:
    """The active parent run as plain strings, to hand to another process (empty when none)."""
    run = active_run()
    return dataclasses.asdict(run) if run else {}


@contextlib.contextmanager
def attached_run(context: Mapping[str, str]) -> Iterator[None]:
    """File what this thread logs under the parent run ``context`` (from :func:`run_context`).

    An empty ``context`` (tracking off in the driver) turns tracking off here too.
    """
    run = ActiveRun(**context) if context else None
    token = _attached.set(run)
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


def _normal_path(name: str) -> str:
    """``name`` as MLflow accepts a key: a normalised relative path (no empty, ``.`` or ``..`` part,
    so a label such as ``a..b/`` or ``T//NK`` cannot make MLflow refuse the whole batch)."""
    return "/".join("_" * max(len(part), 1) if not part.strip(".") else part for part in name.split("/"))


def metric_key(*parts: Any) -> str:
    """``a/b/c`` from ``parts``, with the characters MLflow refuses in a key as ``_``."""
    return _normal_path(_UNSAFE_KEY.sub("_", "/".join(str(p) for p in parts)))


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
            flat[_normal_path(name)] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def sqlite_store_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (``None`` for any other store)."""
    prefix = "sqlite:///"
    return Path(urllib.parse.unquote(tracking_uri[len(prefix):])) if tracking_uri.startswith(prefix) else None


def artifacts_root(tracking_uri: str) -> Path | None:
    """Where the ``mlflow-artifacts:`` artifacts of a SQLite store lie: ``mlartifacts/`` beside it."""
    store = sqlite_store_path(tracking_uri)
    return store.parent / ARTIFACTS_FOLDER if store is not None else None


def experiment_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """The artifact location to create ``experiment`` with: ``mlflow-artifacts:/<experiment>``, relative
    to the artifacts root, for a SQLite store; ``None`` (the server decides) for any other store."""
    if sqlite_store_path(tracking_uri) is None:
        return None
    return f"{PROXIED_SCHEME}:/{urllib.parse.quote(experiment, safe='')}"


def find_experiment(tracking_uri: str, experiment: str):
    """The MLflow experiment named ``experiment`` in ``tracking_uri`` (``None`` if there is none)."""
    return _client(tracking_uri).get_experiment_by_name(experiment)


def experiment_id_of(client, experiment: str) -> str:
    """The id of ``experiment``, created if needed (tagged as a model-training experiment, with a
    relative artifact location: :func:`experiment_artifact_location`); another process creating it
    at the same moment (a ``UNIQUE constraint failed`` here) is read back rather than failing."""
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(
            experiment, artifact_location=experiment_artifact_location(client.tracking_uri, experiment),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


def close_orphaned_runs(client, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of ``experiment_id`` opened on this machine by a process that is gone
    (killed with ``kill -9``, or its machine lost power); their reason says so. Returns their ids."""
    import socket

    from cellsynth.datasets.atomic import process_alive

    closed = []
    host = socket.gethostname()
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        client.set_tag(run.info.run_id, END_REASON_TAG,
                       f"process {pid} on {host} ended without closing the run (killed); closed by process {os.getpid()}")
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    if closed:
        log.warning("Closed %d MLflow run(s) left RUNNING by a process that is gone: %s", len(closed), closed)
    return closed


def start_parent_run(
    *, tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> ActiveRun:
    """Create the run of one ``kedro run`` in ``experiment`` and make it this process's parent run.

    Runs of the experiment left RUNNING by a process that is gone are closed first
    (:func:`close_orphaned_runs`); this run records its process (``cellsynth.pid``, ``cellsynth.host``).
    """
    import socket

    global _process_run
    client = _client(tracking_uri)
    experiment_id = experiment_id_of(client, experiment)
    found = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in found.tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    close_orphaned_runs(client, experiment_id)
    run = client.create_run(experiment_id, run_name=run_name, tags={
        **tags, ROLE_TAG: "parent", PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()})
    _process_run = ActiveRun(tracking_uri, experiment_id, run.info.run_id)
    log_params(_process_run.run_id, params)
    log.info("MLflow run %s in experiment %r (%s)", run.info.run_id, experiment, tracking_uri)
    return _process_run


def end_parent_run(status: str = "FINISHED", reason: str | None = None) -> None:
    """Close this process's parent run (if one is open) and forget it and its children; ``reason``
    (an error message, a signal) is recorded as the ``cellsynth.end_reason`` tag."""
    global _process_run
    run, _process_run = _process_run, None
    with _children_lock:
        _children.clear()
    if run is not None:
        client = _client(run.tracking_uri)
        if reason:
            client.set_tag(run.run_id, END_REASON_TAG, reason[:MAX_TAG_LENGTH])
        client.set_terminated(run.run_id, status=status)


def parent_run_open() -> bool:
    """Whether this process has a parent run that has not been closed."""
    return _process_run is not None


def child_run_id(namespace: str, tags: Mapping[str, str]) -> str | None:
    """The run of ``namespace`` (e.g. ``maf.fold_0``) under the active parent run; ``None`` without one.

    Reuses the newest run of that namespace in the experiment (so the evaluation of a later
    ``kedro run`` is logged next to the generator's training), else creates a child of the parent.
    """
    parent = active_run()
    if parent is None:
        return None
    key = (parent.run_id, namespace)
    with _children_lock:
        if key in _children:
            return _children[key]
        client = _client(parent.tracking_uri)
        found = client.search_runs(
            [parent.experiment_id], filter_string=f"tags.`{NAMESPACE_TAG}` = '{namespace}'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
        else:
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

            run = client.create_run(
                parent.experiment_id, run_name=namespace.replace(".", " "),
                tags={MLFLOW_PARENT_RUN_ID: parent.run_id, NAMESPACE_TAG: namespace, **tags},
            )
            run_id = run.info.run_id
            client.set_terminated(run_id, status="FINISHED")  # logging into a finished run is allowed
        _children[key] = run_id
        return run_id


def set_status(run_id: str, status: str, reason: str | None = None) -> None:
    """End ``run_id`` with ``status``; ``reason`` (the error message) as its ``cellsynth.end_reason`` tag."""
    client = _client(active_run().tracking_uri)
    if reason:
        client.set_tag(run_id, END_REASON_TAG, reason[:MAX_TAG_LENGTH])
    client.set_terminated(run_id, status=status)


def parent_run_id() -> str | None:
    run = active_run()
    return run.run_id if run else None


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    client = _client(active_run().tracking_uri)
    for batch in _batches([Param(k, v) for k, v in flatten(params).items()], 100):
        client.log_batch(run_id, params=batch)


def log_metrics(run_id: str, rows: Iterable[tuple[str, float, int]]) -> None:
    """Metric rows ``(key, value, step)`` of ``run_id``; keys cleaned with :func:`metric_key`, non-finite values left out."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(metric_key(key), float(value), now, int(step)) for key, value, step in rows
             if value is not None and math.isfinite(float(value))]
    client = _client(active_run().tracking_uri)
    for batch in _batches(items, 500):
        client.log_batch(run_id, metrics=batch)


def proxied_artifacts_folder(client, run_id: str) -> Path | None:
    """Where the artifacts of ``run_id`` lie when MLflow's client cannot write them itself: a run whose
    artifact URI is ``mlflow-artifacts:/<path>`` in a SQLite store (no server to proxy it) keeps them
    in ``<artifacts root>/<path>`` (:func:`artifacts_root`), the folder ``mlflow ui`` serves them from.
    ``None`` for any other run (MLflow's client stores its artifacts)."""
    root = artifacts_root(client.tracking_uri)
    if root is None:
        return None
    uri = client.get_run(run_id).info.artifact_uri
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != PROXIED_SCHEME:
        return None
    relative = Path(urllib.parse.unquote(parsed.path.lstrip("/")))
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"artifact URI {uri!r} of run {run_id} leaves the artifacts folder {root}")
    return root / relative


def log_artifact(run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
    """A file or a whole folder as an artifact of ``run_id`` (in :func:`proxied_artifacts_folder` if it has one)."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    client = _client(active_run().tracking_uri)
    folder = proxied_artifacts_folder(client, run_id)
    if folder is not None:
        repository = LocalArtifactRepository(str(folder))
        log_folder, log_file = repository.log_artifacts, repository.log_artifact
    else:
        log_folder = functools.partial(client.log_artifacts, run_id)
        log_file = functools.partial(client.log_artifact, run_id)
    local_path = Path(local_path)
    if local_path.is_dir():
        log_folder(str(local_path), artifact_path)
    elif local_path.is_file():
        log_file(str(local_path), artifact_path)
