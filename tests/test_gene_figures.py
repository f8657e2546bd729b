"""Gene-level figures of real vs synthetic cells: the numbers they draw and the panels they hold."""

from __future__ import annotations

import numpy as np

from cellsynth.evaluation import fit_reference_space
from cellsynth.evaluation.gene_figures import (
    correlated_genes,
    gene_statistics,
    plot_gene_correlations,
    plot_gene_statistics,
    plot_umap_real_vs_synthetic,
)


def test_gene_statistics_values(tiny_adata_factory):
    adata = tiny_adata_factory(n_cells=50, n_genes=6, n_types=2, seed=0)
    adata.X[:, 0] = 0.0
    stats = gene_statistics(adata, adata.var_names[::-1])
    X = np.asarray(adata.X, dtype=np.float64)
    assert list(stats.index) == list(adata.var_names[::-1])
    assert np.allclose(stats.loc["gene_1", "mean"], X[:, 1].mean())
    assert np.allclose(stats.loc["gene_1", "variance"], X[:, 1].var())
    assert stats.loc["gene_0", "detection"] == 0.0 and np.isclose(stats.loc["gene_2", "detection"], (X[:, 2] > 0).mean())


def test_correlated_genes_finds_the_correlated_block():
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(300, 1))
    X = np.hstack([factor + 0.3 * rng.normal(size=(300, 4)), rng.normal(size=(300, 16))])
    assert set(correlated_genes(X, 4).tolist()) == {0, 1, 2, 3}


def test_figures_have_a_panel_per_generator(tiny_adata_factory):
    train = tiny_adata_factory(n_cells=120, n_genes=12, n_types=3, seed=1)
    test = tiny_adata_factory(n_cells=90, n_genes=12, n_types=3, seed=2)
    synthetic = {"b": tiny_adata_factory(n_cells=90, n_genes=12, n_types=3, seed=3),
                 "a": tiny_adata_factory(n_cells=10, n_genes=12, n_types=3, seed=4)}
    space = fit_reference_space(train, n_components=5, seed=0)
    umap = plot_umap_real_vs_synthetic(test, synthetic, space, seed=0, n_neighbors=10)
    assert len(umap.axes) == 4 and umap.axes[2].get_title() == "a: by cell type"
    stats = plot_gene_statistics(test, synthetic)
    assert len(stats.axes) == 6 and "detection rate (r = " in stats.axes[2].get_title()
    corr = plot_gene_correlations(train, test, synthetic, n_genes=5, min_cells=20)
    titles = [ax.get_title() for ax in corr.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["real (test) (n = 30)", "b (n = 30)", "a (n = 4)"]  # "a": too few cells, an empty panel
    assert "fewer than 20 cells" in corr.axes[2].texts[0].get_text()
