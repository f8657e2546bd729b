"""Project hooks: the run matrix, and MLflow tracking of every ``kedro run``.

MLflow layout: one experiment per dataset (``cellsynth-<dataset.name>``), one parent run per
``kedro run`` holding the parameters of the pipelines that ran, and (from the generation pipeline)
one child run per generator × fold. kedro-mlflow does the parent run well but has no child run per
namespace, so this small hook does both with the MLflow client API.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from cellsynth import run_matrix, tracking

log = logging.getLogger(__name__)


class RunMatrixHook:
    """Records the run's parameters so the pipeline registry builds the requested folds/generators."""

    @hook_impl
    def after_context_created(self, context) -> None:
        run_matrix.set_active_params(context.params)
        try:  # a second session in the same process (tests, notebooks) must rebuild the pipelines
            from kedro.framework.project import pipelines

            requested = getattr(pipelines, "_requested_pipelines", None)
            pipelines.set_requested(["__cellsynth_invalidate__"])
            pipelines.set_requested(requested)
        except Exception:  # pragma: no cover - private API changed: pipelines just are not rebuilt
            log.debug("could not invalidate the pipeline cache", exc_info=True)


class MlflowTrackingHook:
    """Opens a parent MLflow run per ``kedro run`` and closes it with the run's status."""

    def __init__(self) -> None:
        self._params: dict[str, Any] = {}
        self._project_path: Path | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._params = context.params
        self._project_path = Path(context.project_path)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        settings = self._params.get("tracking", {})
        if not settings.get("enabled", True):
            return
        used = sorted(
            {name.split(":", 1)[1].split(".")[0] for name in pipeline.inputs() if name.startswith("params:")}
        )
        params = {key: self._params[key] for key in used if key in self._params}
        params["folds_to_run"] = self._params.get("folds_to_run")
        dataset = self._params.get("dataset", {})
        pipeline_names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        tracking.start_parent_run(
            tracking_uri=tracking.resolve_tracking_uri(settings.get("tracking_uri"), self._project_path),
            experiment=f"{settings.get('experiment_prefix', 'cellsynth')}-{dataset.get('name', 'data')}",
            run_name=f"kedro run {','.join(pipeline_names)}",
            params=params,
            tags={
                "kedro.session_id": str(run_params.get("session_id")),
                "kedro.env": str(run_params.get("env")),
                "kedro.pipelines": ",".join(pipeline_names),
                "dataset": str(dataset.get("name")),
            },
        )

    @hook_impl
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        tracking.end_parent_run("FINISHED")

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        tracking.end_parent_run("FAILED")

