"""PBMC3K fold 0 as ``make run`` writes it, and the fair protocol's scores on it, for the benchmarks
that score count-generator variants (``count_ablation.py``, ``temperature_sweep.py``)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLD_DIR = ROOT / "data" / "05_model_input" / "pbmc3k" / "fold_0"


def load_fold(threads: int):
    """``(train, test, matched_plan)`` of the fold, with torch and BLAS limited to ``threads``; exits
    with a message when ``make run`` has not written the fold yet."""
    if not (FOLD_DIR / "train.h5ad").exists():
        raise SystemExit(f"{FOLD_DIR} has no train.h5ad: run `make run` first")
    import anndata as ad
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    train, test = ad.read_h5ad(FOLD_DIR / "train.h5ad"), ad.read_h5ad(FOLD_DIR / "test.h5ad")
    plan = json.loads((FOLD_DIR / "generation_plan.json").read_text())["matched"]
    return train, test, plan


def fair_scores(train, test, cells, name: str, settings) -> dict[tuple[str, str], float]:
    """The evaluation's fair protocol of ``cells`` (``None``: the floor) against the test cells,
    ``(protocol, metric) -> value``."""
    from cellsynth.evaluation.fair import fair_metrics

    table = fair_metrics(train, test, cells, settings, dataset="pbmc3k", fold=0, generator=name)
    return {key: float(value) for key, value in table.set_index(["protocol", "metric"])["value"].items()}
