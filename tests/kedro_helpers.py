"""Run the real Kedro project in a temporary copy (its own data/ and MLflow store)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def base_catalog(*files: str) -> dict[str, Any]:
    """``conf/base/catalog*.yml`` (or the named files) as one mapping, as Kedro's loader reads it: the
    per-dataset folder ``${_dataset}`` filled in (with ``dataset``) and the template keys (``_...``) left out."""
    import yaml

    config: dict[str, Any] = {}
    paths = [PROJECT_ROOT / "conf" / "base" / f for f in files] or sorted((PROJECT_ROOT / "conf" / "base").glob("catalog*.yml"))
    for path in paths:
        config.update(yaml.safe_load(path.read_text().replace("${_dataset}", "dataset")))
    return {name: entry for name, entry in config.items() if not name.startswith("_")}


def make_project_copy(tmp_path: Path) -> Path:
    """``conf/`` and ``pyproject.toml`` of the project in ``tmp_path``, with an empty ``data/``."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()  # the package itself is installed (pip install -e .)
    (root / "data" / "01_raw").mkdir(parents=True)
    return root


def run_session(root: Path, pipeline: str, runtime_params: dict[str, Any], env: str | None = None, **kwargs: Any):
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env=env, runtime_params=runtime_params) as session:
        return session.run(pipeline_names=[pipeline], **kwargs)


def kedro_command(root: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """``kedro <args>`` as a subprocess in the project copy ``root`` (this worktree's sources, its own
    MLflow store): the command and its environment."""
    import os
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env["KEDRO_DISABLE_TELEMETRY"] = "1"
    return [sys.executable, "-m", "kedro", *args], env


def run_kedro(root: Path, *args: str, timeout: float = 300):
    """Run ``kedro <args>`` in ``root`` to its end; the completed process (stdout and stderr as text)."""
    import subprocess

    command, env = kedro_command(root, *args)
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
