"""Nodes of the ``generation`` pipeline: how many cells of each type, then fit and sample one generator."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from anndata import AnnData

from cellsynth import provenance
from cellsynth.config import GenerationSettings
from cellsynth.generators import GENERATORS, Generator, PerTypeGenerator, matched_counts, q3_upsample_counts
from cellsynth.profiling import measure
from cellsynth.schema import LABEL_KEY

log = logging.getLogger(__name__)


def resolve_hyperparameters(presets: dict[str, Any], generator: str, preset: str) -> dict[str, Any]:
    """Hyperparameters of ``generator`` under ``preset`` (falls back to the generator's ``default``)."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; known: {sorted(GENERATORS)}")
    choices = presets.get(generator, {}) or {}
    if preset in choices:
        return dict(choices[preset] or {})
    return dict(choices.get("default", {}) or {})


def build_generator(generator: str, hyperparameters: dict[str, Any], strategy: str) -> Generator:
    """The model to fit: one model conditioned on cell type, or one model per cell type (``per_type``)."""
    cls = GENERATORS[generator]
    if strategy == "per_type":
        return PerTypeGenerator(cls, label_key=LABEL_KEY, **hyperparameters)
    model = cls(label_key=LABEL_KEY, **hyperparameters)
    if not model.conditional:
        raise ValueError(
            f"{generator}: this preset is unconditional (conditional: false), so one model cannot sample "
            "chosen cell types; set generation.strategy: per_type (one model per type, as the paper does)"
        )
    return model


def fold_seed(generation: GenerationSettings, fold: int) -> int:
    """The fit seed of every generator on ``fold`` (sampling seeds derive from it)."""
    return generation.seed + int(fold)


def plan_generation(train: AnnData, test: AnnData, generation: dict[str, Any], *, fold: int) -> dict[str, dict[str, int]]:
    """Cells per type of each generation mode, the same for every generator of the fold.

    ``matched`` (the PBMC3K protocol): as many cells as the test set, in training proportions
    (only the test set's size is read). ``upsample`` (the paper's Q3 rule): each type below Q3 of
    the training type sizes gets Q3 − count cells.
    """
    settings = GenerationSettings.from_params(generation)
    type_counts = train.obs[LABEL_KEY].astype(str).value_counts().to_dict()
    return {
        "matched": matched_counts(type_counts, test.n_obs, seed=fold_seed(settings, fold)),
        "upsample": q3_upsample_counts(type_counts),
    }


def generate_cells(
    train: AnnData,
    plan: dict[str, dict[str, int]],
    generation: dict[str, Any],
    generator_presets: dict[str, Any],
    *,
    generator: str,
    fold: int,
) -> tuple[Generator, pd.DataFrame, AnnData, AnnData, dict[str, Any]]:
    """Fit ``generator`` on the fold's training cells and sample both generation modes of ``plan``.

    Reads ``train.X`` (log-normalised HVGs) and ``obs["cell_type"]``. Returns the fitted model, its
    training history, the ``matched`` and the ``upsample`` cells (both from the same fit; their
    ``uns["cellsynth"]`` records generator, fold, mode, seed and timings), and the run record (the
    hyperparameters and timings, which the tracking hook logs into the generator × fold MLflow run).
    """
    settings = GenerationSettings.from_params(generation)
    seed = fold_seed(settings, fold)
    model = build_generator(generator, resolve_hyperparameters(generator_presets, generator, settings.preset),
                            settings.strategy)
    n_cells = {mode: int(sum(counts.values())) for mode, counts in plan.items()}
    log.info("%s fold %d: fitting on %d cells × %d genes (%s strategy, %s preset); will sample %s",
             generator, fold, train.n_obs, train.n_vars, settings.strategy, settings.preset, n_cells)
    with measure() as fitting:
        history = model.fit(train, seed=seed, progress=settings.progress)
    with measure() as sampling:
        synthetic = model.sample(n_cells["matched"], cell_types=plan["matched"], seed=seed + 10_000)
    upsample = model.sample(n_cells["upsample"], cell_types=plan["upsample"], seed=seed + 20_000)
    timings = {
        "fit_seconds": fitting.seconds,
        "sample_seconds": sampling.seconds,
        "sample_cells_per_second": n_cells["matched"] / max(sampling.seconds, 1e-9),
        "peak_rss_gib_fit": fitting.peak_rss_gib,
        "peak_rss_gib_sample": sampling.peak_rss_gib,
        "epochs_run": float(len(history.train_loss)),
    }
    if history.train_loss:
        timings |= {"train_loss_first": history.train_loss[0], "train_loss_last": history.train_loss[-1]}
    timings = {key: float(value) for key, value in timings.items()}
    log.info("%s fold %d: fit %.1f s (%d epochs), sampled %d cells in %.2f s, peak RSS %.2f GiB",
             generator, fold, fitting.seconds, len(history.train_loss), n_cells["matched"], sampling.seconds,
             max(fitting.peak_rss_gib, sampling.peak_rss_gib))

    run = {"generator": generator, "fold": int(fold), "strategy": settings.strategy, "preset": settings.preset,
           "seed": seed}
    record = provenance.with_sections(
        provenance.record_of(train), generation=provenance.generation_section(generation, generator_presets, generator))
    for mode, cells in (("matched", synthetic), ("upsample", upsample)):
        cells.uns["cellsynth"] = {**run, "mode": mode, **timings}
        provenance.stamp(cells, record)
    record = {
        "params": {**run, "n_train_cells": train.n_obs, "n_genes": train.n_vars,
                   "n_matched_cells": n_cells["matched"], "n_upsample_cells": n_cells["upsample"],
                   **{f"hp.{k}": v for k, v in model.hyperparameters().items()}},
        "timings": timings,
    }
    frame = history.to_frame()
    frame.insert(0, "fold", int(fold))
    frame.insert(0, "generator", generator)
    return model, frame, synthetic, upsample, record
