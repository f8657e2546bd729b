"""Figures of the downstream analyses (matplotlib, no pyplot state): Figs 5, 6 and 7 of the paper."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from cellsynth.downstream.interactions import KEYS, significant_counts
from cellsynth.reporting.figures import grid_shape, new_figure
from cellsynth.schema import LABEL_KEY

__all__ = ["plot_interaction_dotplot", "plot_interaction_heatmaps", "plot_marker_violins"]

REAL_COLOUR = "#3b75af"
SYNTHETIC_COLOUR = "#c44e52"


def _gene_values(adata: AnnData, gene: str) -> np.ndarray:
    column = adata[:, gene].X
    return np.asarray(column.toarray() if sp.issparse(column) else column, dtype=float).ravel()


def _violin(ax, values: np.ndarray, position: float, width: float, colour: str) -> None:
    """One violin; a constant group is drawn as a bar at its value, a small one also as its points."""
    if len(values) and np.ptp(values) == 0:
        ax.hlines(values[0], position - width / 3, position + width / 3, color=colour, linewidth=2)
    if len(values) >= 3 and np.ptp(values) > 0:
        parts = ax.violinplot([values], positions=[position], widths=width, showextrema=False, showmedians=True)
        for body in parts["bodies"]:
            body.set_facecolor(colour)
            body.set_edgecolor("black")
            body.set_linewidth(0.4)
            body.set_alpha(0.75)
        parts["cmedians"].set_color("black")
        parts["cmedians"].set_linewidth(0.8)
    if 0 < len(values) < 20:  # few cells: show them
        jitter = np.linspace(-width / 4, width / 4, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(position + jitter, values, s=5, color=colour, edgecolors="black", linewidths=0.2, zorder=3)


def plot_marker_violins(
    markers: Mapping[str, str],
    real: AnnData,
    synthetic: AnnData | None = None,
    *,
    label_key: str = LABEL_KEY,
    title: str = "",
    real_name: str = "real",
    synthetic_name: str = "synthetic",
    max_columns: int = 3,
) -> Figure:
    """Violin plots of each type's top marker across all cell types (the paper's Fig 5).

    One panel per (type, marker gene); x = cell types, y = log-normalised expression. With
    ``synthetic``, each cell type shows two violins: ``real`` (blue, left) and ``synthetic`` (red,
    right), so a generator's marker expression can be read against the real one.
    """
    genes = [(t, g) for t, g in markers.items() if g in real.var_names]
    types = sorted(set(real.obs[label_key].astype(str)) | (set(synthetic.obs[label_key].astype(str))
                                                             if synthetic is not None else set()))
    rows, columns = grid_shape(len(genes), max_columns)
    width = max(3.2, 0.45 * len(types) * (1.6 if synthetic is not None else 1.0))
    fig = new_figure(width * columns, 2.7 * rows + 0.5)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    real_labels = real.obs[label_key].astype(str).to_numpy()
    syn_labels = synthetic.obs[label_key].astype(str).to_numpy() if synthetic is not None else None
    for ax, (cell_type, gene) in zip(axes, genes, strict=False):
        real_values = _gene_values(real, gene)
        syn_values = _gene_values(synthetic, gene) if synthetic is not None else None
        for i, t in enumerate(types):
            if synthetic is None:
                _violin(ax, real_values[real_labels == t], i, 0.8, REAL_COLOUR)
            else:
                _violin(ax, real_values[real_labels == t], i - 0.2, 0.38, REAL_COLOUR)
                _violin(ax, syn_values[syn_labels == t], i + 0.2, 0.38, SYNTHETIC_COLOUR)
        ax.set_title(f"{gene} ({cell_type})", fontsize=9)
        ax.set_xticks(range(len(types)), types, rotation=45, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(types) - 0.4)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel("log-normalised expression", fontsize=7)
        highlight = types.index(cell_type) if cell_type in types else None
        if highlight is not None:
            ax.axvspan(highlight - 0.5, highlight + 0.5, color="#f2e6a0", alpha=0.5, zorder=0)
    for ax in axes[len(genes):]:
        ax.set_visible(False)
    if synthetic is not None and genes:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color=REAL_COLOUR, label=real_name), Patch(color=SYNTHETIC_COLOUR, label=synthetic_name)],
                   loc="outside upper right", fontsize=8, ncols=2)
    if not genes:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no mutually exclusive marker found", ha="center", va="center")
        axes[0].set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig


def plot_interaction_heatmaps(tables: Mapping[str, pd.DataFrame], *, title: str = "",
                              max_columns: int = 4) -> Figure:
    """Number of significant interactions between cell types, one heatmap per cell set (Fig 6).

    Rows: source (ligand) type; columns: target (receptor) type; one colour scale for all panels
    (sets with more cells reach more significant pairs, as the paper notes); grey: a type not
    analysed in that set (too few cells).
    """
    types = sorted(set().union(*[set(t["source"]) | set(t["target"]) for t in tables.values()])) if tables else []
    counts = {name: significant_counts(table, types) for name, table in tables.items()}
    vmax = max([float(np.nanmax(c.to_numpy())) for c in counts.values() if np.isfinite(c.to_numpy()).any()] or [1.0])
    rows, columns = grid_shape(len(counts), max_columns)
    side = 0.42 * len(types) + 1.6
    fig = new_figure(side * columns + 0.8, side * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False)
    norm = Normalize(vmin=0, vmax=max(vmax, 1.0))
    image = None
    for ax, (name, matrix) in zip(axes.ravel(), counts.items(), strict=False):
        values = np.ma.masked_invalid(matrix.to_numpy(dtype=float))
        cmap = _coolwarm()
        image = ax.imshow(values, cmap=cmap, norm=norm, aspect="equal")
        for (i, j), v in np.ndenumerate(matrix.to_numpy(dtype=float)):
            if np.isfinite(v):
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=6,
                        color="white" if v > 0.65 * norm.vmax or v < 0.15 * norm.vmax else "black")
        ax.set_xticks(range(len(types)), types, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(types)), types, fontsize=7)
        total = int(np.nansum(matrix.to_numpy(dtype=float)))
        ax.set_title(f"{name}\n{total} significant", fontsize=8)
        ax.set_xlabel("target (receptor)", fontsize=7)
        ax.set_ylabel("source (ligand)", fontsize=7)
    for ax in axes.ravel()[len(counts):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="significant interactions")
    fig.suptitle(title, fontsize=10)
    return fig


def _coolwarm():
    from matplotlib import colormaps

    return colormaps["coolwarm"].with_extremes(bad="#dddddd")


def select_dotplot_rows(reference: pd.DataFrame, n_pairs: int = 15, n_celltype_pairs: int = 12
                        ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The strongest ligand–receptor pairs of ``reference`` and the cell-type pairs to show them on.

    L–R pairs: the ``n_pairs`` with the highest interaction mean among significant interactions;
    cell-type pairs: the ``n_celltype_pairs`` holding most of those pairs' significant interactions.
    """
    significant = reference[reference["significant"]]
    if significant.empty:
        return [], []
    strongest = (significant.groupby(["ligand_complex", "receptor_complex"])["lr_means"].max()
                 .sort_values(ascending=False).head(int(n_pairs)))
    lr_pairs = list(strongest.index)
    chosen = significant.set_index(["ligand_complex", "receptor_complex"]).loc[lr_pairs].reset_index()
    celltype_pairs = (chosen.groupby(["source", "target"]).size().sort_values(ascending=False, kind="stable")
                      .head(int(n_celltype_pairs)))
    return lr_pairs, sorted(celltype_pairs.index)


