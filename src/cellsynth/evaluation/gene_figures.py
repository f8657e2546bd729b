"""Cell- and gene-level figures of real held-out against synthetic cells (matplotlib, Agg canvas).

* :func:`plot_umap_real_vs_synthetic` — per generator, one UMAP of the test cells and the generator's
  cells together, coloured by cell type and by origin (what a scanpy user looks at first).
* :func:`plot_gene_statistics` — per generator, each gene's mean, variance and detection rate in the
  synthetic cells against the test cells (SDV's "column shapes").
* :func:`plot_gene_correlations` — gene–gene Pearson correlations within the largest test type,
  real and per generator, on genes correlated in that type's training cells (SDV's "pair trends").

Every comparison is with the fold's *test* cells (never seen by a generator). Each figure's
one-line reading guide is in :data:`CAPTIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from cellsynth.data.integration import umap_coordinates
from cellsynth.evaluation.protocol import aligned_matrix, cell_labels, project, without_nonfinite
from cellsynth.evaluation.tables import generator_order
from cellsynth.metrics import ReferenceSpace
from cellsynth.reporting.figures import new_figure

__all__ = [
    "CAPTIONS",
    "gene_statistics",
    "plot_gene_correlations",
    "plot_gene_statistics",
    "plot_umap_real_vs_synthetic",
]

CAPTIONS = {
    "umap": (
        "Read: synthetic cells should sit on the real cells of their own type (left) and mix with them "
        "in every cluster (right); a synthetic island is an invented mode, a real cluster without "
        "synthetic cells a missed one."
    ),
    "gene_statistics": (
        "Read: one dot per gene, real test cells (x) against synthetic cells (y); dots on the dashed "
        "diagonal mean the generator reproduces that gene's mean, variance or fraction of cells expressing it."
    ),
    "gene_correlations": (
        "Read: correlations within the largest cell type of genes correlated in its training cells; a "
        "generator should repeat the real (test) panel's pattern; gene_shuffle (genes drawn independently) "
        "shows none, train_copy the training cells' own."
    ),
}

_REAL_COLOUR, _SYNTH_COLOUR = "#1f77b4", "#d62728"


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.float64)


def _subsample_rows(n: int, max_cells: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= max_cells else np.sort(rng.choice(n, max_cells, replace=False))


def _type_colours(types: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab20"] if len(types) > 10 else colormaps["tab10"]
    return {t: palette(i % palette.N) for i, t in enumerate(types)}


def plot_umap_real_vs_synthetic(
    test: AnnData,
    synthetic: Mapping[str, AnnData],
    space: ReferenceSpace,
    *,
    seed: int = 0,
    max_cells: int = 2000,
    n_neighbors: int = 15,
) -> Figure:
    """One row per generator: a UMAP of test and synthetic cells, by cell type and by origin.

    Both sets are projected into the fold's reference space (PCA fitted on the training cells) and
    embedded together (scanpy neighbours + UMAP, seeded); at most ``max_cells`` cells of each set
    (seeded subsample). Each generator has its own embedding, so positions are not comparable
    between rows.
    """
    names = generator_order(synthetic)
    rng = np.random.default_rng(seed)
    real_rows = _subsample_rows(test.n_obs, max_cells, rng)
    z_real = project(space, test)[real_rows]
    y_real = cell_labels(test)[real_rows].astype(str)
    types = sorted(set(y_real) | {t for s in synthetic.values() for t in cell_labels(s).astype(str)})
    colours = _type_colours(types)
    fig = new_figure(9.0, 3.6 * max(len(names), 1))
    axes = fig.subplots(max(len(names), 1), 2, squeeze=False)
    for row, name in enumerate(names):
        cells, _ = without_nonfinite(synthetic[name], f"{name} synthetic")
        rows = _subsample_rows(cells.n_obs, max_cells, rng)
        z_synth = project(space, cells)[rows]
        y_synth = cell_labels(cells)[rows].astype(str)
        xy = umap_coordinates(np.vstack([z_real, z_synth]), n_neighbors=n_neighbors, seed=seed)
        is_real = np.r_[np.ones(len(z_real), bool), np.zeros(len(z_synth), bool)]
        labels = np.r_[y_real, y_synth]
        by_type, by_origin = axes[row]
        for t in types:
            mask = labels == t
            if mask.any():
                by_type.scatter(xy[mask, 0], xy[mask, 1], s=3, color=colours[t], linewidths=0, label=t)
        by_origin.scatter(xy[is_real, 0], xy[is_real, 1], s=3, c=_REAL_COLOUR, alpha=0.6, linewidths=0,
                          label="real (test)")
        by_origin.scatter(xy[~is_real, 0], xy[~is_real, 1], s=3, c=_SYNTH_COLOUR, alpha=0.6, linewidths=0,
                          label="synthetic")
        by_type.set_title(f"{name}: by cell type", fontsize=9)
        by_origin.set_title(f"{name}: by origin", fontsize=9)
        for ax in (by_type, by_origin):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("UMAP1", fontsize=7)
            ax.set_ylabel("UMAP2", fontsize=7)
        if row == 0:
            by_type.legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(-0.62, 0.5), frameon=False)
            by_origin.legend(fontsize=7, markerscale=3, loc="best", frameon=False)
    return fig


def gene_statistics(adata: AnnData, var_names) -> pd.DataFrame:
    """Per gene: ``mean``, ``variance`` (population) and ``detection`` (fraction of cells > 0)."""
    X = _dense(aligned_matrix(adata, var_names))
    return pd.DataFrame(
        {"mean": X.mean(axis=0), "variance": X.var(axis=0), "detection": (X > 0).mean(axis=0)},
        index=pd.Index(var_names, name="gene"),
    )


def plot_gene_statistics(test: AnnData, synthetic: Mapping[str, AnnData]) -> Figure:
    """One row per generator, three panels: per-gene mean, variance, detection rate, synthetic vs real.

    Each panel gives Pearson's r over genes; the dashed line is y = x.
    """
    names = generator_order(synthetic)
    real = gene_statistics(test, test.var_names)
    fig = new_figure(9.6, 2.9 * max(len(names), 1))
    axes = fig.subplots(max(len(names), 1), 3, squeeze=False)
    titles = {"mean": "mean", "variance": "variance", "detection": "detection rate"}
    for row, name in enumerate(names):
        cells, _ = without_nonfinite(synthetic[name], f"{name} synthetic")
        synth = gene_statistics(cells, test.var_names)
        for ax, column in zip(axes[row], titles, strict=True):
            x, y = real[column].to_numpy(), synth[column].to_numpy()
            ax.scatter(x, y, s=3, c=_SYNTH_COLOUR, alpha=0.5, linewidths=0)
            top = float(np.nanmax(np.r_[x, y, 1e-9]))
            ax.plot([0, top], [0, top], ls="--", c="#555555", lw=0.8)
            r = np.corrcoef(x, y)[0, 1] if np.std(x) > 0 and np.std(y) > 0 else np.nan
            ax.set_title(f"{name}: {titles[column]} (r = {r:.2f})", fontsize=8)
            ax.set_xlabel("real (test)", fontsize=7)
            ax.set_ylabel("synthetic", fontsize=7)
            ax.tick_params(labelsize=6)
    return fig


def _correlations(X: np.ndarray) -> np.ndarray:
    """Pearson correlations of the columns of ``X`` (0 for a constant gene), diagonal blank."""
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(X, rowvar=False))
    np.fill_diagonal(corr, np.nan)
    return corr


def correlated_genes(X: np.ndarray, n_genes: int, n_candidates: int = 200) -> np.ndarray:
    """Columns of ``X`` with the strongest correlations: among the ``n_candidates`` most variable,
    the ``n_genes`` with the largest sum of squared correlations to the others, in the order of an
    average-linkage clustering of their correlations (so blocks show)."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    candidates = np.argsort(-X.var(axis=0), kind="stable")[:n_candidates]
    corr = np.nan_to_num(_correlations(X[:, candidates]))
    chosen = candidates[np.argsort(-(corr**2).sum(axis=0), kind="stable")[:n_genes]]
    if len(chosen) < 3:
        return chosen
    distance = 1.0 - np.nan_to_num(_correlations(X[:, chosen]), nan=1.0)
    condensed = distance[np.triu_indices(len(chosen), k=1)]
    return chosen[leaves_list(linkage(np.clip(condensed, 0.0, 2.0), method="average"))]


