"""Time and peak memory of the whole quick pipeline (preprocessing → evaluation, fold 0, default
generators) at 2.7k cells (PBMC3K: 2,638 after QC) and at larger, resampled versions of it.

Resampling (:func:`resample`): cells of ``data/01_raw/pbmc3k_counts.h5ad`` are drawn with
replacement (seeded), and every count of a drawn cell is binomially thinned,
``count' ~ Binomial(count, p)`` with ``p = --thin`` (default 0.9), so copies of one cell differ (the
script counts identical cells and reports them) and every cell keeps its type label. Library
sizes shrink by ``1 - p`` on average, which the library-size normalisation removes.

For each size a fresh subprocess builds a throw-away Kedro project under ``--workdir`` (this
project's ``pyproject.toml``, ``conf/`` and a copy of ``src/``, an empty ``data/`` tree, the resampled file as the raw
input), runs ``generation`` then ``evaluation`` in one Kedro session each, and records, per node,
the wall seconds and the process's peak RSS while the node ran (a sampling thread), and the node's
peak RSS above the RSS at its start in units of one dense float32 copy of the cells × 2000-HVG
matrix (``dense_copies``). Training epochs of the flows can be capped (``--epochs``, default 1),
so the curve shows the cost per epoch rather than how long early stopping takes at each size;
the summary says so.

Usage::

    python benchmarks/cell_scaling.py [--cells 2700 10000 50000] [--epochs 1] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "01_raw" / "pbmc3k_counts.h5ad"
LABEL = "seurat_annotations"
DATA_DIRS = ["01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input", "06_models",
             "07_model_output", "08_reporting"]


def resample(adata, n_cells: int, thin: float, seed: int):
    """``n_cells`` cells drawn with replacement from ``adata`` (raw counts), each count binomially
    thinned with probability ``thin`` (``thin=1`` and ``n_cells == adata.n_obs``: the data itself)."""
    import numpy as np
    import scipy.sparse as sp

    if n_cells == adata.n_obs and thin >= 1:
        return adata.copy()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(adata.n_obs, n_cells, replace=True))
    X = sp.csr_matrix(adata.X)[rows].astype(np.float32)
    X.data = rng.binomial(X.data.astype(np.int64), thin).astype(np.float32)
    X.eliminate_zeros()
    out = adata[rows].copy()
    out.X = X
    out.obs_names = [f"{name}-r{i}" for i, name in enumerate(adata.obs_names[rows])]
    return out


def duplicate_cells(X) -> int:
    """Number of cells whose count vector equals an earlier cell's."""
    import hashlib

    import scipy.sparse as sp

    X = sp.csr_matrix(X)
    seen, dupes = set(), 0
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        key = hashlib.blake2b(X.indices[lo:hi].tobytes() + X.data[lo:hi].tobytes(), digest_size=16).digest()
        dupes += key in seen
        seen.add(key)
    return dupes


