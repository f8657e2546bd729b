"""Fit the ``moe`` generator on PBMC3K HVGs and report fit time, losses and sampling throughput.

Preprocessing follows the Seurat tutorial as in the seed paper (genes in >= 3 cells, cells with >= 200
genes, n_genes < 2500, mitochondrial % < 5, normalize_total 1e4 + log1p, 2000 ``seurat_v3`` HVGs on
the counts), labels ``obs["seurat_annotations"]`` (cells without one dropped), stratified 80/20 split
with seed 0; the model is fitted on the 80 %.

Usage::

    python benchmarks/moe_pbmc3k.py [--preset default|paper] [--set name=value ...] [--threads N]
"""

from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_pbmc3k(path: Path, n_hvgs: int = 2000):
    import scanpy as sc
    from sklearn.model_selection import train_test_split

    adata = sc.read_h5ad(path)
    adata = adata[~adata.obs["seurat_annotations"].isna()].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.filter_cells(adata, min_genes=200)
    adata.var["mt"] = adata.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    adata = adata[(adata.obs["n_genes_by_counts"] < 2500) & (adata.obs["pct_counts_mt"] < 5)].copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.highly_variable_genes(adata, n_top_genes=n_hvgs, flavor="seurat_v3", layer="counts")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata = adata[:, adata.var["highly_variable"]].copy()
    adata.obs["cell_type"] = adata.obs["seurat_annotations"].astype(str)
    idx = np.arange(adata.n_obs)
    train, test = train_test_split(idx, test_size=0.2, random_state=0, stratify=adata.obs["cell_type"])
    return adata[np.sort(train)].copy(), adata[np.sort(test)].copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "01_raw" / "pbmc3k_counts.h5ad")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="hyperparameter overrides")
    parser.add_argument("--n-sample", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from bench import _presets  # the presets of conf/*/parameters_generation.yml

    from cellsynth.generators.moe import MOEGenerator

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    train, test = load_pbmc3k(args.data)
    print(f"train {train.shape}, test {test.shape}")
    model = MOEGenerator(label_key="cell_type", **{**_presets("moe", args.preset), **overrides})
    history = model.fit(train, seed=0, progress=False,
                        on_epoch=lambda e, m: print(f"  epoch {e:3d} " + " ".join(f"{k}={v:.1f}" for k, v in m.items()),
                                                    flush=True))
    n_params = sum(p.numel() for p in model._flow.parameters())
    started = time.perf_counter()
    synth = model.sample(args.n_sample, seed=0)
    sample_s = time.perf_counter() - started
    print(f"parameters           {n_params:,}")
    print(f"fit seconds          {history.fit_seconds:.1f}")
    print(f"epochs run           {len(history.train_loss)} (best {history.best_epoch}, early stop {history.stopped_early})")
    print(f"train NLL start/end  {history.train_loss[0]:.1f} / {history.train_loss[-1]:.1f}")
    if history.val_loss:
        print(f"val NLL start/best   {history.val_loss[0]:.1f} / {min(history.val_loss):.1f}")
    print(f"sample {args.n_sample} cells     {sample_s:.3f} s ({args.n_sample / sample_s:,.0f} cells/s)")
    real, fake = test.X.toarray() if hasattr(test.X, "toarray") else test.X, synth.X
    print(f"mean |gene mean diff| vs test  {np.abs(real.mean(0) - fake.mean(0)).mean():.4f}")
    print(f"mean |gene std diff|  vs test  {np.abs(real.std(0) - fake.std(0)).mean():.4f}")
    print(f"fraction of zeros    test {np.mean(real == 0):.3f}  synthetic {np.mean(fake == 0):.3f}")
    # rough paper-style numbers (PCA 50 fitted on the training cells); the metrics package is the reference
    from scipy.stats import wasserstein_distance
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    train_x = train.X.toarray() if hasattr(train.X, "toarray") else train.X
    scaler = StandardScaler().fit(train_x)
    pca = PCA(50, random_state=42).fit(scaler.transform(train_x))
    a, b = pca.transform(scaler.transform(real)), pca.transform(scaler.transform(fake))
    wd = np.mean([wasserstein_distance(a[:, i], b[:, i]) for i in range(50)])
    cd = np.abs(np.corrcoef(a.T) - np.corrcoef(b.T)).mean()
    print(f"PCA-50 WD / CD vs test     {wd:.3f} / {cd:.3f}  (synthetic n = {len(fake)}, test n = {len(real)})")


if __name__ == "__main__":
    main()
