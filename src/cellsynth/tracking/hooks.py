"""MLflow tracking of every ``kedro run``, entirely in hooks (nodes know nothing of MLflow).

* ``before_pipeline_run`` opens a parent run per ``kedro run`` in the experiment
  ``<experiment_prefix>-<dataset.name>``, with the parameters of the pipelines that run;
  ``after_pipeline_run`` / ``on_pipeline_error`` close it.
* ``after_node_run`` logs the outputs whose catalog entry says so (``metadata: {mlflow: ...}``, see
  :mod:`cellsynth.tracking.convert`) as parameters and metrics; ``after_dataset_saved`` logs the
  saved files of those marked ``artifact``. Outputs of a generator namespace (``maf.fold_0.*``) go
  to that namespace's child run, the others to the parent run.

Every run ends with a status: FINISHED; FAILED with the error message (tag ``cellsynth.end_reason``)
on the parent and on the generator run whose node raised; KILLED on Ctrl-C or SIGTERM (the parent
and the generator runs whose nodes were running, with the signal as the reason). A run left RUNNING
by a process killed outright (``kill -9``) is closed by the next run of the experiment
(:func:`~cellsynth.tracking.runs.close_orphaned_runs`).

Tracking never fails a run: a store that cannot be reached is a warning. Under the
:class:`~cellsynth.runners.DaskRunner` node hooks run on the worker, under the parent run the
driver attached there.
"""

from __future__ import annotations

import atexit
import logging
import re
import signal
import threading
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from cellsynth import provenance
from cellsynth.config import DatasetSettings, TrackingSettings
from cellsynth.tracking import convert, runs

log = logging.getLogger(__name__)

GENERATOR_NAMESPACE = re.compile(r"^(?P<generator>[^.]+)\.fold_(?P<fold>\d+)$")


def _namespace_of(dataset_name: str) -> str | None:
    """``maf.fold_0`` for ``maf.fold_0.synthetic``; ``None`` for fold-level or global datasets."""
    namespace = dataset_name.rsplit(".", 1)[0] if "." in dataset_name else ""
    return namespace if GENERATOR_NAMESPACE.match(namespace) else None


def _describe(error: BaseException) -> str:
    """``Type: message`` of ``error`` (what a FAILED run records as its reason)."""
    return f"{type(error).__name__}: {error}"


def _mlflow_spec(catalog, name: str) -> dict[str, Any]:
    dataset = catalog.get(name)
    metadata = getattr(dataset, "metadata", None) or {}
    return dict(metadata.get("mlflow") or {})


def _saved_path(catalog, name: str) -> Path | None:
    described = catalog.get(name)._describe()
    path = described.get("filepath") or described.get("path")
    return Path(str(path)) if path else None


