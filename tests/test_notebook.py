"""``notebooks/quickstart.ipynb`` runs from top to bottom (so it cannot rot), with the project's code."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_runs(monkeypatch):
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    # the kernel imports this checkout's cellsynth whatever is installed in the environment
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    client.execute()
    if os.environ.get("CELLSYNTH_NOTEBOOK_OUT"):  # keep the executed notebook to look at
        nbformat.write(notebook, os.environ["CELLSYNTH_NOTEBOOK_OUT"])
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    text = "".join(out.get("text", "") for out in outputs)
    assert "notebook ran in" in text
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the UMAP figure
