"""Speed, memory and quality of every generator on PBMC3K fold 0, in one table (``make bench``).

For each generator (and the ``paper`` presets of ``maf`` and ``moe`` as the reference) a fresh
subprocess, with ``--threads`` torch/BLAS threads (default 2):

1. gets a fitted model: it fits one on ``data/05_model_input/pbmc3k/fold_0/train.h5ad`` (the ``paper``
   presets are capped at ``--paper-epochs`` epochs, default 2 of their 100: the row says so), or,
   for the default presets when ``data/06_models/pbmc3k/<generator>/fold_0`` holds the model that
   ``make run`` trained (``--reuse``, the default), loads it and takes its fit time from that run
   (``uns["cellsynth"]`` of ``data/07_model_output/pbmc3k/<generator>/fold_0/synthetic.h5ad``); the
   ``fit_source`` column says which;
2. after one untimed warm-up request of the same size (first-touch allocations, lazy imports),
   samples ``--sample-cells`` cells (default 1000) in training proportions ``--repeats`` times
   (default 3) and reports cells per second (wall clock) and the CPU seconds of the median request,
   then samples them again on one thread (median of as many requests) and reports cells per CPU
   second of that thread (``cpu_cells_per_s_1thread``: what one idle core delivers; on a loaded
   machine the wall-clock figure mostly measures the other processes). The nflows-based ``paper`` presets invert
   their MAF one gene at a time (~2 cells/s at 2000 genes), so they sample ``--paper-cells``
   cells (default 64) instead: the ``sample_cells`` column says how many;
3. scores the cells with the honest protocol: the test cells are split into stratified halves A/B
   (:func:`cellsynth.metrics.split_halves`, seed 0), the generator samples as many cells as B with
   B's cell-type counts (unconditional presets: as many cells, labelled by k-NN), and, in the
   fold's reference PCA space, ``c2st_auc`` (generator vs A) and ``wd_ratio_to_floor`` (WD to A
   divided by the WD of B to A) are computed. The ``paper`` presets reuse their throughput
   sample (``--paper-cells`` cells) for this, which the ``quality_cells`` column records;
4. reports its peak resident memory (``ru_maxrss``: data, model, fit and sampling together).

The real-vs-real floor is the first row. The table is printed, written to
``data/08_reporting/pbmc3k/benchmark.csv`` and plotted to ``data/08_reporting/pbmc3k/benchmark.png``. Every row
records the 1-minute load average when it started: on a shared machine wall times are inflated by
roughly load / cores, CPU seconds much less so.

Usage::

    python benchmarks/bench.py [--generators maf moe maf:paper ...] [--refit] [--threads 2]

Run ``kedro run --pipelines generation`` (``make run``) first: it writes the fold's train/test
cells (and the default models that ``--reuse`` picks up).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLD_DIR = ROOT / "data" / "05_model_input" / "pbmc3k" / "fold_0"
DEFAULT_GENERATORS = ["nb_latent_flow", "nb_latent_maf", "nb_latent_moe", "scvi", "maf", "moe", "smote", "class_gaussian_pca", "gene_shuffle", "train_copy", "maf:paper", "moe:paper"]
SEED = 0


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def _presets(generator: str, preset: str) -> dict:
    """Hyperparameters of ``generator`` under ``preset``, from the project's parameter files."""
    import yaml

    env = "paper" if preset == "paper" else "base"
    for name in (env, "base"):
        path = ROOT / "conf" / name / "parameters_generation.yml"
        presets = (yaml.safe_load(path.read_text()) or {}).get("generator_presets", {})
        if generator in presets and preset in (presets[generator] or {}):
            return dict(presets[generator][preset] or {})
    if preset == "default":
        return {}
    raise SystemExit(f"no preset {preset!r} for {generator!r} in conf/*/parameters_generation.yml")


def _timed_sample(model, n_cells: int, repeats: int):
    """The cells of one request of ``n_cells`` (seed ``SEED + 2``) and the median wall and CPU seconds
    of ``repeats`` such requests."""
    import numpy as np

    walls, cpus = [], []
    for _ in range(repeats):
        cpu0, started = time.process_time(), time.perf_counter()
        cells = model.sample(n_cells, seed=SEED + 2)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu0)
    return cells, float(np.median(walls)), float(np.median(cpus))


def _floor_row() -> dict:
    import anndata as ad

    from cellsynth.evaluation.protocol import cell_labels, fit_reference_space, project
    from cellsynth.metrics import c2st_auc, split_halves, wd

    train, test = ad.read_h5ad(FOLD_DIR / "train.h5ad"), ad.read_h5ad(FOLD_DIR / "test.h5ad")
    space = fit_reference_space(train, seed=SEED)
    z_test = project(space, test)
    idx_a, idx_b = split_halves(cell_labels(test), seed=SEED)
    return {
        "generator": "real (B vs A floor)",
        "preset": "",
        "quality_cells": len(idx_b),
        "c2st_auc": round(c2st_auc(z_test[idx_a], z_test[idx_b], seed=SEED), 4),
        "wd": round(wd(z_test[idx_a], z_test[idx_b]), 4),
        "wd_ratio_to_floor": 1.0,
    }


