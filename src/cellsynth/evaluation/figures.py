"""Figures of the evaluation (matplotlib, object-oriented API on the Agg canvas; no pyplot state).

* :func:`plot_reference_pca` — training, test and synthetic cells on PC1/PC2 of the fold's reference
  space, one panel per generator (the paper's Fig 4).
* :func:`plot_metrics_vs_floor` — one panel per honest metric: each generator's bar against the
  real-vs-real floor.
* :func:`plot_training_curves` — per-epoch losses from the generators' training histories.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from cellsynth.evaluation.protocol import (
    ALL_TYPES,
    FLOOR,
    HONEST,
    SANITY_BASELINES,
    project,
    without_nonfinite,
)
from cellsynth.evaluation.tables import METRIC_LABELS, generator_order
from cellsynth.metrics import METRIC_TARGETS, ReferenceSpace
from cellsynth.reporting.figures import grid_shape, new_figure

__all__ = ["plot_metrics_vs_floor", "plot_reference_pca", "plot_training_curves"]

BAR_METRICS = ("wd", "cd", "mmd", "mmd_unbiased", "c2st_auc", "precision", "recall", "memorization")
_MODEL_COLOUR = "#3b6fb6"
_BASELINE_COLOUR = "#a0a0a0"
_FLOOR_COLOUR = "#d62728"


def _subsample(z: np.ndarray, max_cells: int, rng: np.random.Generator) -> np.ndarray:
    if len(z) <= max_cells:
        return z
    return z[np.sort(rng.choice(len(z), max_cells, replace=False))]


def plot_reference_pca(
    train: AnnData,
    test: AnnData,
    synthetic: Mapping[str, AnnData],
    space: ReferenceSpace,
    *,
    fold: int,
    seed: int = 0,
    max_cells: int = 3000,
    clip_quantile: float = 0.005,
) -> Figure:
    """Training (grey), test (blue) and synthetic (red) cells on PC1/PC2 of the reference space.

    One panel per generator (the same training and test cells in each), like the paper's Fig 4.
    At most ``max_cells`` cells of each set are drawn (seeded subsample). The axes span the
    ``clip_quantile`` … ``1 - clip_quantile`` quantiles of the real cells (padded), so that a few extreme
    cells do not squash the rest; 0 shows everything.
    """
    rng = np.random.default_rng(seed)
    z_train = _subsample(project(space, train)[:, :2], max_cells, rng)
    z_test = _subsample(project(space, test)[:, :2], max_cells, rng)
    names = generator_order(synthetic)
    rows, columns = grid_shape(len(names))
    fig = new_figure(3.6 * columns, 3.3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)).ravel()
    ratio = getattr(space, "explained_variance_ratio_", np.full(2, np.nan))
    for ax, name in zip(axes, names, strict=False):
        cells, _ = without_nonfinite(synthetic[name], f"{name} synthetic")
        z_synth = _subsample(project(space, cells)[:, :2], max_cells, rng)
        ax.scatter(z_train[:, 0], z_train[:, 1], s=3, c="#9a9a9a", alpha=0.35, linewidths=0, label="train")
        ax.scatter(z_test[:, 0], z_test[:, 1], s=5, c="#1f77b4", alpha=0.6, linewidths=0, label="test")
        ax.scatter(z_synth[:, 0], z_synth[:, 1], s=5, c="#d62728", alpha=0.6, linewidths=0, label="synthetic")
        ax.set_title(f"{name}{' (sanity)' if name in SANITY_BASELINES else ''}", fontsize=10)
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}%)" if len(ratio) > 0 else "PC1", fontsize=8)
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}%)" if len(ratio) > 1 else "PC2", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    real = np.vstack([z_train, z_test])
    if names and len(real) and 0 < clip_quantile < 0.5:
        # A few extreme cells (e.g. platelets on z-scored rare genes) would squash everyone else.
        low, high = np.quantile(real, clip_quantile, axis=0), np.quantile(real, 1 - clip_quantile, axis=0)
        pad = 0.08 * np.maximum(high - low, 1e-9)
        axes[0].set_xlim(low[0] - pad[0], high[0] + pad[0])
        axes[0].set_ylim(low[1] - pad[1], high[1] + pad[1])
    if names:
        axes[0].legend(loc="best", fontsize=7, markerscale=3, frameon=False)
    view = f"; axes span the central {100 * (1 - 2 * clip_quantile):g}% of real cells" if 0 < clip_quantile < 0.5 else ""
    fig.suptitle(f"Reference space (PCA fitted on real training cells), fold {fold}{view}", fontsize=11)
    return fig


def plot_metrics_vs_floor(metrics: pd.DataFrame, metrics_shown: Sequence[str] = BAR_METRICS) -> Figure:
    """Honest protocol: one panel per metric, generator bars (fold mean ± sd) against the floor.

    The floor (real half B vs half A) is the red dashed line (band: ± sd over folds); C2ST's 0.5 and
    memorisation's 1 are dotted. Sanity baselines are grey.
    """
    honest = metrics[(metrics["protocol"] == HONEST) & (metrics["cell_type"] == ALL_TYPES)]
    shown = [m for m in metrics_shown if (honest["metric"] == m).any()]
    generators = [g for g in generator_order(honest["generator"]) if g != FLOOR]
    rows, columns = grid_shape(len(shown))
    fig = new_figure(3.8 * columns, 3.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, metric in zip(axes, shown, strict=False):
        values = honest[honest["metric"] == metric].groupby("generator")["value"]
        mean, sd = values.mean(), values.std()
        heights = [mean.get(g, np.nan) for g in generators]
        errors = [sd.get(g, np.nan) for g in generators]
        errors = [0.0 if not np.isfinite(e) else e for e in errors]
        colours = [_BASELINE_COLOUR if g in SANITY_BASELINES else _MODEL_COLOUR for g in generators]
        ax.bar(range(len(generators)), heights, yerr=errors if any(errors) else None, color=colours, capsize=2)
        if FLOOR in mean.index:
            floor, floor_sd = mean[FLOOR], sd.get(FLOOR, np.nan)
            ax.axhline(floor, color=_FLOOR_COLOUR, linestyle="--", linewidth=1.2, label="floor (B vs A)")
            if np.isfinite(floor_sd) and floor_sd > 0:
                ax.axhspan(floor - floor_sd, floor + floor_sd, color=_FLOOR_COLOUR, alpha=0.12)
        if metric in METRIC_TARGETS:
            ax.axhline(METRIC_TARGETS[metric], color="black", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(generators)), generators, rotation=45, ha="right", fontsize=7)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    if shown:
        axes[0].legend(loc="best", fontsize=7, frameon=False)
    fig.suptitle("Honest protocol: each generator vs half A of the test cells; red dashed = real floor", fontsize=11)
    return fig


def plot_training_curves(histories: Iterable[pd.DataFrame]) -> Figure:
    """Per-epoch losses (``train_loss`` solid, ``val_loss`` dashed), one panel per generator, one line per fold.

    ``histories`` are training-history tables (``generator, fold, epoch, series, value``); generators
    without epochs (the sanity baselines: empty histories) get no panel. A panel whose values span
    more than 100× their median magnitude (e.g. a diverging validation loss) uses a symlog axis.
    """
    frames = [h for h in histories if h is not None and len(h)]
    history = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["generator", "fold", "epoch", "series", "value"])
    history = history[history["series"].isin(["train_loss", "val_loss"])] if len(history) else history
    names = generator_order(history["generator"].astype(str).unique()) if len(history) else []
    rows, columns = grid_shape(len(names), max_columns=3)
    fig = new_figure(4.2 * columns, 3.0 * rows)
    if not names:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no generator recorded per-epoch losses", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):
        frame = history[history["generator"].astype(str) == name]
        for (fold, series), part in frame.groupby(["fold", "series"], sort=True):
            part = part.sort_values("epoch")
            ax.plot(part["epoch"], part["value"], linestyle="-" if series == "train_loss" else "--",
                    linewidth=1.2, label=f"fold {fold} {series}")
        magnitude = np.abs(frame["value"].to_numpy(dtype=np.float64))
        magnitude = magnitude[np.isfinite(magnitude)]
        scale = float(np.median(magnitude)) if len(magnitude) else 0.0
        if scale > 0 and magnitude.max() > 100 * scale:
            # e.g. a diverging validation loss would flatten the training loss to a line
            ax.set_yscale("symlog", linthresh=scale)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss" + (" (symlog)" if ax.get_yscale() == "symlog" else ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle("Training curves (from the training histories)", fontsize=11)
    return fig
