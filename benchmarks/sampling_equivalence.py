"""The trained ``moe`` default sampled by the fast path and by the previous one: same cells?

Fast path (now): fused attention kernel, one-block-per-pass MADE inverse, chunks of 1024 cells.
Previous path: explicit softmax attention, ``passes`` full-network MADE evaluations, chunks of 128.
For each: CPU seconds for 1000 cells on one thread, and the honest-protocol C2ST AUC and WD (vs half
A of the test cells) of |B| cells with B's type counts; then the largest difference between the two
sets of cells (same seeds). Needs ``make run`` (``data/06_models/pbmc3k/moe/fold_0``).

Usage::

    python benchmarks/sampling_equivalence.py
"""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd
    import torch
    from threadpoolctl import threadpool_limits

    from cellsynth.evaluation.protocol import cell_labels, fit_reference_space, project
    from cellsynth.generators import GENERATORS
    from cellsynth.generators.moe import modules as moe_module
    from cellsynth.metrics import c2st_auc, split_halves, wd

    torch.set_num_threads(1)
    threadpool_limits(1)
    fold = ROOT / "data" / "05_model_input" / "pbmc3k" / "fold_0"
    train, test = ad.read_h5ad(fold / "train.h5ad"), ad.read_h5ad(fold / "test.h5ad")
    model = GENERATORS["moe"].load(ROOT / "data" / "06_models" / "pbmc3k" / "moe" / "fold_0")
    space = fit_reference_space(train)
    z_test = project(space, test)
    idx_a, idx_b = split_halves(cell_labels(test), 0)
    counts = pd.Series(cell_labels(test)[idx_b]).value_counts().to_dict()

    def run(tag: str) -> np.ndarray:
        cpu0 = time.process_time()
        model.sample(1000, seed=2)
        cpu = time.process_time() - cpu0
        cells = model.sample(len(idx_b), cell_types=counts, seed=10_000)
        z = project(space, cells)
        print(f"{tag}: 1000 cells in {cpu:.3f} CPU s (1 thread); C2ST {c2st_auc(z_test[idx_a], z, seed=0):.4f}, "
              f"WD {wd(z_test[idx_a], z):.4f}", flush=True)
        return cells.X

    fast = run("fast path")
    moe_module.BlockMADE.inverse = moe_module.BlockMADE.inverse_reference
    moe_module.MultiExpertAttention._attend_fused = moe_module.MultiExpertAttention._attend
    moe_module.MOEFlow.sample.__defaults__ = (128,)
    previous = run("previous path")
    diff = np.abs(fast - previous)
    print(f"max |fast - previous| = {diff.max():.3g}; cells differing by > 1e-3: {int((diff.max(1) > 1e-3).sum())}")


if __name__ == "__main__":
    main()
