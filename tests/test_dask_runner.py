"""DaskRunner: the generation pipeline on a 2-worker LocalCluster, tracked into an ``mlflow server``.

Every process the tests start (scheduler, workers, MLflow server and its children) is stopped by a
fixture finaliser, also when a test fails; ports are chosen free on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anndata as ad
import cloudpickle
import numpy as np
import pandas as pd
import psutil
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node
from kedro_datasets.pandas import CSVDataset
from mlflow import MlflowClient
from threadpoolctl import threadpool_limits

from cellsynth.runners import DaskRunner, NodeFailedError, co_located_groups
from conftest import RAW_DATA
from kedro_helpers import make_project_copy, run_session

pytestmark = pytest.mark.slow

GENERATOR = "class_gaussian_pca"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on a free loopback port with a SQLite store, in its own process group."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "mlflow-server.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
               "DO_NOT_TRACK": "true"}
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, cwd=root)

    def wait_ready(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited ({self.process.returncode}):\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.uri
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"mlflow server not up after {timeout:.0f} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # children (uvicorn) left in the group after the parent exited
            os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    local = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", processes=True,
                         dashboard_address="127.0.0.1:0")
    yield local
    local.close()


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    full = ad.read_h5ad(RAW_DATA / "pbmc3k_counts.h5ad")
    keep = np.sort(np.random.default_rng(1).choice(full.n_obs, 600, replace=False))
    path = tmp_path_factory.mktemp("data") / "subset.h5ad"
    full[keep].copy().write_h5ad(path)
    return path


def _params(subset: Path) -> dict:
    return {
        "dataset": {"name": "subset", "path": str(subset), "label_key": "seurat_annotations"},
        "splitting": {"n_top_genes": 100},
        "folds_to_run": [0, 1],
        "generation": {"generators": [GENERATOR], "progress": False},
    }


def test_dask_run_gives_the_sequential_cells_and_tracks_both_folds_in_the_server(
    tmp_path, monkeypatch, subset, cluster, mlflow_server
):
    (tmp_path / "sequential").mkdir()
    sequential = make_project_copy(tmp_path / "sequential")
    monkeypatch.chdir(sequential)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{sequential / 'mlflow.db'}")
    # Dask's nanny starts workers with OMP/MKL/OPENBLAS_NUM_THREADS=1 (distributed.nanny.pre-spawn-environ);
    # BLAS sums in another order with more threads (float32 rounding), so the reference runs single-threaded too.
    with threadpool_limits(limits=1):
        run_session(sequential, "generation", _params(subset))

    (tmp_path / "dask").mkdir()
    distributed = make_project_copy(tmp_path / "dask")
    monkeypatch.chdir(distributed)
    server_uri = mlflow_server.wait_ready()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_uri)
    runner = DaskRunner(address=cluster.scheduler_address)
    run_session(distributed, "generation", _params(subset), runner=runner)

    for fold in (0, 1):
        for mode in ("synthetic", "upsample"):
            relative = Path("data/07_model_output/subset") / GENERATOR / f"fold_{fold}" / f"{mode}.h5ad"
            expected, got = ad.read_h5ad(sequential / relative), ad.read_h5ad(distributed / relative)
            assert got.n_obs > 0
            np.testing.assert_array_equal(got.X, expected.X)
            pd.testing.assert_frame_equal(got.obs, expected.obs)
            assert list(got.var_names) == list(expected.var_names)

    # One Dask task per node, except quality control, normalisation and the provenance record (joined by qc_cells).
    tasks = {record.nodes: record for record in runner.task_records}
    preprocessed = ("quality_control", "normalise", "record_provenance")  # all three read qc_cells
    assert preprocessed in tasks
    assert all(len(nodes) == 1 for nodes in tasks if nodes != preprocessed)
    ready_together = [tasks[(name,)] for name in ("describe_data", "fold_0.build_fold", "fold_1.build_fold")]
    assert len({r.worker for r in ready_together}) == 2  # ready together after split_folds: both workers busy
    assert {r.worker for r in runner.task_records} == set(cluster.scheduler_info["workers"])
    assert all(r.worker.startswith("tcp://127.0.0.1:") for r in runner.task_records)
    assert {r.pid for r in runner.task_records}.isdisjoint({os.getpid()})

    client = MlflowClient(server_uri)
    experiment = client.get_experiment_by_name("cellsynth-subset")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("cellsynth.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.data.tags["fold"]: r for r in runs if r.data.tags.get("generator") == GENERATOR}
    assert sorted(children) == ["0", "1"]
    for fold, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED"
        assert "fit_seconds" in child.data.metrics
        cells = ad.read_h5ad(distributed / "data/07_model_output/subset" / GENERATOR / f"fold_{fold}" / "synthetic.h5ad")
        assert child.data.tags["cellsynth.namespace"] == f"{GENERATOR}.fold_{fold}"
        assert "mlflow_run_id" not in cells.uns["cellsynth"]  # no run id inside the scientific output
        assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["checkpoint"]


def _plus_one(frame: pd.DataFrame) -> pd.DataFrame:
    return frame + 1


def _explode(frame: pd.DataFrame) -> pd.DataFrame:
    raise ValueError(f"boom after reading {len(frame)} rows")


@pytest.fixture
def by_value():
    """Ship this module's node functions to the workers by value (the workers cannot import tests/)."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def test_a_failing_node_fails_the_run_with_its_name_and_the_worker_traceback(tmp_path, cluster, by_value):
    catalog = DataCatalog(
        datasets={
            "numbers": MemoryDataset(pd.DataFrame({"x": [1, 2, 3]})),
            "more": CSVDataset(filepath=str(tmp_path / "more.csv")),
            "never": CSVDataset(filepath=str(tmp_path / "never.csv")),
        }
    )
    pipe = Pipeline([node(_plus_one, "numbers", "more", name="plus_one"),
                     node(_explode, "more", "never", name="explode")])
    with pytest.raises(NodeFailedError) as caught:
        DaskRunner(address=cluster.scheduler_address).run(pipe, catalog)
    assert caught.value.node_name == "explode"
    message = str(caught.value)
    assert "Node 'explode' failed on Dask worker tcp://127.0.0.1:" in message
    assert "Traceback (most recent call last)" in message and "in _explode" in message
    assert "ValueError: boom after reading 3 rows" in message
    assert (tmp_path / "more.csv").is_file() and not (tmp_path / "never.csv").exists()