def child(spec: dict) -> None:
    """Run generation + evaluation in the project ``spec["project"]``; print one JSON line per node."""
    from kedro.framework.hooks import hook_impl
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from cellsynth.profiling import current_rss_bytes, measure

    records: list[dict] = []

    class NodeProfiler:
        def __init__(self):
            self.open: dict[str, tuple] = {}

        @hook_impl
        def before_node_run(self, node):
            m = measure(interval=0.02)
            self.open[node.name] = (m, m.__enter__(), current_rss_bytes() or 0)

        @hook_impl
        def after_node_run(self, node):
            m, result, start = self.open.pop(node.name)
            m.__exit__(None, None, None)
            records.append({"node": node.name, "seconds": round(result.seconds, 2),
                            "start_rss_gib": round(start / 2**30, 3),
                            "peak_rss_gib": round(result.peak_rss_bytes / 2**30, 3)})

    project = Path(spec["project"])
    bootstrap_project(project)
    runtime = {"dataset": {"path": spec["raw"]}}
    if spec["epochs"]:
        runtime["generator_presets"] = {g: {"default": {"epochs": int(spec["epochs"])}} for g in ("maf", "moe")}
    for pipeline in ("generation", "evaluation"):
        started = time.perf_counter()
        with KedroSession.create(project_path=project, runtime_params=runtime) as session:
            session._hook_manager.register(NodeProfiler())  # noqa: SLF001 - profiling only
            session.run(pipeline_names=[pipeline])
        records.append({"node": f"TOTAL {pipeline}", "seconds": round(time.perf_counter() - started, 1)})
    import resource

    records.append({"node": "PROCESS", "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)})
    print("SCALING_NODES " + json.dumps(records), flush=True)


def _write(summary: list, nodes: list, path: Path):
    import pandas as pd

    table, node_table = pd.DataFrame(summary), pd.DataFrame(nodes)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    node_table.to_csv(path.with_name(path.stem + "_nodes.csv"), index=False)
    return table, node_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[2700, 10000, 50000])
    parser.add_argument("--thin", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=1, help="epoch cap of maf and moe (0: their defaults)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/cellsynth_cell_scaling")
    parser.add_argument("--csv", default=str(ROOT / "data" / "08_reporting" / "pbmc3k" / "cell_scaling.csv"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    import anndata as ad
    import pandas as pd

    raw = ad.read_h5ad(RAW)
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}", flush=True)
    summary, nodes = [], []
    for n_cells in args.cells:
        project = Path(args.workdir) / f"cells_{n_cells}"
        if project.exists():
            shutil.rmtree(project)
        for sub in DATA_DIRS:
            (project / "data" / sub).mkdir(parents=True)
        shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
        # this checkout's code (a copy: Kedro requires the source folder inside the project)
        shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        shutil.copytree(ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
        (project / "conf" / "local").mkdir()
        cells = raw if n_cells == raw.n_obs else resample(raw, n_cells, args.thin, args.seed)
        dupes = duplicate_cells(cells.X)
        path = project / "data" / "01_raw" / "cells.h5ad"
        cells.write_h5ad(path)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        spec = {"project": str(project), "raw": str(path), "epochs": args.epochs}
        env = dict(os.environ, KEDRO_DISABLE_TELEMETRY="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=project,
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SCALING_NODES ")]
        if proc.returncode or not lines:
            (Path(args.workdir) / f"cells_{n_cells}.log").write_text(proc.stdout + proc.stderr)
            print(f"{n_cells} cells: failed (exit {proc.returncode}); log in {args.workdir}", flush=True)
            summary.append({"cells": n_cells, "wall_s": round(wall, 1), "note": f"failed (exit {proc.returncode})"})
            continue
        records = json.loads(lines[-1][len("SCALING_NODES "):])
        dense_gib = n_cells * 2000 * 4 / 2**30
        for r in records:
            r["cells"] = n_cells
            if "start_rss_gib" in r:
                r["dense_copies"] = round((r["peak_rss_gib"] - r["start_rss_gib"]) / dense_gib, 2)
            nodes.append(r)
        process = next(r for r in records if r["node"] == "PROCESS")
        totals = {r["node"]: r["seconds"] for r in records if r["node"].startswith("TOTAL")}
        summary.append({"cells": n_cells, "identical_cells": dupes, "wall_s": round(wall, 1),
                        "generation_s": totals.get("TOTAL generation"), "evaluation_s": totals.get("TOTAL evaluation"),
                        "peak_rss_gib": process["peak_rss_gib"], "dense_copy_gib": round(dense_gib, 3),
                        "epochs_cap": args.epochs or "defaults", "load1_start": round(load, 2),
                        "load1_end": round(os.getloadavg()[0], 2)})
        print(summary[-1], flush=True)
        table, node_table = _write(summary, nodes, Path(args.csv))  # after every size: partial results survive

    table, node_table = _write(summary, nodes, Path(args.csv))
    path = Path(args.csv)
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_rows", 500):
        print(table.to_string(index=False))
        if len(node_table):
            slow = node_table[~node_table["node"].isin(["PROCESS"])].sort_values(["cells", "seconds"], ascending=[True, False])
            print(slow.groupby("cells").head(8).to_string(index=False))
    print(f"{os.cpu_count()} cores; wrote {path} and its _nodes.csv")


if __name__ == "__main__":
    main()
