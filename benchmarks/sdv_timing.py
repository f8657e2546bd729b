"""Time the SDV generators (and the sanity baselines) on PBMC3K: 2000 HVGs, 80% of the labelled cells.

Usage::

    python benchmarks/sdv_timing.py [--models gaussian_copula ctgan tvae ...] [--epochs 1]
        [--n-sample 500] [--threads 1] [--out timings.json]

Preprocessing is deliberately short (no QC filtering): cells without a Seurat annotation dropped,
2000 ``seurat_v3`` HVGs on the counts, ``normalize_total(1e4)`` + ``log1p`` on all genes, then the
HVG subset and a seeded 80% split. Reports wall and CPU seconds of ``fit`` (CTGAN/TVAE with
``--epochs`` epochs; the Gaussian copula has none) and of a conditional ``sample`` of ``--n-sample``
cells in training proportions, plus the size of the saved model. CPU seconds are this process's
only (CTGAN's data transformer also runs joblib workers when transforming more than 500 rows);
on a shared machine they are the more stable number.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

RAW = Path(__file__).resolve().parents[1] / "data" / "01_raw" / "pbmc3k_counts.h5ad"


def load_pbmc3k(n_hvgs: int = 2000, train_fraction: float = 0.8, seed: int = 0):
    import anndata as ad
    import scanpy as sc

    adata = ad.read_h5ad(RAW)
    adata = adata[~adata.obs["seurat_annotations"].isna()].copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.highly_variable_genes(adata, n_top_genes=n_hvgs, flavor="seurat_v3", layer="counts")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata = adata[:, adata.var["highly_variable"]].copy()
    del adata.layers["counts"]
    adata.obs["cell_type"] = adata.obs["seurat_annotations"].astype(str)
    keep = np.sort(np.random.default_rng(seed).permutation(adata.n_obs)[: int(train_fraction * adata.n_obs)])
    return adata[keep].copy()


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gaussian_copula", "ctgan", "tvae"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--n-sample", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from cellsynth.generators import GENERATORS

    if args.threads:
        torch.set_num_threads(args.threads)
    adata = load_pbmc3k()
    print(f"data: {adata.n_obs} cells x {adata.n_vars} genes, {adata.obs['cell_type'].nunique()} types", flush=True)
    results = []
    for name in args.models:
        cls = GENERATORS[name]
        params = {"epochs": args.epochs} if "epochs" in {f for f in cls.Params.__dataclass_fields__} else {}
        model = cls(label_key="cell_type", **params)
        history, fit_wall, fit_cpu = _timed(lambda m=model: m.fit(adata, seed=0, progress=args.progress))
        print(json.dumps({"model": name, "fit_wall_s": fit_wall, "fit_cpu_s": fit_cpu}), flush=True)
        synth, sample_wall, sample_cpu = _timed(lambda m=model: m.sample(args.n_sample, seed=0))
        with tempfile.TemporaryDirectory() as tmp:
            model.save(tmp)
            size_mb = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 2**20
        row = {
            "model": name,
            "params": params,
            "cells": adata.n_obs,
            "genes": adata.n_vars,
            "fit_wall_s": fit_wall,
            "fit_cpu_s": fit_cpu,
            "sample_n": args.n_sample,
            "sample_wall_s": sample_wall,
            "sample_cpu_s": sample_cpu,
            "saved_mb": round(size_mb, 1),
            "train_loss": history.train_loss[-3:],
            "sampled_types": synth.obs["cell_type"].value_counts().to_dict(),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