def _children() -> set[int]:
    """Our child processes, less multiprocessing's resource tracker (it lives as long as this process)."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if not any("resource_tracker" in part for part in child.cmdline()):
                pids.add(child.pid)
    return pids


def test_default_local_cluster_is_on_loopback_and_stopped_after_the_run(tmp_path, by_value):
    before = _children()
    catalog = DataCatalog(
        datasets={"numbers": MemoryDataset(pd.DataFrame({"x": [1]})), "more": CSVDataset(filepath=str(tmp_path / "m.csv"))}
    )
    runner = DaskRunner(n_workers=1)
    runner.run(Pipeline([node(_plus_one, "numbers", "more", name="plus_one")]), catalog)
    assert pd.read_csv(tmp_path / "m.csv")["x"].tolist() == [2]
    [record] = runner.task_records
    assert record.worker.startswith("tcp://127.0.0.1:") and record.pid != os.getpid()
    deadline = time.monotonic() + 20
    while (left := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left running after the run: {[psutil.Process(p).cmdline() for p in left]}"


def test_unreachable_scheduler_is_a_clear_error():
    runner = DaskRunner(address=f"tcp://127.0.0.1:{_free_port()}", connect_timeout=2)
    catalog = DataCatalog(datasets={"a": MemoryDataset(1), "b": MemoryDataset()})
    with pytest.raises(RuntimeError, match=r"no Dask scheduler answered at tcp://127\.0\.0\.1:\d+"):
        runner.run(Pipeline([node(_plus_one, "a", "b", name="plus_one")]), catalog)


def test_in_memory_anndata_input_is_refused_before_anything_runs(tiny_adata_factory):
    catalog = DataCatalog(datasets={"cells": MemoryDataset(tiny_adata_factory(10, 3, 2, seed=0)), "out": MemoryDataset()})
    runner = DaskRunner(address="tcp://127.0.0.1:1")  # never reached
    with pytest.raises(ValueError, match=r"\['cells'\] are in-memory AnnData"):
        runner.run(Pipeline([node(_plus_one, "cells", "out", name="plus_one")]), catalog)


def test_nodes_joined_in_memory_share_a_task_and_cycles_are_merged(tmp_path):
    def identity(x):
        return x

    catalog = DataCatalog(
        datasets={
            "raw": CSVDataset(filepath=str(tmp_path / "raw.csv")),
            "side": CSVDataset(filepath=str(tmp_path / "side.csv")),
            "side2": CSVDataset(filepath=str(tmp_path / "side2.csv")),
            "out": CSVDataset(filepath=str(tmp_path / "out.csv")),
            "other": CSVDataset(filepath=str(tmp_path / "other.csv")),
        }
    )
    pipe = Pipeline([
        node(lambda x: (x, x), "raw", ["mem", "side"], name="a"),  # a -> mem (memory) -> b
        node(identity, "side", "side2", name="c"),  # a -> side (file) -> c -> side2 (file) -> b
        node(lambda x, y: x, ["mem", "side2"], "out", name="b"),
        node(identity, "raw", "other", name="d"),  # independent
    ])
    groups = co_located_groups(pipe, catalog)
    assert sorted(tuple(sorted(n.name for n in g.nodes)) for g in groups) == [("a", "b", "c"), ("d",)]
    assert all(not g.depends_on for g in groups)

    chain = Pipeline([node(identity, "raw", "side", name="first"), node(identity, "side", "out", name="second")])
    first, second = co_located_groups(chain, catalog)
    assert [n.name for n in first.nodes] == ["first"] and second.depends_on == {0}


def test_a_worker_without_the_project_folder_says_it_must_be_shared(tmp_path):
    from cellsynth.runners import _bootstrap, _WorkerSpec

    with pytest.raises(FileNotFoundError, match="must be on a path shared by the driver and every worker"):
        _bootstrap(_WorkerSpec(None, None, str(tmp_path / "not-mounted-here"), {}))


def test_attached_run_context_overrides_the_process_run_in_this_thread_only(monkeypatch):
    import threading

    from cellsynth.tracking import runs

    monkeypatch.setattr(runs, "_process_run", runs.ActiveRun("sqlite:///nowhere.db", "1", "driver-run"))
    context = {"tracking_uri": "http://127.0.0.1:1", "experiment_id": "7", "run_id": "parent-of-the-driver"}
    seen = {}
    with runs.attached_run(context):
        assert runs.run_context() == context and runs.parent_run_id() == "parent-of-the-driver"
        other = threading.Thread(target=lambda: seen.update(run=runs.parent_run_id()))
        other.start()
        other.join()
    assert seen["run"] == "driver-run"  # another thread keeps the process's run
    assert runs.parent_run_id() == "driver-run"
    with runs.attached_run({}):  # tracking off in the driver: off on the worker too
        assert runs.active_run() is None and runs.child_run_id("maf.fold_0", {}) is None
