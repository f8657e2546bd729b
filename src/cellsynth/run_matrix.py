"""Which folds and generators the fold-wise pipelines are built for.

Kedro builds pipelines before nodes run, but the folds (``folds_to_run``) and generators
(``generation.generators``) are parameters, so that an environment (``--env paper``) or
``--params`` can change them. :class:`RunMatrixHook` records the run's parameters
when the Kedro context is created, which happens before ``kedro run`` first reads the pipeline
registry; outside a session (e.g. ``kedro viz``) the ``base``/``KEDRO_ENV`` configuration is read.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from cellsynth.config import ConfigError, GenerationSettings, SplittingSettings, split_list

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

_active_params: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunMatrix:
    folds: tuple[int, ...]
    generators: tuple[str, ...]

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RunMatrix:
        n_folds = SplittingSettings.from_params(params.get("splitting")).n_folds
        folds_to_run = split_list(params.get("folds_to_run", [0]))
        if isinstance(folds_to_run, int):
            folds_to_run = [folds_to_run]
        try:
            folds = tuple(int(k) for k in folds_to_run)
        except (TypeError, ValueError):
            raise ConfigError(f"folds_to_run={folds_to_run!r} must be a list of fold numbers, e.g. 0+1+2") from None
        bad = [k for k in folds if not 0 <= k < n_folds]
        if bad or not folds:
            raise ConfigError(f"folds_to_run={list(folds)} must be a non-empty list of folds in 0..{n_folds - 1}")
        return cls(folds=folds, generators=GenerationSettings.from_params(params.get("generation")).generators)


def set_active_params(params: dict[str, Any] | None) -> None:
    """Record the parameters of the run being set up (called by the project's hook)."""
    global _active_params
    _active_params = params


_GLOBALS_REFERENCE = re.compile(r"globals:([\w.]+)")


def _from_globals(value: Any, globals_: dict[str, Any]) -> Any:
    """``value`` with ``${globals:a.b}`` (or ``${runtime_params:..,${globals:a.b}}``) replaced by the global."""
    if isinstance(value, dict):
        return {k: _from_globals(v, globals_) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("${") and (found := _GLOBALS_REFERENCE.search(value)):
        for part in found.group(1).split("."):
            globals_ = (globals_ or {}).get(part)
        return globals_
    return value


def _read_parameters(env: str) -> dict[str, Any]:
    """The plain-YAML parameters of ``conf/base`` overlaid with ``conf/<env>`` (key by key), with
    references to ``globals.yml`` resolved.

    Deliberately not an ``OmegaConfigLoader``: creating one re-registers OmegaConf's global
    ``globals`` resolver and would redirect the active session's configuration.
    """
    import yaml

    merged: dict[str, Any] = {}
    globals_: dict[str, Any] = {}
    for folder in ("base", env):
        for path in sorted((PROJECT_ROOT / "conf" / folder).glob("parameters*.yml")):
            _soft_merge(merged, yaml.safe_load(path.read_text()) or {})
        path = PROJECT_ROOT / "conf" / folder / "globals.yml"
        if path.is_file():
            _soft_merge(globals_, yaml.safe_load(path.read_text()) or {})
    return _from_globals(merged, globals_)


def _soft_merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge ``update`` into ``into`` key by key at every level, as the project's config loader does."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _soft_merge(into[key], value)
        else:
            into[key] = value


def active_parameters() -> dict[str, Any]:
    """The parameters of the run being set up, or (outside a session) of the on-disk configuration."""
    if _active_params is not None:
        return _active_params
    return _read_parameters(os.environ.get("KEDRO_ENV", "local"))


def current() -> RunMatrix:
    """The run matrix of the active session, or of the on-disk configuration."""
    return RunMatrix.from_params(active_parameters())


class RunMatrixHook:
    """Records the run's parameters so the pipeline registry builds the requested folds/generators."""

    @hook_impl
    def after_context_created(self, context) -> None:
        set_active_params(context.params)
        try:  # a second session in the same process (tests, notebooks) must rebuild the pipelines
            from kedro.framework.project import pipelines

            requested = getattr(pipelines, "_requested_pipelines", None)
            pipelines.set_requested(["__cellsynth_invalidate__"])
            pipelines.set_requested(requested)
        except Exception:  # pragma: no cover - private API changed: pipelines just are not rebuilt
            log.debug("could not invalidate the pipeline cache", exc_info=True)
