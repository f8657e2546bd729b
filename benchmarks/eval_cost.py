"""Cost of the evaluation: every metric of one generator × fold, and of the metrics at large n.

Part 1 (PBMC3K): with the fold's cells (``data/05_model_input/pbmc3k/fold_0``) and a generator's saved
``matched`` cells (``data/07_model_output/pbmc3k/<generator>/fold_0/synthetic.h5ad``, from ``make run``),
times the evaluation's own functions: :func:`~cellsynth.evaluation.protocol.fit_reference_space`,
:func:`~cellsynth.evaluation.protocol.real_metrics` (the floor, once per fold) and
:func:`~cellsynth.evaluation.protocol.generator_metrics` (paper, upsample, honest and per-type
rows, C2ST included), and then each metric of :func:`cellsynth.metrics.compare` on its own
(honest protocol, all cells).

Part 2 (``--large N``): :func:`cellsynth.metrics.compare` on two random sets of N cells × 50
dimensions (plus N training cells for the memorisation score), with the process's peak RSS: the
kernel and k-NN computations run in blocks, so memory stays far below an N × N matrix
(N² × 8 bytes: 18.6 GiB at N = 50,000). Sets above ``--mmd-max-cells`` (default 20,000, the
evaluation's ``mmd_max_cells``) enter the MMDs as a seeded subsample, as in the pipeline.

Usage::

    python benchmarks/eval_cost.py [--generator maf] [--large 10000 50000] [--mmd-max-cells 20000]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(label: str, fn, rows: list):
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    rows.append({"step": label, "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - cpu0, 2)})
    print(rows[-1], flush=True)
    return out


def pbmc3k(generator: str, rows: list) -> None:
    import anndata as ad

    from cellsynth.evaluation import protocol as P
    from cellsynth.metrics import beyond, paper

    fold = ROOT / "data" / "05_model_input" / "pbmc3k" / "fold_0"
    train, test = ad.read_h5ad(fold / "train.h5ad"), ad.read_h5ad(fold / "test.h5ad")
    out = ROOT / "data" / "07_model_output" / "pbmc3k" / generator / "fold_0"
    synthetic, upsample = ad.read_h5ad(out / "synthetic.h5ad"), ad.read_h5ad(out / "upsample.h5ad")
    settings = P.EvaluationSettings()
    space = _timed("fit_reference_space", lambda: P.fit_reference_space(train, settings.n_pca, settings.seed), rows)
    split = P.honest_split_frame(test, settings.seed, 0)
    floor = _timed("real_metrics (floor, once per fold)",
                   lambda: P.real_metrics(train, test, space, split, settings, dataset="pbmc3k", fold=0), rows)
    _timed(f"generator_metrics ({generator}, all rows)",
           lambda: P.generator_metrics(train, test, synthetic, upsample, space, split, floor, settings,
                                       dataset="pbmc3k", generator=generator, fold=0), rows)
    z_train, z_test, z_synth = P.project(space, train), P.project(space, test), P.project(space, synthetic)
    a, _ = P.halves_from_split(split, test)
    ref = z_test[a]
    for name, fn in [
        ("  wd", lambda: paper.wd(ref, z_synth)),
        ("  cd", lambda: paper.cd(ref, z_synth)),
        ("  mmd (biased)", lambda: paper.mmd_biased(ref, z_synth)),
        ("  mmd_unbiased", lambda: beyond.mmd_unbiased(ref, z_synth)),
        ("  c2st_auc", lambda: beyond.c2st_auc(ref, z_synth, seed=0)),
        ("  knn_precision_recall", lambda: beyond.knn_precision_recall(ref, z_synth)),
        ("  memorization_score", lambda: beyond.memorization_score(z_synth, z_train, ref)),
    ]:
        _timed(name, fn, rows)


def large(n: int, rows: list, mmd_max_cells: int | None) -> None:
    import numpy as np

    from cellsynth.metrics import compare

    rng = np.random.default_rng(0)
    a, b, train = (rng.normal(size=(n, 50)) for _ in range(3))
    b[:, 0] += 0.2
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    label = f"compare() at {n} vs {n} cells (+{n} train), all metrics, mmd_max_cells={mmd_max_cells}"
    _timed(label, lambda: compare(a, b, train=train, mmd_max_cells=mmd_max_cells), rows)
    rows[-1]["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    rows[-1]["rss_before_gib"] = round(before, 3)
    rows[-1]["nxn_matrix_gib"] = round(n * n * 8 / 2**30, 2)
    print(rows[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="maf")
    parser.add_argument("--large", type=int, nargs="*", default=[])
    parser.add_argument("--skip-pbmc3k", action="store_true")
    from cellsynth.evaluation import EvaluationSettings

    parser.add_argument("--mmd-max-cells", type=lambda v: None if v == "none" else int(v),
                        default=EvaluationSettings().mmd_max_cells,
                        help="the evaluation's MMD cap for --large (default: as shipped; 'none': all cells)")
    args = parser.parse_args()
    import pandas as pd

    rows: list = []
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)
    if not args.skip_pbmc3k:
        pbmc3k(args.generator, rows)
    for n in args.large:
        large(n, rows, args.mmd_max_cells)
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
