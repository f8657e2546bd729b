"""The closing lines of a ``kedro run``: where the outputs are, how to look at them, what to run next.

:class:`RunSummaryHook` logs them once the pipeline has finished (``after_pipeline_run``), so a user
who only reads the end of the terminal knows where the report is, which command opens MLflow, and
which pipeline comes next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from cellsynth.config import TrackingSettings

log = logging.getLogger(__name__)

#: Where ``make mlflow`` serves the UI.
MLFLOW_UI = "http://127.0.0.1:5000"

#: What each pipeline leaves for the next step, in the order a user runs them.
NEXT_PIPELINE = {
    "preprocessing": ("splitting", "folds and HVGs"),
    "splitting": ("generation", "train the generators"),
    "generation": ("evaluation", "metrics, tables, figures and the report"),
    "evaluation": ("downstream", "marker genes and cell-cell interactions in the report"),
}


def next_step(pipeline_names: Iterable[str], env: str | None, params_option: str = "") -> str | None:
    """The command of the pipeline after the last one that ran (``None`` after ``downstream`` or all).

    ``params_option`` is this run's ``--params`` argument: the next run must describe the same data
    (its provenance check refuses outputs made with other parameters)."""
    names = [name for name in pipeline_names if name in NEXT_PIPELINE or name in ("downstream", "__default__")]
    if not names or any(name in ("downstream", "__default__") for name in names):
        return None
    order = list(NEXT_PIPELINE)
    following, what = NEXT_PIPELINE[max(names, key=order.index)]
    env_option = f" --env {env}" if env and env != "local" else ""
    params = f' --params "{params_option}"' if params_option else ""
    return f"kedro run --pipelines {following}{env_option}{params}   ({what})"


def params_option(runtime_params: Mapping[str, Any] | None) -> str:
    """``--params`` text that gives a later run the same runtime parameters (``a.b=1,c=x+y``)."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = "+".join(map(str, value)) if isinstance(value, list | tuple) else value

    walk(runtime_params or {}, "")
    return ",".join(f"{key}={'null' if value is None else value}" for key, value in flat.items())


def runs_table_url(experiment_id: str, ui: str = MLFLOW_UI) -> str:
    """The MLflow UI page of an experiment's runs table.

    MLflow 3.17 opens every experiment on its GenAI view (traces) unless the browser last chose
    "Model training" or the address says ``workflowType=machine_learning``; the experiment's
    ``mlflow.experimentKind`` tag is not what it reads for that.
    """
    return f"{ui}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def closing_summary(
    *,
    pipeline_names: Iterable[str],
    env: str | None,
    report: Path | None,
    report_written: bool,
    experiment: str | None,
    tracking_uri: str | None,
    experiment_id: str | None = None,
    dataset: str = "<dataset>",
    runtime_params: Mapping[str, Any] | None = None,
) -> str:
    """The lines :class:`RunSummaryHook` logs (plain text, one item per line); with ``experiment_id``
    the MLflow line links the experiment's runs table (:func:`runs_table_url`)."""
    pipeline_names = list(pipeline_names)
    lines = [f"kedro run --pipelines {','.join(pipeline_names)} finished."]
    if report is not None and report_written:
        lines.append(f"  report:  {report} (open it in a browser)")
    elif report is not None and report.exists():
        lines.append(f"  report:  {report} (not rebuilt by this run: evaluation and downstream rebuild it)")
    if "generation" in pipeline_names or "__default__" in pipeline_names:
        lines.append(f"  models:  data/06_models/{dataset}/<generator>/fold_<k>/ (sample from one: python -m cellsynth sample --help)")
    if experiment is not None:
        where = "" if tracking_uri in (None, "sqlite:///mlflow.db") else f" (store {tracking_uri})"
        if experiment_id is not None:
            lines.append(f"  MLflow:  make mlflow, then {runs_table_url(experiment_id)}   ({experiment}{where})")
        else:
            lines.append(f"  MLflow:  make mlflow, then {MLFLOW_UI} > Model training > {experiment}{where}")
    command = next_step(pipeline_names, env, params_option(runtime_params))
    if command is not None:
        lines.append(f"  next:    {command}")
    return "\n".join(lines)


class RunSummaryHook:
    """Logs :func:`closing_summary` after every successful ``kedro run``."""

    def __init__(self) -> None:
        self._params: dict[str, Any] = {}
        self._project_path: Path | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._params = dict(context.params)
        self._project_path = Path(context.project_path)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        pipeline_names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        report = None
        if "report" in catalog:
            described = catalog.get("report")._describe()
            report = Path(str(described.get("filepath"))) if described.get("filepath") else None
        tracking = TrackingSettings.from_params(self._params.get("tracking"))
        dataset_name = (self._params.get("dataset") or {}).get("name")
        experiment = f"{tracking.experiment_prefix}-{dataset_name}" if tracking.enabled else None
        log.info(
            "%s",
            closing_summary(
                pipeline_names=pipeline_names,
                env=run_params.get("env"),
                report=report,
                report_written="report" in pipeline.all_outputs(),
                experiment=experiment,
                tracking_uri=tracking.tracking_uri,
                experiment_id=self._experiment_id(experiment, tracking.tracking_uri),
                dataset=str(dataset_name),
                runtime_params=run_params.get("runtime_params"),
            ),
        )

    def _experiment_id(self, experiment: str | None, configured_uri: str) -> str | None:
        """The id of ``experiment`` in the run's SQLite store; ``None`` without tracking, for another kind
        of store (a server may be slow to answer, and its UI lives elsewhere) or if it cannot be read."""
        from cellsynth.tracking import runs

        if experiment is None:
            return None
        uri = runs.resolve_tracking_uri(configured_uri, self._project_path)
        store = runs.sqlite_store_path(uri)
        if store is None or not store.is_file():
            return None
        try:
            found = runs.find_experiment(uri, experiment)
        except Exception as error:  # the summary never fails a finished run
            log.debug("MLflow experiment %r not read for the summary: %s", experiment, error)
            return None
        return found.experiment_id if found is not None else None