def plot_interaction_dotplot(tables: Mapping[str, pd.DataFrame], reference: str, *, n_pairs: int = 15,
                             n_celltype_pairs: int = 12, title: str = "", max_columns: int = 3) -> Figure:
    """Dot plot of the strongest ligand–receptor pairs (Fig 7), the same rows and columns in every panel.

    Rows and columns are chosen on ``tables[reference]`` (:func:`select_dotplot_rows`); every set is
    drawn on them. Colour: interaction mean (one scale); size: −log10 p (p floored at 1/1000);
    black edge: significant. No dot: interaction mean 0 (a partner not detected), pair not measured,
    or type not analysed in that set.
    """
    lr_pairs, celltype_pairs = select_dotplot_rows(tables[reference], n_pairs, n_celltype_pairs)
    names = list(tables)
    rows, columns = grid_shape(len(names), max_columns)
    width = 0.32 * max(len(celltype_pairs), 4) + 2.6
    height = 0.26 * max(len(lr_pairs), 4) + 2.2
    fig = new_figure(width * columns + 1.0, height * rows)
    axes = fig.subplots(rows, columns, squeeze=False)
    values = [t.set_index(KEYS).reindex([(lig, rec, s, tg) for lig, rec in lr_pairs for s, tg in celltype_pairs])
              for t in tables.values()]
    vmax = max([float(v["lr_means"].max()) for v in values if v["lr_means"].notna().any()] or [1.0])
    norm = Normalize(vmin=0, vmax=vmax)
    scatter = None
    for ax, name, frame in zip(axes.ravel(), names, values, strict=False):
        xs, ys, colours, sizes, edges = [], [], [], [], []
        for (lig, rec, s, tg), row in frame.iterrows():
            if pd.isna(row["lr_means"]) or row["lr_means"] <= 0:
                continue
            xs.append(celltype_pairs.index((s, tg)))
            ys.append(lr_pairs.index((lig, rec)))
            colours.append(row["lr_means"])
            sizes.append(8 + 22 * min(3.0, -math.log10(max(float(row["cellphone_pvals"]), 1e-3))))
            edges.append("black" if bool(row["significant"]) else "none")
        scatter = ax.scatter(xs, ys, c=colours, s=sizes, cmap="viridis", norm=norm, edgecolors=edges, linewidths=0.6)
        ax.set_xticks(range(len(celltype_pairs)), [f"{s} → {t}" for s, t in celltype_pairs], rotation=70,
                      ha="right", fontsize=6)
        ax.set_yticks(range(len(lr_pairs)), [f"{lig} → {rec}" for lig, rec in lr_pairs], fontsize=6)
        ax.set_xlim(-0.6, len(celltype_pairs) - 0.4)
        ax.set_ylim(len(lr_pairs) - 0.4, -0.6)
        ax.grid(True, color="#eeeeee", linewidth=0.5)
        ax.set_axisbelow(True)
        ax.set_title(name, fontsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, shrink=0.5, label="interaction mean (CellPhoneDB)")
    fig.suptitle(title or f"Strongest ligand–receptor pairs of the {reference} (size: −log10 p; edge: p ≤ α)",
                 fontsize=10)
    return fig


def marker_summary_rows(candidates: pd.DataFrame, per_type: int = 5) -> pd.DataFrame:
    """The first ``per_type`` candidate markers of each type, one row per type (for the report)."""
    rows = []
    for cell_type, part in candidates.groupby("cell_type", sort=True):
        head = part.sort_values("marker_rank").head(per_type)
        rows.append({"cell type": cell_type, "n candidates": len(part),
                     "first candidate markers (log2FC)": ", ".join(
                         f"{g} ({lfc:.1f})" for g, lfc in zip(head["gene"], head["logfc"], strict=True))})
    return pd.DataFrame(rows)