class MlflowTrackingHook:
    """Parent run per ``kedro run``, child run per generator namespace, logging driven by the catalog."""

    def __init__(self) -> None:
        self._params: dict[str, Any] = {}
        self._project_path: Path | None = None
        self._pending_artifacts: dict[str, tuple[Path, str]] = {}
        self._lock = threading.Lock()
        self._running: set[str] = set()  # generator namespaces with a node running now
        self._signal: str | None = None
        self._previous_handlers: dict[int, Any] = {}
        atexit.register(self._close_interrupted_run)

    @hook_impl
    def after_context_created(self, context) -> None:
        self._params = dict(context.params)
        self._project_path = Path(context.project_path)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        settings = TrackingSettings.from_params(self._params.get("tracking"))
        if not settings.enabled:
            return
        used = sorted({name.split(":", 1)[1].split(".")[0] for name in pipeline.inputs() if name.startswith("params:")})
        params = {key: self._params[key] for key in used if key in self._params}
        params["folds_to_run"] = self._params.get("folds_to_run")
        dataset = DatasetSettings.from_params(self._params.get("dataset"))
        pipeline_names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        self._safely(
            runs.start_parent_run,
            tracking_uri=runs.resolve_tracking_uri(settings.tracking_uri, self._project_path),
            experiment=f"{settings.experiment_prefix}-{dataset.name}",
            run_name=f"kedro run {','.join(pipeline_names)}",
            params=params,
            tags={"kedro.session_id": str(run_params.get("run_id") or run_params.get("session_id")),
                  "kedro.env": str(run_params.get("env") or "local"),
                  "kedro.pipelines": ",".join(pipeline_names), "dataset": dataset.name,
                  **self._dataset_tags()},
        )
        if runs.parent_run_open():
            self._catch_signals()

    def _dataset_tags(self) -> dict[str, str]:
        """The data the run's cells came from: each input file's path and SHA-256 (the provenance hook
        has checked that the outputs this run reuses were made from these)."""
        try:
            record = provenance.expected_record(self._params, ("dataset",), project_path=self._project_path)
        except Exception as exc:  # noqa: BLE001 - a tag must never stop a run
            log.warning("MLflow: the dataset's provenance tags are left out (%s)", exc)
            return {}
        inputs = record["dataset"]["inputs"]
        return {"dataset.source": provenance.describe(record),
                **{f"dataset.sha256.{runs.metric_key(name)}": str(entry.get("sha256")) for name, entry in inputs.items()}}

    @hook_impl
    def before_node_run(self, node) -> None:
        if GENERATOR_NAMESPACE.match(node.namespace or ""):
            with self._lock:
                self._running.add(node.namespace)

    @hook_impl
    def after_node_run(self, node, catalog, outputs: dict[str, Any]) -> None:
        with self._lock:
            self._running.discard(node.namespace or "")
        if runs.active_run() is None:
            return
        for name, data in outputs.items():
            spec = _mlflow_spec(catalog, name)
            if not spec:
                continue
            self._safely(self._log_data, name, data, spec)
            if "artifact" in spec:
                path = _saved_path(catalog, name)
                if path is not None:
                    with self._lock:
                        self._pending_artifacts[name] = (path, str(spec["artifact"]))

    @hook_impl
    def after_dataset_saved(self, dataset_name: str) -> None:
        with self._lock:
            pending = self._pending_artifacts.pop(dataset_name, None)
        if pending is not None and runs.active_run() is not None:
            path, folder = pending
            self._safely(lambda: runs.log_artifact(self._run_for(dataset_name), path, folder))

    @hook_impl
    def on_node_error(self, error: Exception, node) -> None:
        namespace = node.namespace or ""
        with self._lock:
            self._running.discard(namespace)
        if runs.active_run() is not None and GENERATOR_NAMESPACE.match(namespace):
            reason = f"node {node.name} failed: {_describe(error)}"
            self._safely(lambda: runs.set_status(self._namespace_run(namespace), "FAILED", reason))

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._restore_signals()
        self._safely(runs.end_parent_run, "FINISHED")

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        self._restore_signals()
        self._safely(runs.end_parent_run, "FAILED", _describe(error))

    # ------------------------------------------------------------------ interruptions
    def _catch_signals(self) -> None:
        """Ctrl-C and SIGTERM: note the signal, then stop the run (KeyboardInterrupt, exit 143);
        :meth:`_close_interrupted_run` marks the runs at exit. Only the main thread may install handlers."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(number, frame):
            self._signal = signal.Signals(number).name
            if number == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + number)

        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[number] = signal.signal(number, on_signal)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers.clear()

    def _close_interrupted_run(self) -> None:
        """At exit, a parent run still open was interrupted (a signal, or an exception Kedro does not
        report): mark it and the generator runs that were running KILLED, with the reason."""
        if not runs.parent_run_open():
            return
        reason = (f"interrupted by {self._signal}" + (" (Ctrl-C)" if self._signal == "SIGINT" else "")
                  if self._signal else "the process exited before the run ended")
        with self._lock:
            running = sorted(self._running)
        for namespace in running:
            self._safely(lambda ns=namespace: runs.set_status(self._namespace_run(ns), "KILLED", reason))
        self._safely(runs.end_parent_run, "KILLED", reason)

    # ------------------------------------------------------------------ helpers
    def _run_for(self, dataset_name: str) -> str:
        namespace = _namespace_of(dataset_name)
        return runs.parent_run_id() if namespace is None else self._namespace_run(namespace)

    @staticmethod
    def _namespace_run(namespace: str) -> str:
        match = GENERATOR_NAMESPACE.match(namespace)
        tags = {"generator": match["generator"], "fold": match["fold"], runs.ROLE_TAG: "generator"}
        return runs.child_run_id(namespace, tags)

    def _log_data(self, name: str, data: Any, spec: dict[str, Any]) -> None:
        run_id = self._run_for(name)
        if "params" in spec:
            runs.log_params(run_id, convert.PARAMS[spec["params"]](data))
        if "metrics" in spec:
            runs.log_metrics(run_id, convert.METRICS[spec["metrics"]](data))

    @staticmethod
    def _safely(action, *args, **kwargs) -> None:
        try:
            action(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never fail the run
            log.warning("MLflow tracking skipped: %s", exc)
