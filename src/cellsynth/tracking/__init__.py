"""MLflow tracking of cellsynth's Kedro runs: hooks and catalog metadata, never code inside a node.

:class:`~cellsynth.tracking.hooks.MlflowTrackingHook` opens a parent run per ``kedro run`` and logs
what the catalog marks with ``metadata: {mlflow: ...}``; :mod:`cellsynth.tracking.runs` holds the
MLflow client calls and the run context a Dask worker attaches to.
"""

from cellsynth.tracking.runs import attached_run, run_context

__all__ = ["attached_run", "run_context"]