def plot_gene_correlations(
    train: AnnData, test: AnnData, synthetic: Mapping[str, AnnData], *, n_genes: int = 20, min_cells: int = 20
) -> Figure:
    """Gene–gene Pearson correlations within the largest test cell type: real test cells, then each generator.

    Genes: :func:`correlated_genes` of that type's *training* cells (chosen on the test cells, the
    real panel would show the noise the genes were picked for, which no generator could repeat).
    A generator with fewer than ``min_cells`` cells of the type gets an empty panel saying so. The
    diagonal is left blank; the colour scale spans the real panel's largest absolute correlation.
    """
    labels = cell_labels(test).astype(str)
    largest = pd.Series(labels).value_counts().index[0]
    train_X = _dense(aligned_matrix(train, test.var_names)[cell_labels(train).astype(str) == largest])
    genes = test.var_names[correlated_genes(train_X, n_genes)]
    real_corr = _correlations(_dense(aligned_matrix(test, genes)[labels == largest]))
    scale = max(0.2, float(np.nanmax(np.abs(real_corr))) if len(genes) > 1 else 1.0)
    names = generator_order(synthetic)
    panels = [("real (test)", real_corr, int((labels == largest).sum()))]
    for name in names:
        cells, _ = without_nonfinite(synthetic[name], f"{name} synthetic")
        mask = cell_labels(cells).astype(str) == largest
        X = _dense(aligned_matrix(cells, genes)[mask]) if mask.sum() >= min_cells else None
        panels.append((name, None if X is None else _correlations(X), int(mask.sum())))
    columns = min(4, len(panels))
    n_rows = -(-len(panels) // columns)
    fig = new_figure(3.0 * columns + 0.8, 3.0 * n_rows + 0.4)
    axes = fig.subplots(n_rows, columns, squeeze=False).ravel()
    image = None
    for ax, (name, corr, n_cells) in zip(axes, panels, strict=False):
        ax.set_title(f"{name} (n = {n_cells})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if corr is None:
            ax.text(0.5, 0.5, f"fewer than {min_cells} cells\nof this type", ha="center", va="center", fontsize=7)
            continue
        image = ax.imshow(corr, vmin=-scale, vmax=scale, cmap="RdBu_r", interpolation="nearest")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].set_yticks(range(len(genes)), list(genes), fontsize=5)
    fig.suptitle(f"{largest}: {len(genes)} strongly correlated genes of the training cells of this type", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes[: len(panels)]), shrink=0.7, label="Pearson r")
    return fig