def child(generator: str, preset: str, spec: dict) -> dict:
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    threadpool_limits(threads)
    import anndata as ad
    import pandas as pd

    from cellsynth.evaluation.protocol import cell_labels, fit_reference_space, project
    from cellsynth.generators import GENERATORS
    from cellsynth.metrics import c2st_auc, split_halves, wd

    row: dict = {"generator": generator, "preset": preset, "threads": threads, "load1_start": _load_average()}
    train, test = ad.read_h5ad(FOLD_DIR / "train.h5ad"), ad.read_h5ad(FOLD_DIR / "test.h5ad")
    train.obs["cell_type"] = train.obs["cell_type"].astype(str)
    model_dir = ROOT / "data" / "06_models" / "pbmc3k" / generator / "fold_0"
    cls = GENERATORS[generator]
    hyper = _presets(generator, preset)
    note = []
    if preset == "default" and spec["reuse"] and (model_dir / "generator.json").exists():
        model = cls.load(model_dir)
        info = ad.read_h5ad(ROOT / "data" / "07_model_output" / "pbmc3k" / generator / "fold_0" / "synthetic.h5ad",
                            backed="r").uns.get("cellsynth", {})
        row["fit_source"] = "make run"
        row["fit_s"] = round(float(info.get("fit_seconds", np.nan)), 1)
        row["epochs_run"] = int(info.get("epochs_run", 0))
    else:
        if preset == "paper" and "epochs" in cls.Params.__dataclass_fields__:
            full = int(hyper.get("epochs", cls.Params().epochs))
            hyper["epochs"] = min(full, int(spec["paper_epochs"]))
            note.append(f"fit capped at {hyper['epochs']} of {full} epochs")
        if preset == "paper":
            hyper["conditional"] = False  # one unconditional model (the paper fits one per type)
        model = cls(label_key="cell_type", **hyper)
        started = time.perf_counter()
        history = model.fit(train, seed=SEED, progress=False)
        row["fit_source"] = "this run"
        row["fit_s"] = round(time.perf_counter() - started, 1)
        row["epochs_run"] = len(history.train_loss)
    if row["epochs_run"]:
        row["fit_s_per_epoch"] = round(row["fit_s"] / row["epochs_run"], 2)
    nflows = getattr(model.params, "backend", None) == "nflows" or getattr(model.params, "maf_backend", None) == "nflows"
    n_sample = int(spec["paper_cells"] if nflows else spec["sample_cells"])
    if nflows:
        note.append(f"nflows MAF: D passes per cell, throughput and quality on {n_sample} cells")
    model.sample(2 if nflows else n_sample, seed=SEED + 1)  # warm-up (allocations, lazy imports)
    repeats = 1 if nflows else int(spec["repeats"])
    throughput_cells, wall_s, cpu_s = _timed_sample(model, n_sample, repeats)
    row["sample_s"], row["sample_cpu_s"] = round(wall_s, 3), round(cpu_s, 3)
    row["sample_cells"] = n_sample
    row["cells_per_s"] = round(n_sample / max(row["sample_s"], 1e-9), 1)
    if not nflows:
        # The same request on one thread, timed in CPU seconds of this process: what an idle core
        # delivers, nearly independent of the machine's load (threads spinning on busy cores inflate
        # both the wall and the CPU time of the multi-threaded run above).
        with threadpool_limits(1):
            torch.set_num_threads(1)
            _, _, cpu_s = _timed_sample(model, n_sample, repeats)
            row["cpu_cells_per_s_1thread"] = round(n_sample / max(cpu_s, 1e-9), 1)
            torch.set_num_threads(threads)

    space = fit_reference_space(train, seed=SEED)
    z_test = project(space, test)
    labels = cell_labels(test)
    idx_a, idx_b = split_halves(labels, seed=SEED)
    if nflows:
        synthetic = throughput_cells
    else:
        counts = pd.Series(labels[idx_b]).value_counts().to_dict()
        requested = counts if model.conditional else None
        synthetic = model.sample(len(idx_b), cell_types=requested, seed=SEED + 10_000)
    z_synth = project(space, synthetic)
    finite = np.isfinite(z_synth).all(axis=1)
    if not finite.all():
        note.append(f"{int((~finite).sum())} non-finite cells dropped")
    z_synth = z_synth[finite]
    floor = wd(z_test[idx_a], z_test[idx_b])
    row["quality_cells"] = len(z_synth)
    row["c2st_auc"] = round(c2st_auc(z_test[idx_a], z_synth, seed=SEED), 4)
    row["wd"] = round(wd(z_test[idx_a], z_synth), 4)
    row["wd_ratio_to_floor"] = round(row["wd"] / floor, 3)
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    row["note"] = "; ".join(note)
    return row


