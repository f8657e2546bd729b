"""``python -m cellsynth sample``: cells from a saved generator, and one-line errors for mistakes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from cellsynth.generators import GENERATORS, Generator
from cellsynth.sample_cli import CliError, parse_cell_types, sample_command

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_adata_factory) -> Path:
    """A small MAF fitted on 3 types and saved the way the generation pipeline saves it."""
    adata = tiny_adata_factory(n_cells=120, n_genes=10, n_types=3, seed=4)
    model = GENERATORS["maf"](label_key="cell_type", n_layers=1, hidden_features=16, batch_size=32, epochs=2)
    model.fit(adata, seed=0, progress=False)
    folder = tmp_path_factory.mktemp("models") / "maf" / "fold_0"
    model.save(folder)
    return folder


def test_parse_cell_types_keeps_names_with_spaces_and_plus():
    assert parse_cell_types("CD14+ Mono=3, B=2,") == {"CD14+ Mono": 3, "B": 2}
    for bad in ("B", "=3", "B=x", "B=-1", "B=1,B=2", ","):
        with pytest.raises(CliError):
            parse_cell_types(bad)


def test_sample_writes_requested_types(saved_model, tmp_path, capsys):
    out = tmp_path / "sub" / "cells.h5ad"
    status = sample_command(
        ["--model", str(saved_model), "--n", "7", "--cell-types", "type_0=5,type_2=2", "--seed", "3", "--out", str(out)]
    )
    assert status == 0
    cells = ad.read_h5ad(out)
    assert cells.shape == (7, 10)
    assert cells.obs["cell_type"].value_counts().to_dict() == {"type_0": 5, "type_2": 2, "type_1": 0}
    assert "wrote 7 cells" in capsys.readouterr().out
    # the same seed through the library gives the same cells
    again = Generator.load(saved_model).sample(7, cell_types={"type_0": 5, "type_2": 2}, seed=3)
    assert np.array_equal(cells.X, again.X)


def test_sample_in_training_proportions_by_default(saved_model, tmp_path):
    out = tmp_path / "cells.h5ad"
    assert sample_command(["--model", str(saved_model), "--n", "30", "--out", str(out)]) == 0
    assert ad.read_h5ad(out).n_obs == 30


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cell-types", "type_0=5,NK=2"], "['NK'] not among the model's types"),
        (["--cell-types", "type_0=5,type_1=1"], "the counts sum to 6, not --n 7"),
        (["--cell-types", "type_0"], "is not TYPE=COUNT"),
    ],
)
def test_sample_errors_are_one_line(saved_model, tmp_path, capsys, extra, message):
    out = tmp_path / "cells.h5ad"
    assert sample_command(["--model", str(saved_model), "--n", "7", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_sample_wrong_model_path(tmp_path, capsys):
    assert sample_command(["--model", str(tmp_path / "nope"), "--n", "3", "--out", str(tmp_path / "c.h5ad")]) == 2
    assert "the folder does not exist" in capsys.readouterr().err
    assert sample_command(["--model", str(tmp_path), "--n", "3", "--out", str(tmp_path / "c.h5ad")]) == 2
    assert "holds no generator.json" in capsys.readouterr().err


def test_python_m_cellsynth_sample(saved_model, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    help_text = subprocess.run(
        [sys.executable, "-m", "cellsynth", "sample", "--help"], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "--cell-types" in help_text and "--model" in help_text
    failed = subprocess.run(
        [sys.executable, "-m", "cellsynth", "sample", "--model", str(tmp_path), "--n", "2", "--out", "x.h5ad"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert failed.returncode == 2 and "Traceback" not in failed.stderr


def test_python_m_cellsynth_still_runs_kedro():
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for argv in (["--help"], ["run", "--help"]):
        shown = subprocess.run(
            [sys.executable, "-m", "cellsynth", *argv], capture_output=True, text=True, env=env, cwd=SRC.parent
        )
        assert shown.returncode == 0, shown.stderr
        assert "--pipelines" in shown.stdout
