"""Project settings (https://docs.kedro.org/en/stable/kedro_project_setup/settings.html)."""

import os
import warnings

# Nothing in this project may wait on the network: telemetry off for Kedro, MLflow and friends.
for _flag, _value in {
    "KEDRO_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}.items():
    os.environ.setdefault(_flag, _value)

# Noise from library internals that users cannot act on: Kedro's own use of a deprecated OmegaConf
# call, and its advice against dots in dataset names (our namespaces, `fold_0.train`, are dotted
# by design: that is how Kedro names namespaced datasets).
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated")
warnings.filterwarnings("ignore", message=r"One or more dataset names contain '\.' characters")

from kedro.config import OmegaConfigLoader  # noqa: E402

from cellsynth.project_lock import ProjectLockHook  # noqa: E402
from cellsynth.provenance_hook import ProvenanceHook  # noqa: E402
from cellsynth.run_matrix import RunMatrixHook  # noqa: E402
from cellsynth.summary import RunSummaryHook  # noqa: E402
from cellsynth.tracking.hooks import MlflowTrackingHook  # noqa: E402
from cellsynth.validation_hook import ParameterValidationHook  # noqa: E402

# Among the tryfirst before_pipeline_run hooks the last registered runs first: the lock, the parameters, then
# the provenance of the outputs the run reuses, all before MLflow opens a run.
HOOKS = (RunMatrixHook(), ProvenanceHook(), ParameterValidationHook(), ProjectLockHook(), MlflowTrackingHook(),
         RunSummaryHook())

# kedro-telemetry (pulled in by kedro-viz) must stay silent.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-telemetry",)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Kedro merges `--params` into every environment's parameters and then, by default, lets an
    # environment's block replace the base one whole: `--env paper --params splitting.seed=1` would
    # drop `splitting.n_folds`. A soft merge keeps the sibling keys of every block.
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
    },
}
