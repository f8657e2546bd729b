"""Compare the outputs of two project folders (e.g. a clone before and after a change): same cells, same numbers?

    python scripts/compare_runs.py BEFORE_DIR AFTER_DIR [--fold 0] [--dataset pbmc3k]

Prints one row per compared object (synthetic and up-sampling cells of every generator found in both,
the long metrics table, the marker-preservation and interaction tables) with the largest absolute
difference, and exits 1 if anything differs. Timing rows (protocol ``run``) are left out: they are
measurements of the machine, not results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

METRIC_KEY = ["dataset", "generator", "fold", "protocol", "cell_type", "metric"]


def _max_difference(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    return float(np.nanmax(np.where(both_nan, 0.0, np.abs(a - b)), initial=0.0))


def compare_cells(before: Path, after: Path, fold: int, dataset: str) -> list[dict]:
    rows = []
    generators = sorted({p.parent.parent.name for p in before.glob(f"data/07_model_output/{dataset}/*/fold_{fold}/synthetic.h5ad")}
                        & {p.parent.parent.name for p in after.glob(f"data/07_model_output/{dataset}/*/fold_{fold}/synthetic.h5ad")})
    for generator in generators:
        for name in ("synthetic", "upsample"):
            relative = Path("data/07_model_output") / dataset / generator / f"fold_{fold}" / f"{name}.h5ad"
            x, y = ad.read_h5ad(before / relative), ad.read_h5ad(after / relative)
            same_shape = x.shape == y.shape and list(x.var_names) == list(y.var_names)
            labels = same_shape and (x.obs["cell_type"].astype(str).to_numpy() == y.obs["cell_type"].astype(str).to_numpy()).all()
            identical = bool(same_shape and labels and np.array_equal(np.asarray(x.X), np.asarray(y.X)))
            rows.append({"object": f"{generator} {name}", "n": x.n_obs, "identical": identical,
                         "max_abs_difference": _max_difference(x.X, y.X) if same_shape else float("nan")})
    return rows


def compare_metrics(before: Path, after: Path, dataset: str) -> list[dict]:
    x = pd.read_parquet(before / "data/08_reporting" / dataset / "metrics.parquet")
    y = pd.read_parquet(after / "data/08_reporting" / dataset / "metrics.parquet")
    x, y = (f[f["protocol"] != "run"].set_index(METRIC_KEY)["value"].sort_index() for f in (x, y))
    same_rows = x.index.equals(y.index)
    difference = _max_difference(x.to_numpy(), y.reindex(x.index).to_numpy())
    identical = bool(same_rows and np.array_equal(x.to_numpy(), y.to_numpy(), equal_nan=True))
    return [{"object": "metrics.parquet (all but run rows)", "n": len(x), "identical": identical,
             "max_abs_difference": difference}]


def compare_tables(before: Path, after: Path, dataset: str) -> list[dict]:
    rows = []
    for name in ("marker_preservation.csv", "interactions_rmse.csv"):
        if not ((before / "data/08_reporting" / dataset / name).is_file() and (after / "data/08_reporting" / dataset / name).is_file()):
            continue
        x, y = (pd.read_csv(d / "data/08_reporting" / dataset / name) for d in (before, after))
        numeric = [c for c in x.columns if pd.api.types.is_numeric_dtype(x[c]) and c in y.columns]
        identical = x.shape == y.shape and x.equals(y)
        rows.append({"object": name, "n": len(x), "identical": bool(identical),
                     "max_abs_difference": _max_difference(x[numeric].to_numpy(), y[numeric].to_numpy())
                     if x.shape == y.shape else float("nan")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--dataset", default="pbmc3k", help="dataset.name of the runs (outputs under data/<layer>/<name>/)")
    args = parser.parse_args()
    rows = (compare_cells(args.before, args.after, args.fold, args.dataset)
            + compare_metrics(args.before, args.after, args.dataset) + compare_tables(args.before, args.after, args.dataset))
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    sys.exit(0 if table["identical"].all() else 1)


if __name__ == "__main__":
    main()
