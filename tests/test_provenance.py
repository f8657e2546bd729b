"""Outputs are bound to the data and parameters that made them: recorded in every saved AnnData, kept in a
folder per dataset, checked before a run reuses them (``--only-missing-outputs`` included)."""

from __future__ import annotations

import hashlib
import json
import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellsynth import provenance
from cellsynth.config import ConfigError, DatasetSettings
from kedro_helpers import make_project_copy, run_kedro

PARAMS = {
    "dataset": {"name": "mine", "path": "data/01_raw/mine.h5ad", "label_key": "cell_type", "batch_key": None,
                "counts_layer": None},
    "preprocessing": {"min_cells_per_type": 10},
    "splitting": {"n_folds": 5, "seed": 0, "n_top_genes": 200},
    "generation": {"seed": 0, "preset": "default"},
    "generator_presets": {"maf": {"default": {"hidden": 64}, "paper": {"hidden": 256}}},
}


def _project_file(tmp_path, content: bytes = b"cells v1"):
    path = tmp_path / "data" / "01_raw" / "mine.h5ad"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _with(params, **blocks):
    changed = json.loads(json.dumps(params))
    for block, values in blocks.items():
        changed[block] = {**changed.get(block, {}), **values}
    return changed


def test_a_record_differs_from_another_runs_where_its_data_or_parameters_do(tmp_path):
    _project_file(tmp_path)
    full = ("dataset", "preprocessing", "splitting", "generation")
    saved = provenance.expected_record(PARAMS, full, fold=0, generator="maf", project_path=tmp_path)
    assert saved["dataset"]["inputs"]["mine"]["sha256"] == hashlib.sha256(b"cells v1").hexdigest()
    assert saved["generation"]["hyperparameters"] == {"hidden": 64}
    assert provenance.differences(saved, saved) == []

    seed = provenance.expected_record(_with(PARAMS, generation={"seed": 7}), full, fold=0, generator="maf",
                                      project_path=tmp_path)
    assert provenance.differences(saved, seed) == [("generation.seed", 0, 7)]
    preset = provenance.expected_record(_with(PARAMS, generation={"preset": "paper"}), full, fold=0, generator="maf",
                                        project_path=tmp_path)
    assert {key for key, _, _ in provenance.differences(saved, preset)} == {
        "generation.preset", "generation.hyperparameters.hidden"}
    other_fold = provenance.expected_record(PARAMS, full, fold=1, generator="maf", project_path=tmp_path)
    assert provenance.differences(saved, other_fold) == [("splitting.fold", 0, 1)]
    # n_folds sets the smallest type preprocessing keeps: part of the cells' identity, not only the folds'
    folds = provenance.expected_record(_with(PARAMS, splitting={"n_folds": 3}), ("dataset", "preprocessing"),
                                       project_path=tmp_path)
    assert ("preprocessing.n_folds", 5, 3) in provenance.differences(saved, folds)

    # A file made before a setting existed matches a run at that setting's default, not at another value.
    older = json.loads(json.dumps(saved))
    del older["splitting"]["hvg_cells"]
    assert provenance.differences(older, saved) == []
    all_cells = provenance.expected_record(_with(PARAMS, splitting={"hvg_cells": "all"}), full, fold=0,
                                           generator="maf", project_path=tmp_path)
    assert provenance.differences(older, all_cells) == [("splitting.hvg_cells", "<absent>", "all")]

    # Same path, new content: the file's row says so, and only remaking helps.
    _project_file(tmp_path, b"cells v2, edited")
    changed = provenance.expected_record(PARAMS, full, fold=0, generator="maf", project_path=tmp_path)
    (key, was, now), = provenance.differences(saved, changed)
    assert key == "dataset.inputs.mine" and was.startswith("data/01_raw/mine.h5ad (sha256 ")
    assert hashlib.sha256(b"cells v2, edited").hexdigest()[:12] in now
    message = provenance.explain([("maf.fold_0.synthetic", "x.h5ad", [(key, was, now)])], maker="generation",
                                 params_option="dataset.name=mine", only_missing=True)
    assert 'kedro run --pipelines generation --params "dataset.name=mine" (without --only-missing-outputs' in message
    assert "only remaking them helps" in message and "Or reuse them" not in message

    # Parameters that differ: the message gives the --params that reuse the outputs.
    message = provenance.explain([("fold_0.train", "t.h5ad", provenance.differences(saved, seed))],
                                 maker="splitting", params_option="", only_missing=False)
    assert 'Or reuse them: run with the settings they were made with, --params "generation.seed=0"' in message


def test_a_moved_file_with_the_same_content_is_the_same_data(tmp_path):
    _project_file(tmp_path)
    saved = provenance.expected_record(PARAMS, ("dataset",), project_path=tmp_path)
    moved = tmp_path / "elsewhere.h5ad"
    os.replace(tmp_path / "data" / "01_raw" / "mine.h5ad", moved)
    now = provenance.expected_record(_with(PARAMS, dataset={"path": str(moved)}), ("dataset",), project_path=tmp_path)
    assert provenance.differences(saved, now) == []


