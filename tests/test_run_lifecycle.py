"""MLflow runs end with a status and a reason whatever stops a ``kedro run``: Ctrl-C and SIGTERM mark
the parent and the running generator's run KILLED, kill -9 leaves a run the next run closes, a failing
node leaves FAILED runs with the error message. Driven as a user would, in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import anndata as ad
import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import RAW_DATA
from kedro_helpers import kedro_command, make_project_copy, run_kedro

PARAMS = "dataset.path=data/01_raw/subset.h5ad,dataset.name=subset,splitting.n_top_genes=100"
SLOW_MAF = (f"{PARAMS},generation.generators=maf,generator_presets.maf.default.epochs=100000,"
            "generator_presets.maf.default.patience=null")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy with a 300-cell PBMC3K subset already split (the generation pipeline starts at once)."""
    root = make_project_copy(tmp_path_factory.mktemp("lifecycle"))
    full = ad.read_h5ad(RAW_DATA / "pbmc3k_counts.h5ad")
    full[np.sort(np.random.default_rng(0).choice(full.n_obs, 300, replace=False))].copy().write_h5ad(
        root / "data" / "01_raw" / "subset.h5ad")
    done = run_kedro(root, "run", "--pipelines", "splitting", "--params", PARAMS)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def runs_of(root):
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cellsynth-subset")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])


def start_training(root):
    """``kedro run --pipelines generation`` with a MAF that trains for ages; returns once it trains."""
    command, env = kedro_command(root, "run", "--pipelines", "generation", "--params", SLOW_MAF)
    env["COLUMNS"] = "400"  # one log record per line
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Running node: generate_cells" in line:
            time.sleep(2)  # inside the training loop
            return process, lines
    raise AssertionError("".join(lines[-40:]))


@pytest.mark.parametrize(("sent", "reason"), [(signal.SIGINT, "interrupted by SIGINT (Ctrl-C)"),
                                               (signal.SIGTERM, "interrupted by SIGTERM")])
def test_ctrl_c_and_sigterm_mark_the_parent_and_the_running_generator_killed(project, sent, reason):
    process, _ = start_training(project)
    process.send_signal(sent)
    rest = process.communicate(timeout=120)[0]
    assert process.returncode != 0, rest[-2000:]
    newest = runs_of(project)
    parent = next(r for r in newest if r.data.tags.get("cellsynth.role") == "parent")
    child = next(r for r in newest if r.data.tags.get("cellsynth.namespace") == "maf.fold_0")
    assert (parent.info.status, parent.data.tags["cellsynth.end_reason"]) == ("KILLED", reason)
    assert (child.info.status, child.data.tags["cellsynth.end_reason"]) == ("KILLED", reason)
    assert parent.data.tags["kedro.env"] == "local"
    assert parent.data.tags["kedro.session_id"] not in ("None", "")
    assert parent.data.tags["cellsynth.pid"] == str(process.pid)


def test_a_run_left_running_by_kill_9_is_closed_by_the_next_run(project):
    process, _ = start_training(project)
    process.kill()
    process.communicate(timeout=60)
    orphan = next(r for r in runs_of(project) if r.data.tags.get("cellsynth.role") == "parent")
    assert orphan.info.status == "RUNNING"

    done = run_kedro(project, "run", "--pipelines", "splitting", "--params", PARAMS)
    assert done.returncode == 0, done.stderr[-3000:]
    closed = next(r for r in runs_of(project) if r.info.run_id == orphan.info.run_id)
    assert closed.info.status == "KILLED"
    assert "ended without closing the run" in closed.data.tags["cellsynth.end_reason"]
    newest = next(r for r in runs_of(project) if r.data.tags.get("cellsynth.role") == "parent")
    assert newest.info.status == "FINISHED" and newest.info.run_id != orphan.info.run_id


def test_a_failing_generator_leaves_failed_runs_with_the_error(project):
    # Training cells without their cell-type column: the generator's node raises.
    train_path = project / "data" / "05_model_input" / "subset" / "fold_0" / "train.h5ad"
    saved = train_path.read_bytes()
    train = ad.read_h5ad(train_path)
    del train.obs["cell_type"]
    try:
        train.write_h5ad(train_path)
        done = run_kedro(project, "run", "--pipelines", "generation", "--only-missing-outputs",
                         "--params", f"{PARAMS},generation.generators=smote")
    finally:
        train_path.write_bytes(saved)
    assert done.returncode == 1
    newest = runs_of(project)
    parent = next(r for r in newest if r.data.tags.get("cellsynth.role") == "parent")
    child = next(r for r in newest if r.data.tags.get("cellsynth.namespace") == "smote.fold_0")
    assert parent.info.status == child.info.status == "FAILED"
    assert "cell_type" in parent.data.tags["cellsynth.end_reason"]
    assert child.data.tags["cellsynth.end_reason"].startswith("node smote.fold_0.generate_cells failed: ")


@pytest.mark.parametrize("label", ["a..b", "..", "T//NK", "CD14+ Mono", "/x", "y/", ".", "x/../y", "nan"])
def test_metrics_and_parameters_of_any_label_reach_mlflow(tmp_path, label):
    from cellsynth.tracking import runs

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = runs.start_parent_run(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="labels",
                                run_name="labels", params={"expected": {label: "x"}}, tags={})
    try:
        runs.log_metrics(run.run_id, [(runs.metric_key("c2st_auc", label), 0.5, 0), ("other", 1.0, 0)])
    finally:
        runs.end_parent_run()
    logged = client.get_run(run.run_id).data
    assert len(logged.metrics) == 2 and len(logged.params) == 1
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_a_second_run_in_the_same_project_stops_at_once_naming_the_first(project):
    first, _ = start_training(project)
    try:
        second = run_kedro(project, "run", "--pipelines", "splitting", "--params", PARAMS)
        assert second.returncode == 1
        assert "Error: another cellsynth run is using this project" in second.stderr
        assert f"process {first.pid} (`" in second.stderr and "run --pipelines generation" in second.stderr
        assert "Running node" not in second.stdout + second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    # The lock dies with its process: the next run goes ahead.
    third = run_kedro(project, "run", "--pipelines", "splitting", "--only-missing-outputs", "--params", PARAMS)
    assert third.returncode == 0, third.stderr[-3000:]


def test_the_lock_names_its_holder_and_is_free_once_released(tmp_path):
    from cellsynth.project_lock import ProjectLockedError, acquire, release

    held = acquire(tmp_path)
    with pytest.raises(ProjectLockedError, match=rf"process {os.getpid()} \(`"):
        acquire(tmp_path)
    release(held)
    release(acquire(tmp_path))
