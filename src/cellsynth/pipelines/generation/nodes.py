"""Nodes of the ``generation`` pipeline: fit one generator on one fold, sample, track in MLflow."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import pandas as pd
from anndata import AnnData

from cellsynth.generators import GENERATORS, Generator
from cellsynth.generators.modes import PerTypeGenerator, matched_counts, q3_upsample_counts
from cellsynth.profiling import measure
from cellsynth.tracking import child_run

log = logging.getLogger(__name__)

LABEL_KEY = "cell_type"


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
    if strategy not in {"conditional", "per_type"}:
        raise ValueError(f"generation.strategy must be 'conditional' or 'per_type', got {strategy!r}")
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


def cells_to_generate(train: AnnData, test: AnnData, mode: str, seed: int) -> dict[str, int]:
    """Cells per type of one generation mode.

    ``matched`` (the PBMC3K protocol): as many cells as the test set, in training proportions.
    ``upsample`` (the paper's Q3 rule): each type below Q3 of the training type sizes gets
    Q3 − count cells.
    """
    type_counts = train.obs[LABEL_KEY].astype(str).value_counts().to_dict()
    if mode == "matched":
        return matched_counts(type_counts, test.n_obs, seed=seed)
    if mode == "upsample":
        return q3_upsample_counts(type_counts)
    raise ValueError(f"generation mode must be 'matched' or 'upsample', got {mode!r}")


def generate_cells(
    train: AnnData,
    test: AnnData,
    generation: dict[str, Any],
    generator_presets: dict[str, Any],
    *,
    generator: str,
    fold: int,
) -> tuple[Generator, pd.DataFrame, AnnData, AnnData]:
    """Fit ``generator`` on the fold's training cells and sample both generation modes.

    Reads ``train.X`` (log-normalised HVGs) and ``obs["cell_type"]``; of the test cells only their
    number is used. Returns the fitted model, its training history, the ``matched`` cells
    (n = test size, training proportions) and the ``upsample`` cells (the Q3 rule), both sampled
    from the same fit. Logs a child MLflow run with every hyperparameter, the loss per epoch, the
    checkpoint, fit and sampling time and peak memory.
    """
    strategy = generation.get("strategy", "conditional")
    preset = generation.get("preset", "default")
    seed = int(generation["seed"]) + int(fold)
    hyperparameters = resolve_hyperparameters(generator_presets, generator, preset)
    model = build_generator(generator, hyperparameters, strategy)
    requests = {mode: cells_to_generate(train, test, mode, seed) for mode in ("matched", "upsample")}
    n_cells = {mode: int(sum(counts.values())) for mode, counts in requests.items()}
    log.info("%s fold %d: fitting on %d cells × %d genes (%s strategy, %s preset); will sample %s",
             generator, fold, train.n_obs, train.n_vars, strategy, preset, n_cells)

    tags = {"generator": generator, "fold": str(fold), "strategy": strategy, "preset": preset, "cellsynth.role": "generator"}
    with child_run(f"{generator} fold {fold}", tags=tags) as run:
        run.log_params(
            {"generator": generator, "fold": fold, "strategy": strategy, "preset": preset, "seed": seed,
             "n_train_cells": train.n_obs, "n_genes": train.n_vars,
             "n_matched_cells": n_cells["matched"], "n_upsample_cells": n_cells["upsample"],
             **{f"hp.{k}": v for k, v in model.hyperparameters().items()}}
        )
        with measure() as fitting:
            history = model.fit(
                train, seed=seed, progress=bool(generation.get("progress", True)),
                on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
            )
        with measure() as sampling:
            synthetic = model.sample(n_cells["matched"], cell_types=requests["matched"], seed=seed + 10_000)
        upsample = model.sample(n_cells["upsample"], cell_types=requests["upsample"], seed=seed + 20_000)
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
        run.log_metrics(timings)
        if run.run_id:
            with tempfile.TemporaryDirectory() as checkpoint:
                model.save(checkpoint)
                run.log_artifacts(checkpoint, artifact_path="checkpoint")
        log.info("%s fold %d: fit %.1f s (%d epochs), sampled %d cells in %.2f s, peak RSS %.2f GiB",
                 generator, fold, fitting.seconds, len(history.train_loss), n_cells["matched"], sampling.seconds,
                 max(fitting.peak_rss_gib, sampling.peak_rss_gib))

    for mode, cells in (("matched", synthetic), ("upsample", upsample)):
        cells.uns["cellsynth"] = {
            "generator": generator, "fold": int(fold), "mode": mode, "strategy": strategy, "preset": preset,
            "seed": seed, "mlflow_run_id": run.run_id or "", **{k: float(v) for k, v in timings.items()},
        }
    frame = history.to_frame()
    frame.insert(0, "fold", int(fold))
    frame.insert(0, "generator", generator)
    return model, frame, synthetic, upsample