def test_the_fingerprint_reuses_a_known_hash_only_while_size_and_time_are_unchanged(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    first = provenance.file_fingerprint(path)
    assert first["sha256"] == hashlib.sha256(b"abc").hexdigest() and first["bytes"] == 3
    known = {**first, "sha256": "recorded-earlier"}
    assert provenance.file_fingerprint(path, known)["sha256"] == "recorded-earlier"  # not read again
    path.write_bytes(b"abcd")
    assert provenance.file_fingerprint(path, known)["sha256"] == hashlib.sha256(b"abcd").hexdigest()
    assert provenance.file_fingerprint(tmp_path / "absent.h5ad")["sha256"] is None


def test_the_record_survives_h5ad_and_is_read_without_the_matrix(tmp_path):
    cells = ad.AnnData(X=np.ones((3, 2), dtype=np.float32))
    record = {"dataset": {"name": "mine", "batch_key": None, "inputs": {"mine": {"sha256": None}}}}
    provenance.stamp(cells, record)
    cells.write_h5ad(tmp_path / "c.h5ad")
    assert provenance.read_record(tmp_path / "c.h5ad") == record
    assert provenance.record_of(ad.read_h5ad(tmp_path / "c.h5ad")) == record
    assert provenance.dataset_name(cells, {"name": "defaults", "path": "p", "label_key": "l"}) == "mine"
    assert provenance.read_record(_unrecorded(tmp_path)) is None


def _unrecorded(tmp_path):
    ad.AnnData(X=np.zeros((2, 2), dtype=np.float32)).write_h5ad(tmp_path / "plain.h5ad")
    return tmp_path / "plain.h5ad"


def test_a_dataset_name_is_one_folder_name():
    assert DatasetSettings.from_params({"name": "mouse_bm-2.v1", "path": "p", "label_key": "l"}).name == "mouse_bm-2.v1"
    for bad in ("../x", "a/b", "", ".hidden", "two words"):
        with pytest.raises(ConfigError, match="dataset.name"):
            DatasetSettings.from_params({"name": bad, "path": "p", "label_key": "l"})


@pytest.mark.slow
def test_switching_dataset_keeps_both_and_a_mismatched_run_refuses(tmp_path):
    """The README's one-run form, then evaluation: the report names the cells' dataset; evaluation with
    other data or parameters, or --only-missing-outputs with another seed, refuses before any node."""
    from conftest import RAW_DATA

    root = make_project_copy(tmp_path)
    full = ad.read_h5ad(RAW_DATA / "pbmc3k_counts.h5ad")
    rng = np.random.default_rng(0)
    full[np.sort(rng.choice(full.n_obs, 300, replace=False))].copy().write_h5ad(root / "data/01_raw/subset.h5ad")
    fast = ("generation.generators=train_copy,splitting.n_top_genes=200,evaluation.n_pca=10,"
            "evaluation.utility.n_estimators=10,evaluation.utility.n_jobs=1,evaluation.figures.dpi=40")
    mine = f"dataset.path=data/01_raw/subset.h5ad,dataset.name=subset,{fast}"

    made = run_kedro(root, "run", "--pipelines", "generation", "--params", mine, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    evaluated = run_kedro(root, "run", "--pipelines", "evaluation", "--params", mine, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    reporting = root / "data" / "08_reporting" / "subset"
    report = (reporting / "report.html").read_text()
    sha = hashlib.sha256((root / "data/01_raw/subset.h5ad").read_bytes()).hexdigest()
    assert "<title>cellsynth report: subset" in report
    assert f"data/01_raw/subset.h5ad sha256 {sha[:12]}" in report
    assert "Table 1 as published (PBMC3K)" not in report
    assert set(pd.read_parquet(reporting / "metrics.parquet")["dataset"]) == {"subset"}
    record = json.loads((root / "data" / "03_primary" / "subset" / "provenance.json").read_text())
    assert record["dataset"]["inputs"]["subset"]["sha256"] == sha
    assert not (root / "data" / "08_reporting" / "pbmc3k").exists()  # the default dataset's folder is untouched

    # The dataset's name alone: its outputs were made from another file and other parameters than the defaults.
    other = run_kedro(root, "run", "--pipelines", "evaluation", "--params", f"dataset.name=subset,{fast}")
    output = other.stdout + other.stderr
    assert other.returncode != 0 and "Running node" not in output
    assert "dataset.inputs.subset: data/01_raw/subset.h5ad" in output
    assert '--params "dataset.path=data/01_raw/subset.h5ad' in output  # the settings that reuse them

    # A dataset no run has made: the message names the pipeline to run and the datasets that exist.
    absent = run_kedro(root, "run", "--pipelines", "evaluation", "--params", f"dataset.name=elsewhere,{fast}")
    assert absent.returncode != 0
    assert "no run has made for the dataset 'elsewhere'" in absent.stderr and "['subset']" in absent.stderr

    # --only-missing-outputs after the seed changed (e.g. resuming a killed run): the saved cells have seed 0.
    resumed = run_kedro(root, "run", "--pipelines", "generation", "--only-missing-outputs", "--params",
                        f"{mine},generation.seed=7")
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode != 0 and "Running node" not in output
    assert "generation.seed: 0 in the file, 7 in this run" in output
    assert "(without --only-missing-outputs, which keeps what exists)" in output
