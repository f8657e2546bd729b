"""The QC figure: each dataset's per-cell distributions with the thresholds that were applied.

Shows what the data-driven thresholds were chosen from (detected genes, library size and, when the file
has mitochondrial genes, the mitochondrial %), one row per dataset.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from cellsynth.reporting.figures import new_figure

__all__ = ["plot_qc_distributions"]

_PANELS = (
    ("n_genes", "detected genes per cell", True, ("min_genes", "max_genes", "mad_min_genes", "mad_max_genes")),
    ("total_counts", "library size (counts per cell)", True, ("mad_min_counts", "mad_max_counts")),
    ("pct_counts_mt", "mitochondrial %", False, ("max_pct_mito", "mad_max_pct_mito")),
)


def plot_qc_distributions(metrics: Mapping[str, pd.DataFrame], thresholds: Mapping[str, Mapping[str, float]],
                          mito_genes: Mapping[str, bool] | None = None) -> Figure:
    """Histograms of the QC metrics of every input cell, one row per dataset, thresholds as lines.

    Parameters
    ----------
    metrics
        Dataset name → per-cell ``n_genes``, ``total_counts``, ``pct_counts_mt`` (:func:`qc_input_metrics`).
    thresholds
        Dataset name → the thresholds applied (``uns["qc"]["thresholds"]`` of the QC'd cells): fixed ones
        (``min_genes``, ``max_genes``, ``max_pct_mito``) drawn black, data-driven ones (``mad_*``) red.
    mito_genes
        Dataset name → whether the file has mitochondrial genes; the mitochondrial column is drawn only
        when one has.
    """
    names = list(metrics)
    mito_genes = dict(mito_genes or {})
    panels = [p for p in _PANELS if p[0] != "pct_counts_mt" or any(mito_genes.values())]
    fig = new_figure(4.2 * len(panels), 2.6 * max(len(names), 1))
    axes = np.atleast_2d(fig.subplots(max(len(names), 1), len(panels), squeeze=False))
    for row, name in enumerate(names):
        cells = metrics[name]
        applied = thresholds.get(name, {})
        for col, (column, label, log_scale, keys) in enumerate(panels):
            ax = axes[row, col]
            values = cells[column].to_numpy(dtype=float)
            if log_scale:
                positive = values[values > 0]
                bins = np.geomspace(max(positive.min(), 1.0), positive.max() * 1.05, 60) if positive.size else 60
                ax.hist(positive, bins=bins, color="#7f9fbf")
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            else:
                ax.hist(values, bins=60, color="#7f9fbf")
            for key in keys:
                if applied.get(key) is None:
                    continue
                data_driven = key.startswith("mad_")
                ax.axvline(applied[key], color="#c0392b" if data_driven else "black", linestyle="--", linewidth=1.2)
            kept = np.ones(len(values), dtype=bool)
            for key in keys:
                value = applied.get(key)
                if value is None:
                    continue
                if key.startswith(("min_", "mad_min_")):
                    kept &= values >= value
                elif key == "max_genes" or key == "max_pct_mito":
                    kept &= values < value
                else:
                    kept &= values <= value
            ax.set_title(f"{name}: {label}\n{int((~kept).sum())} of {len(values)} cells outside", fontsize=9)
            ax.set_ylabel("cells", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("QC distributions (all input cells); dashed: thresholds applied (black fixed, red median ± k MAD)",
                 fontsize=10)
    return fig
