"""Marker genes per cell type (paper 2.5 / 4.6, S1 Table) and their preservation in synthetic cells.

Protocol (the paper's, with scanpy in place of Seurat's ``FindAllMarkers``):

1. :func:`rank_markers`: ``scanpy.tl.rank_genes_groups`` of each cell type against all other cells
   (Wilcoxon rank-sum by default; ``t-test`` / ``t-test_overestim_var`` selectable), every gene
   kept, Benjamini–Hochberg adjusted p-values, log2 fold changes.
2. :func:`top_markers`: per type, the genes with adjusted p < ``max_pval_adj`` and log2FC >
   ``min_logfc`` (paper: 0.05 and 1), sorted by log2FC (paper) or by the test statistic, first
   ``n_top`` (paper: 20).
3. A gene in exactly one type's top list is **mutually exclusive**: these are the candidate markers
   (:func:`candidate_markers`); the most significant of each type is drawn in the violin plots (Fig 5).

Marker preservation (:func:`marker_preservation`) compares two rankings made on the same genes:
per type, the Jaccard overlap of the two top-``n_top`` lists, the share of the reference's mutually
exclusive markers found in the other top list, and the Spearman correlation of the log fold changes
over the genes differentially expressed (adjusted p below the marker threshold) in either set. Rank
correlation, so the extreme fold changes scanpy gives genes absent from a group do not dominate; DE
genes only, because over all genes the correlation is mostly that of noise around 0 (on PBMC3K it is
≈ 0.4 for copies of real cells and for a per-type Gaussian alike, while over DE genes it is ≈ 0.9
against ≈ 0.6). All are computed only for cell types ranked in both sets.

Everything runs on the genes the cells have; in this project that is a fold's 2000 HVGs (synthetic
cells only exist on those), so real and synthetic markers are compared like with like.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from cellsynth.downstream.checks import dense_expression, require_log_normalised
from cellsynth.schema import LABEL_KEY

log = logging.getLogger(__name__)

__all__ = [
    "RANKING_COLUMNS",
    "candidate_markers",
    "check_expected_markers",
    "marker_preservation",
    "rank_markers",
    "summarise_preservation",
    "top_markers",
    "top_unique_markers",
]

METHODS = ("wilcoxon", "t-test", "t-test_overestim_var")
RANK_BY = {"logfc": "logfc", "logfoldchanges": "logfc", "score": "score", "scores": "score"}
RANKING_COLUMNS = ["cell_type", "gene", "rank", "score", "logfc", "pval", "pval_adj", "pct_in_group", "pct_in_rest",
                   "n_cells"]


def rank_markers(
    adata: AnnData,
    *,
    label_key: str = LABEL_KEY,
    method: str = "wilcoxon",
    min_cells: int = 3,
    name: str = "cells",
) -> pd.DataFrame:
    """Every gene ranked for every cell type against the rest (one row per type × gene).

    Parameters
    ----------
    adata
        Log-normalised expression (``log1p`` of normalised counts; checked non-negative) with
        ``obs[label_key]``. Not modified: the test runs on a dense copy.
    label_key
        The ``obs`` column of cell types.
    method
        ``scanpy.tl.rank_genes_groups`` method: ``wilcoxon`` (default), ``t-test`` or
        ``t-test_overestim_var`` (``logreg`` gives neither p-values nor fold changes).
    min_cells
        Cell types with fewer cells are left out (logged); at least two types must remain.
    name
        What the cells are, for messages.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`RANKING_COLUMNS`: ``rank`` is scanpy's order within the type (1 = highest
        statistic), ``logfc`` the log2 fold change, ``pval_adj`` Benjamini–Hochberg adjusted,
        ``pct_in_group`` / ``pct_in_rest`` the fractions of cells expressing the gene, ``n_cells``
        the type's cell count.
    """
    import scanpy as sc

    if method not in METHODS:
        raise ValueError(f"marker method must be one of {METHODS}, got {method!r}")
    require_log_normalised(adata, name, label_key)
    labels = adata.obs[label_key].astype(str)
    counts = labels.value_counts()
    kept = sorted(counts.index[counts >= int(min_cells)])
    dropped = sorted(set(counts.index) - set(kept))
    if dropped:
        log.info("%s: cell types with fewer than %d cells are not ranked: %s", name, min_cells,
                 ", ".join(f"{t} ({counts[t]})" for t in dropped))
    if len(kept) < 2:
        raise ValueError(f"{name}: marker genes need at least two cell types with ≥ {min_cells} cells; got {dict(counts)}")
    mask = labels.isin(kept).to_numpy()
    work = AnnData(
        X=dense_expression(adata)[mask],  # dense: scanpy's Wilcoxon is ~10× faster than on CSR here
        obs=pd.DataFrame({label_key: pd.Categorical(labels[mask].to_numpy(), categories=kept)},
                         index=adata.obs_names[mask].astype(str)),
        var=pd.DataFrame(index=adata.var_names.astype(str)),
    )
    work.uns["log1p"] = {"base": None}  # natural log1p, as the project's preprocessing writes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(work, label_key, method=method, use_raw=False, n_genes=work.n_vars, pts=True,
                                corr_method="benjamini-hochberg", key_added="markers")
        frame = sc.get.rank_genes_groups_df(work, group=None, key="markers")
    frame = frame.rename(columns={"group": "cell_type", "names": "gene", "scores": "score",
                                  "logfoldchanges": "logfc", "pvals": "pval", "pvals_adj": "pval_adj",
                                  "pct_nz_group": "pct_in_group", "pct_nz_reference": "pct_in_rest"})
    frame["cell_type"] = frame["cell_type"].astype(str)
    frame["rank"] = frame.groupby("cell_type").cumcount() + 1
    frame["n_cells"] = frame["cell_type"].map(counts).astype(int)
    for column in RANKING_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    return frame[RANKING_COLUMNS].reset_index(drop=True)


def top_markers(
    ranking: pd.DataFrame,
    *,
    n_top: int = 20,
    rank_by: str = "logfc",
    max_pval_adj: float = 0.05,
    min_logfc: float = 1.0,
) -> pd.DataFrame:
    """The top ``n_top`` markers of each type, flagged ``unique`` when in one type's list only.

    Parameters
    ----------
    ranking
        Output of :func:`rank_markers`.
    n_top
        Markers kept per type (paper: 20).
    rank_by
        ``logfc`` (paper: Seurat's markers sorted by log2FC) or ``score`` (scanpy's test statistic).
    max_pval_adj, min_logfc
        A marker has adjusted p-value below ``max_pval_adj`` and log2 fold change above
        ``min_logfc`` (paper: 0.05 and 1; up-regulated genes only).

    Returns
    -------
    pandas.DataFrame
        The ranking's columns plus ``position`` (1..n_top within the type), ``n_types`` (how many
        types' lists hold the gene) and ``unique`` (``n_types == 1``: mutually exclusive).
    """
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {sorted(RANK_BY)}, got {rank_by!r}")
    column = RANK_BY[rank_by]
    passing = ranking[(ranking["pval_adj"] < max_pval_adj) & (ranking["logfc"] > min_logfc)]
    ordered = passing.sort_values(["cell_type", column, "rank"], ascending=[True, False, True], kind="stable")
    top = ordered.groupby("cell_type", sort=True).head(int(n_top)).copy()
    top["position"] = top.groupby("cell_type").cumcount() + 1
    top["n_types"] = top["gene"].map(top["gene"].value_counts()).astype(int)
    top["unique"] = top["n_types"] == 1
    return top.reset_index(drop=True)


def candidate_markers(top: pd.DataFrame) -> pd.DataFrame:
    """The mutually exclusive markers (the paper's S1 Table): gene, type, adjusted p, log2FC."""
    unique = top[top["unique"]].copy()
    unique["marker_rank"] = unique.groupby("cell_type").cumcount() + 1
    columns = ["cell_type", "marker_rank", "gene", "logfc", "pval_adj", "score", "pct_in_group", "pct_in_rest",
               "position", "n_cells"]
    return unique[columns].reset_index(drop=True)


def top_unique_markers(top: pd.DataFrame, by: str = "score") -> dict[str, str]:
    """Each type's top mutually exclusive marker (the genes of the violin plots, Fig 5).

    Parameters
    ----------
    top
        Output of :func:`top_markers`.
    by
        ``score``: the most significant candidate (highest test statistic; the paper plots "the top
        significant and unique DEGs"); ``position``: the first candidate in the top-list order
        (with ``rank_by: logfc``, often a gene expressed in few cells).
    """
    if by not in {"score", "position"}:
        raise ValueError(f"by must be 'score' or 'position', got {by!r}")
    unique = top[top["unique"]]
    unique = (unique.sort_values(["cell_type", "score"], ascending=[True, False], kind="stable") if by == "score"
              else unique.sort_values(["cell_type", "position"], kind="stable"))
    return {str(t): str(part["gene"].iloc[0]) for t, part in unique.groupby("cell_type", sort=True)}


def check_expected_markers(top: pd.DataFrame,
                           expected: Mapping[str, Sequence[str]] | Sequence[Mapping[str, Any]],
                           genes: Sequence[str] | None = None,
                           cell_types: Sequence[str] | None = None) -> pd.DataFrame:
    """Whether known (textbook) markers of each type appear among its markers.

    Parameters
    ----------
    top
        Output of :func:`top_markers`.
    expected
        Cell type → genes of which at least one should be found (e.g. B → MS4A1, CD79A), as a
        mapping or as a list of ``{"cell_type": ..., "genes": [...]}``.
    genes
        The genes measured (to tell "not among the HVGs" from "not a marker"); optional.
    cell_types
        The cell types of the data; expected types not among them are skipped (optional).

    Returns
    -------
    pandas.DataFrame
        One row per type and expected gene: ``measured``, ``in_top`` / ``position`` (in the type's
        top list), ``unique`` (a candidate marker) and ``type_ok`` (one of the type's expected genes
        is in its top list).
    """
    measured = set(genes) if genes is not None else None
    if not isinstance(expected, Mapping):
        expected = {str(item["cell_type"]): list(item["genes"]) for item in expected}
    if cell_types is not None:
        present = {str(t) for t in cell_types}
        expected = {t: g for t, g in expected.items() if str(t) in present}
    rows = []
    for cell_type, wanted in expected.items():
        part = top[top["cell_type"] == str(cell_type)].set_index("gene")
        for gene in wanted:
            found = gene in part.index
            rows.append({
                "cell_type": str(cell_type), "gene": gene,
                "measured": (gene in measured) if measured is not None else np.nan,
                "in_top": found,
                "position": int(part.loc[gene, "position"]) if found else np.nan,
                "unique": bool(part.loc[gene, "unique"]) if found else False,
                "logfc": float(part.loc[gene, "logfc"]) if found else np.nan,
                "pval_adj": float(part.loc[gene, "pval_adj"]) if found else np.nan,
            })
    table = pd.DataFrame(rows, columns=["cell_type", "gene", "measured", "in_top", "position",
                                        "unique", "logfc", "pval_adj"])
    table["type_ok"] = table.groupby("cell_type")["in_top"].transform("any") if len(table) else []
    return table


def textbook_marker_summary(checks: Sequence[tuple[str, int, pd.DataFrame]]) -> pd.DataFrame:
    """Which textbook markers each set of cells recovers, over folds.

    Parameters
    ----------
    checks
        ``(set name, fold, check)`` triples, ``check`` an output of :func:`check_expected_markers`.

    Returns
    -------
    pandas.DataFrame
        One row per type and textbook gene (then a row ``all types`` counting the types with one of
        their textbook markers found), one column per set in first-seen order: ``found/folds`` where
        ``found`` is the number of folds in which the gene is among the type's top markers of that set,
        and ``not measured`` when the gene is among no fold's genes (not an HVG).
    """
    sets = list(dict.fromkeys(name for name, _, _ in checks))
    frames = [check.assign(set=name, fold=fold) for name, fold, check in checks if len(check)]
    if not frames:
        return pd.DataFrame(columns=["cell_type", "gene", *sets])
    long = pd.concat(frames, ignore_index=True)
    keys = long[["cell_type", "gene"]].drop_duplicates()
    rows = []
    for cell_type, gene in keys.itertuples(index=False):
        row = {"cell_type": cell_type, "gene": gene}
        for name in sets:
            part = long[(long["set"] == name) & (long["cell_type"] == cell_type) & (long["gene"] == gene)]
            if part.empty:
                row[name] = "–"
            elif not part["measured"].fillna(True).astype(bool).any():
                row[name] = "not measured"
            else:
                row[name] = f"{int(part['in_top'].sum())}/{len(part)}"
        rows.append(row)
    total = {"cell_type": "all types", "gene": "types with a textbook marker found (fold mean)"}
    for name in sets:
        part = long[long["set"] == name].drop_duplicates(["fold", "cell_type"])
        per_fold = part.groupby("fold")["type_ok"].agg(["sum", "count"])
        total[name] = f"{per_fold['sum'].mean():.1f}/{per_fold['count'].mean():.0f}" if len(per_fold) else "–"
    return pd.DataFrame([*rows, total])


def marker_preservation(
    reference: pd.DataFrame,
    other: pd.DataFrame,
    *,
    n_top: int = 20,
    rank_by: str = "logfc",
    max_pval_adj: float = 0.05,
    min_logfc: float = 1.0,
) -> pd.DataFrame:
    """Per cell type: do ``other``'s markers match ``reference``'s?

    Parameters
    ----------
    reference, other
        Outputs of :func:`rank_markers` on the same genes (e.g. test cells and synthetic cells).
    n_top, rank_by, max_pval_adj, min_logfc
        The marker definition of :func:`top_markers`, applied to both.

    Returns
    -------
    pandas.DataFrame
        One row per type ranked in both: ``jaccard_top`` (|A∩B| / |A∪B| of the top lists, NaN when
        both are empty), ``n_reference`` / ``n_other`` / ``n_shared`` markers, ``unique_recovered``
        (share of the reference's mutually exclusive markers found among ``other``'s top list),
        ``logfc_spearman`` (Spearman correlation of log2FC over the ``n_de_genes`` genes differentially
        expressed in either set, adjusted p < ``max_pval_adj``) and ``logfc_spearman_all_genes`` (over
        every gene: mostly the noise of non-DE genes, so it barely separates good from bad sets).
    """
    options = {"n_top": n_top, "rank_by": rank_by, "max_pval_adj": max_pval_adj, "min_logfc": min_logfc}
    top_ref, top_other = top_markers(reference, **options), top_markers(other, **options)
    types = sorted(set(reference["cell_type"]) & set(other["cell_type"]))
    rows = []
    for cell_type in types:
        a = set(top_ref.loc[top_ref["cell_type"] == cell_type, "gene"])
        b = set(top_other.loc[top_other["cell_type"] == cell_type, "gene"])
        unique_ref = set(top_ref.loc[(top_ref["cell_type"] == cell_type) & top_ref["unique"], "gene"])
        lfc = pd.merge(
            reference.loc[reference["cell_type"] == cell_type, ["gene", "logfc", "pval_adj"]],
            other.loc[other["cell_type"] == cell_type, ["gene", "logfc", "pval_adj"]], on="gene",
            suffixes=("_ref", "_other"),
        ).replace([np.inf, -np.inf], np.nan).dropna(subset=["logfc_ref", "logfc_other"])
        de = lfc[(lfc["pval_adj_ref"] < max_pval_adj) | (lfc["pval_adj_other"] < max_pval_adj)]
        rows.append({
            "cell_type": cell_type,
            "jaccard_top": len(a & b) / len(a | b) if a | b else np.nan,
            "n_reference": len(a), "n_other": len(b), "n_shared": len(a & b),
            "unique_recovered": len(unique_ref & b) / len(unique_ref) if unique_ref else np.nan,
            "logfc_spearman": _spearman(de["logfc_ref"], de["logfc_other"]),
            "n_de_genes": len(de),
            "logfc_spearman_all_genes": _spearman(lfc["logfc_ref"], lfc["logfc_other"]),
        })
    return pd.DataFrame(rows, columns=["cell_type", "jaccard_top", "n_reference", "n_other", "n_shared",
                                       "unique_recovered", "logfc_spearman", "n_de_genes",
                                       "logfc_spearman_all_genes"])


def _spearman(a: pd.Series, b: pd.Series) -> float:
    if len(a) < 3 or a.nunique() < 2 or b.nunique() < 2:
        return float("nan")
    return float(a.corr(b, method="spearman"))


def summarise_preservation(per_type: pd.DataFrame) -> dict[str, float]:
    """Means over cell types of :func:`marker_preservation` (NaN types skipped)."""
    return {
        "jaccard_top": float(per_type["jaccard_top"].mean()),
        "unique_recovered": float(per_type["unique_recovered"].mean()),
        "logfc_spearman": float(per_type["logfc_spearman"].mean()),
        "logfc_spearman_all_genes": float(per_type["logfc_spearman_all_genes"].mean()),
        "n_types": float(len(per_type)),
    }
