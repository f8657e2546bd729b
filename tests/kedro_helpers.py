"""Run the real Kedro project in a temporary copy (its own data/ and MLflow store)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

PROJECT_ROOT = Path(__file__).resolve().parents[1]


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