def _plot(table, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[table["cells_per_s"].notna()]
    names = [f"{g}:{p}" if p not in ("", "default") else g for g, p in zip(rows["generator"], rows["preset"], strict=True)]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    axes[0].barh(names, rows["cells_per_s"], color="tab:blue")
    axes[0].set_xscale("log")
    axes[0].axvline(1000, color="k", lw=0.8, ls="--")
    axes[0].set_xlabel("sampling throughput (cells/s, log; dashed: 1,000)")
    floor = table.loc[table["generator"] == "real (B vs A floor)", "c2st_auc"]
    axes[1].barh(names, rows["c2st_auc"], color="tab:orange")
    if len(floor):
        axes[1].axvline(float(floor.iloc[0]), color="k", lw=0.8, ls="--")
    axes[1].set_xlim(0.4, 1.0)
    axes[1].set_xlabel("C2ST AUC vs half A (dashed: real B vs A)")
    axes[2].barh(names, rows["wd_ratio_to_floor"], color="tab:green")
    axes[2].axvline(1.0, color="k", lw=0.8, ls="--")
    axes[2].set_xlabel("WD / real floor (1 = as close as real cells)")
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generators", nargs="*", default=DEFAULT_GENERATORS,
                        help="names, or name:preset (default preset: default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sample-cells", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed sampling requests per generator (median)")
    parser.add_argument("--paper-cells", type=int, default=64, help="cells sampled by the nflows paper presets")
    parser.add_argument("--paper-epochs", type=int, default=2, help="epoch cap of the paper presets' fits")
    parser.add_argument("--refit", action="store_true", help="fit the default presets here instead of reusing make run's models")
    parser.add_argument("--csv", default=str(ROOT / "data" / "08_reporting" / "pbmc3k" / "benchmark.csv"))
    parser.add_argument("--append", action="store_true",
                        help="merge into an existing CSV (rows of the generators run now are replaced)")
    parser.add_argument("--merge", nargs="*", default=[],
                        help="also take the rows of these earlier benchmark CSVs (rows run now win)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        print("BENCH_ROW " + json.dumps(child(spec["generator"], spec["preset"], spec)), flush=True)
        return
    if not (FOLD_DIR / "train.h5ad").exists():
        raise SystemExit(f"{FOLD_DIR} has no train.h5ad: run `make run` (kedro run --pipelines generation) first")

    import pandas as pd

    cores = os.cpu_count()
    print(f"benchmark on {cores} cores, {args.threads} threads per generator; load average at start "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rows = [_floor_row()]
    for entry in args.generators:
        generator, _, preset = entry.partition(":")
        spec = {"generator": generator, "preset": preset or "default", "threads": args.threads,
                "sample_cells": args.sample_cells, "paper_cells": args.paper_cells, "repeats": args.repeats,
                "paper_epochs": args.paper_epochs, "reuse": not args.refit}
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                              capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_ROW ")]
        if proc.returncode or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            rows.append({"generator": generator, "preset": spec["preset"],
                         "note": f"failed (exit {proc.returncode}): {tail[0][:160]}"})
        else:
            rows.append(json.loads(lines[-1][len("BENCH_ROW "):]))
        print({k: v for k, v in rows[-1].items() if k != "note"}, rows[-1].get("note", ""), flush=True)

    columns = ["generator", "preset", "fit_source", "epochs_run", "fit_s", "fit_s_per_epoch", "sample_cells",
               "sample_s", "sample_cpu_s", "cells_per_s", "cpu_cells_per_s_1thread", "peak_rss_gib", "quality_cells", "c2st_auc", "wd",
               "wd_ratio_to_floor", "threads", "load1_start", "note"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    table.insert(len(columns) - 1, "cores", cores)
    path = Path(args.csv)
    others = ([path] if args.append and path.exists() else []) + [Path(m) for m in args.merge]
    for other in others:  # keep the rows of other generators from earlier runs
        earlier = pd.read_csv(other, keep_default_na=False, na_values=[""])
        earlier["preset"] = earlier["preset"].fillna("")
        key = set(zip(table["generator"], table["preset"].fillna(""), strict=True))
        keep = [(g, p) not in key for g, p in zip(earlier["generator"], earlier["preset"], strict=True)]
        table = pd.concat([table, earlier[keep]], ignore_index=True).reindex(columns=table.columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 60):
        print()
        print(table.drop(columns=["note"]).to_string(index=False))
        print()
        for _, r in table[table["note"].fillna("") != ""].iterrows():
            print(f"  {r['generator']}:{r['preset']}: {r['note']}")
    title = (f"PBMC3K fold 0, {cores} cores, {args.threads} threads; load average {os.getloadavg()[0]:.1f} "
             f"at the end")
    _plot(table, path.with_suffix(".png"), title)
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
