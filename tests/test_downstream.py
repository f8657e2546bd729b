"""Downstream biology: the unique-marker rule, aligned interaction RMSE, LIANA offline, input checks."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from cellsynth import downstream as ds
from cellsynth.downstream import figures
from cellsynth.downstream.report import downstream_section
from cellsynth.reporting.figures import figure_to_png
from cellsynth.reporting.html import Figure, Table, section_dataset

RAW_PBMC3K = Path(__file__).resolve().parents[1] / "data" / "01_raw" / "pbmc3k_counts.h5ad"


# ----------------------------------------------------------------------------- markers
def _known_markers(seed: int = 0) -> AnnData:
    """Three types; MK_A / MK_B / MK_C up in one type only, SHARED_AB up in A and B, 40 noise genes."""
    rng = np.random.default_rng(seed)
    n_per_type, types = 40, ["A", "B", "C"]
    labels = np.repeat(types, n_per_type)
    genes = ["MK_A", "MK_B", "MK_C", "SHARED_AB"] + [f"NOISE_{j}" for j in range(40)]
    X = rng.gamma(1.0, 0.15, size=(len(labels), len(genes)))
    for column, up_in in [(0, {"A"}), (1, {"B"}), (2, {"C"}), (3, {"A", "B"})]:
        rows = np.isin(labels, list(up_in))
        X[rows, column] += rng.normal(3.0, 0.3, size=rows.sum())
    X = np.log1p(np.clip(X, 0, None)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
    return AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes))


def test_unique_marker_rule_on_known_markers():
    adata = _known_markers()
    before = adata.X.copy()
    ranking = ds.rank_markers(adata, method="wilcoxon", min_cells=3)
    assert (before != adata.X).nnz == 0  # input untouched
    assert set(ranking.columns) >= {"cell_type", "gene", "logfc", "pval_adj", "score"}
    assert len(ranking) == 3 * adata.n_vars

    top = ds.top_markers(ranking, n_top=2, rank_by="logfc", max_pval_adj=0.05, min_logfc=1.0)
    lists = {t: set(part["gene"]) for t, part in top.groupby("cell_type")}
    assert lists == {"A": {"MK_A", "SHARED_AB"}, "B": {"MK_B", "SHARED_AB"}, "C": {"MK_C"}}
    shared = top[top["gene"] == "SHARED_AB"]
    assert not shared["unique"].any() and (shared["n_types"] == 2).all()

    candidates = ds.candidate_markers(top)
    assert dict(zip(candidates["cell_type"], candidates["gene"], strict=True)) == {"A": "MK_A", "B": "MK_B",
                                                                                   "C": "MK_C"}
    assert (candidates["pval_adj"] < 0.05).all() and (candidates["logfc"] > 1).all()
    assert ds.top_unique_markers(top) == {"A": "MK_A", "B": "MK_B", "C": "MK_C"}

    check = ds.check_expected_markers(top, [{"cell_type": "A", "genes": ["MK_A", "ABSENT"]},
                                            {"cell_type": "C", "genes": ["MK_B"]}], genes=list(adata.var_names))
    assert check.set_index("gene").loc["ABSENT", "measured"] == False  # noqa: E712
    assert check.groupby("cell_type")["type_ok"].first().to_dict() == {"A": True, "C": False}


def test_marker_preservation_is_perfect_on_identical_cells_and_drops_on_shuffled_labels():
    adata = _known_markers()
    ranking = ds.rank_markers(adata)
    same = ds.marker_preservation(ranking, ranking, n_top=4)
    assert (same["jaccard_top"] == 1).all() and np.allclose(same["logfc_spearman"], 1)

    shuffled = adata.copy()
    shuffled.obs["cell_type"] = pd.Categorical(np.random.default_rng(1).permutation(adata.obs["cell_type"]))
    worse = ds.marker_preservation(ranking, ds.rank_markers(shuffled), n_top=4)
    assert ds.summarise_preservation(worse)["jaccard_top"] < 0.5


def test_downstream_refuses_negative_values():
    adata = _known_markers()
    corrected = AnnData(X=adata.X.toarray() - 0.5, obs=adata.obs.copy(), var=adata.var.copy())
    with pytest.raises(ds.NegativeExpressionError, match="(?i)batch-corrected"):
        ds.rank_markers(corrected)
    with pytest.raises(ds.NegativeExpressionError, match="non-negative"):
        ds.infer_interactions(corrected, n_perms=10)
    with pytest.raises(ValueError, match="NaN"):
        ds.require_log_normalised(AnnData(X=np.full((3, 2), np.nan), obs=adata.obs.iloc[:3].copy()), "cells")


# ----------------------------------------------------------------------------- aligned RMSE
def _table(rows):
    frame = pd.DataFrame(rows, columns=[*ds.KEYS, "lr_means", "significant"])
    frame["expressed"] = frame["lr_means"] > 0.5
    return frame


REFERENCE = _table([
    ("L1", "R1", "A", "B", 1.0, True),
    ("L1", "R1", "B", "A", 2.0, False),
    ("L2", "R2", "A", "A", 3.0, True),
    ("L3", "R3", "A", "B", 0.4, False),   # missing from OTHER: counts as 0 there
])
OTHER = _table([
    ("L2", "R2", "A", "A", 2.0, True),    # listed first: a positional comparison would pair it with L1^R1
    ("L1", "R1", "B", "A", 2.5, True),
    ("L1", "R1", "A", "B", 1.0, True),
    ("L4", "R4", "B", "B", 0.6, True),    # missing from REFERENCE: counts as 0 there
    ("L1", "R1", "C", "A", 9.0, True),    # type C not in REFERENCE: left out
])


def test_aligned_rmse_matches_hand_computation_and_documented_missing_policy():
    out = ds.aligned_rmse(REFERENCE, OTHER)
    diffs = np.array([0.0, -0.5, 1.0, 0.4, -0.6])  # union of 5 keys on types A, B
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean(diffs**2)))
    assert out["rmse_shared"] == pytest.approx(np.sqrt(np.mean(diffs[:3] ** 2)))
    assert out["rmse_expressed"] == pytest.approx(np.sqrt(np.mean(np.array([0.0, -0.5, 1.0, -0.6]) ** 2)))
    assert (out["n_union"], out["n_shared"], out["n_only_reference"], out["n_only_other"]) == (5, 3, 1, 1)
    comparison = ds.compare_interactions(REFERENCE, OTHER)
    assert comparison["types_excluded"] == "C"
    # significant: reference {L1^R1 A→B, L2^R2 A→A}; other (types A, B) {those two, L1^R1 B→A, L4^R4}
    assert comparison["jaccard_significant"] == pytest.approx(2 / 4)


def test_aligned_rmse_ignores_row_order():
    expected = ds.aligned_rmse(REFERENCE, OTHER)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = REFERENCE.sample(frac=1, random_state=int(rng.integers(1000))).reset_index(drop=True)
        b = OTHER.sample(frac=1, random_state=int(rng.integers(1000)))
        assert ds.aligned_rmse(a, b) == pytest.approx(expected)
        assert ds.aligned_rmse(b, a)["rmse"] == pytest.approx(expected["rmse"])
    assert ds.aligned_rmse(REFERENCE, REFERENCE)["rmse"] == 0


def test_aligned_rmse_refuses_duplicated_keys():
    with pytest.raises(ValueError, match="one row per"):
        ds.aligned_rmse(pd.concat([REFERENCE, REFERENCE.iloc[:1]]), OTHER)


# ----------------------------------------------------------------------------- LIANA on real cells
@pytest.fixture(scope="module")
def pbmc_subset() -> AnnData:
    """150 real PBMC3K cells of three types, library-size normalised and log1p (genes in ≥ 10 cells)."""
    import anndata as ad
    import scanpy as sc

    raw = ad.read_h5ad(RAW_PBMC3K, backed="r")
    labels = raw.obs["seurat_annotations"].astype(str)
    rng = np.random.default_rng(0)
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == t), 50, replace=False)
                             for t in ["B", "CD14+ Mono", "NK"]])
    cells = raw[np.sort(picked)].to_memory()
    cells.obs["cell_type"] = cells.obs["seurat_annotations"].astype(str).astype("category")
    sc.pp.filter_genes(cells, min_cells=10)
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    return cells


@pytest.mark.slow
def test_liana_cellphonedb_runs_offline_on_real_cells(pbmc_subset, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during the downstream analysis")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    before = pbmc_subset.X.copy()
    table = ds.infer_interactions(pbmc_subset, n_perms=100, seed=3)
    assert (before != pbmc_subset.X).nnz == 0
    assert set(table["source"]) == {"B", "CD14+ Mono", "NK"}
    assert not table.duplicated(ds.KEYS).any()
    assert table["significant"].sum() > 0
    assert (table.loc[~table["expressed"], "cellphone_pvals"] == 1).all()
    assert ((table["lr_means"] == 0) | ((table["ligand_means"] > 0) & (table["receptor_means"] > 0))).all()
    again = ds.infer_interactions(pbmc_subset, n_perms=100, seed=3)
    pd.testing.assert_frame_equal(table, again)  # seeded permutations: identical
    assert ds.aligned_rmse(table, again.iloc[::-1])["rmse"] == 0

    counts = ds.significant_counts(table)
    assert counts.shape == (3, 3) and counts.to_numpy().sum() == table["significant"].sum()
    png = figure_to_png(figures.plot_interaction_heatmaps({"a": table, "b": again}), dpi=40)
    assert png[:4] == b"\x89PNG"
    dot = figure_to_png(figures.plot_interaction_dotplot({"a": table, "b": again}, "a"), dpi=40)
    assert dot[:4] == b"\x89PNG"


@pytest.mark.slow
def test_textbook_markers_on_real_cells(pbmc_subset):
    ranking = ds.rank_markers(pbmc_subset)
    top = ds.top_markers(ranking, n_top=20)
    check = ds.check_expected_markers(top, {"B": ["MS4A1", "CD79A"], "NK": ["GNLY", "NKG7"],
                                            "CD14+ Mono": ["LYZ", "S100A8"]})
    assert check["type_ok"].all()
    png = figure_to_png(figures.plot_marker_violins(ds.top_unique_markers(top), pbmc_subset,
                                                            pbmc_subset), dpi=40)
    assert png[:4] == b"\x89PNG"


def test_section_html_is_self_contained():
    text = downstream_section("pbmc3k", [Table("t", pd.DataFrame({"a": [1.0], "b": ["x"]}), ["note"])],
                              [Figure("f", b"\x89PNG fake", "caption")], ["fact"])
    assert text.startswith('<section id="downstream"') and text.rstrip().endswith("</section>")
    assert section_dataset(text) == "pbmc3k" and "Marker preservation" in text  # how to read it
    assert "data:image/png;base64," in text and "<li>fact</li>" in text and "<style" not in text
    assert "http" not in text and "<script" not in text
