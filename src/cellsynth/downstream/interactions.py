"""Cell–cell interactions with LIANA's CellPhoneDB method, and their comparison between cell sets.

:func:`infer_interactions` runs ``liana.mt.cellphonedb`` (bundled ligand–receptor resource, no
network) and returns one row per **interaction key** = (ligand complex, receptor complex, source
type, target type), for *every* ligand–receptor pair of the resource whose genes are measured,
like CellPhoneDB's ``means`` table:

* ``lr_means``: CellPhoneDB's interaction mean, the mean of the ligand's mean expression in the
  source type and the receptor's in the target type (a complex counts as its lowest-expressed
  subunit; 0 when either side is 0);
* ``expressed``: every subunit of the ligand is expressed (> 0) in at least ``expr_prop`` of the
  source cells and every receptor subunit in ``expr_prop`` of the target cells (CellPhoneDB's
  ``threshold``, LIANA's ``expr_prop``);
* ``cellphone_pvals``: the permutation p-value (cell labels shuffled ``n_perms`` times, seeded);
  set to 1 for pairs that are not ``expressed``, as CellPhoneDB does;
* ``significant``: ``expressed`` and p ≤ ``alpha``.

To get the means of all pairs, LIANA is called with ``expr_prop=0`` and the threshold is applied
here (exactly, over every subunit); its permutation p-values are per row, so for the expressed pairs
they are the ones a run with ``expr_prop`` would give.

:func:`compare_interactions` aligns two such tables **on the key** (the paper's code compared rows
by position, which pairs unrelated interactions) and computes the RMSE of ``lr_means`` over the
**union** of keys. Policy for keys present in one table only: only cell types analysed in both sets
are compared (LIANA drops types with fewer than ``min_cells`` cells; a type missing from one set has
no interactions to compare, and is reported in ``types_excluded``); within those, a key missing from
one table is a pair whose gene was not detected in that set (LIANA drops all-zero genes), and its
mean is counted as **0**, the value CellPhoneDB gives a pair whose partner is not expressed. The RMSE
over the shared keys only is reported alongside, with the counts of each kind, and the RMSE over the
pairs above the expression threshold in either set (``rmse_expressed``).

Reading the RMSE: CellPhoneDB's mean is 0 as soon as one partner has no expressing cell in its type,
and jumps to about half the other partner's mean when a single cell expresses it. Pairs of a highly
expressed ligand (e.g. B2M) with a rarely detected receptor therefore flip between 0 and ~3 with the
number of cells, so sets with more cells than the test set (the real training cells; real +
synthetic) detect more rare partners and reach a higher RMSE for that reason alone. Compare sets of
the same size (synthetic only: as many cells as the test set; ``train_copy`` gives real cells at that
size).

Analyses are restricted to the genes the cells have: in this project a fold's 2000 HVGs, so many
ligand–receptor pairs of the resource (whose genes are not highly variable) are absent.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from cellsynth.downstream.checks import require_log_normalised
from cellsynth.schema import LABEL_KEY

log = logging.getLogger(__name__)

__all__ = [
    "INTERACTION_COLUMNS",
    "KEYS",
    "aligned_rmse",
    "compare_interactions",
    "infer_interactions",
    "resource_coverage",
    "significant_counts",
    "significant_jaccard",
]

KEYS = ["ligand_complex", "receptor_complex", "source", "target"]
INTERACTION_COLUMNS = [*KEYS, "lr_means", "cellphone_pvals", "expressed", "significant", "ligand_means",
                       "receptor_means", "ligand_props", "receptor_props"]


def _expression_fractions(X, labels: np.ndarray, types: list[str], genes: pd.Index) -> pd.DataFrame:
    """Fraction of each type's cells with the gene > 0 (types × genes)."""
    positive = (X > 0) if sp.issparse(X) else sp.csr_matrix(np.asarray(X) > 0)
    positive = sp.csr_matrix(positive, dtype=np.float32)
    rows = {}
    for cell_type in types:
        mask = labels == cell_type
        rows[cell_type] = np.asarray(positive[mask].mean(axis=0)).ravel()
    return pd.DataFrame.from_dict(rows, orient="index", columns=genes)


def _complex_fraction(complexes: pd.Series, types: pd.Series, fractions: pd.DataFrame) -> np.ndarray:
    """Minimum over a complex's subunits (``A_B``) of the fraction of cells expressing it."""
    cache: dict[tuple[str, str], float] = {}
    out = np.empty(len(complexes), dtype=float)
    for i, (name, cell_type) in enumerate(zip(complexes.to_numpy(), types.to_numpy(), strict=True)):
        key = (name, cell_type)
        if key not in cache:
            subunits = [g for g in str(name).split("_") if g]
            cache[key] = min((float(fractions.at[cell_type, g]) if g in fractions.columns else 0.0)
                             for g in subunits) if subunits else 0.0
        out[i] = cache[key]
    return out


def infer_interactions(
    adata: AnnData,
    *,
    label_key: str = LABEL_KEY,
    resource_name: str = "consensus",
    expr_prop: float = 0.1,
    min_cells: int = 5,
    n_perms: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    n_jobs: int = 1,
    name: str = "cells",
) -> pd.DataFrame:
    """CellPhoneDB statistical analysis (LIANA) of one set of cells: the table of every pair.

    Parameters
    ----------
    adata
        Log-normalised, non-negative expression with ``obs[label_key]`` (checked; not modified:
        LIANA runs on a new AnnData holding a CSR copy).
    label_key
        The ``obs`` column of cell types.
    resource_name
        LIANA's bundled resource: ``consensus`` (LIANA's default, the union of curated resources,
        CellPhoneDB's included) or ``cellphonedb`` (CellPhoneDB's own, smaller). Both ship with
        the package: nothing is downloaded.
    expr_prop
        CellPhoneDB's ``threshold``: minimum fraction of expressing cells per subunit.
    min_cells
        Cell types with fewer cells are left out (LIANA's ``min_cells``).
    n_perms, seed
        Permutations of the cell labels and their seed.
    alpha
        p-value threshold of ``significant``.
    n_jobs
        LIANA's permutation threads (the result does not depend on it).
    name
        What the cells are, for messages.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`INTERACTION_COLUMNS` (see the module docstring), one row per key.
    """
    import liana

    require_log_normalised(adata, name, label_key)
    labels = adata.obs[label_key].astype(str).to_numpy()
    counts = pd.Series(labels).value_counts()
    kept = sorted(counts.index[counts >= int(min_cells)])
    if len(kept) < 2:
        raise ValueError(f"{name}: interactions need at least two cell types with ≥ {min_cells} cells; "
                         f"got {counts.to_dict()}")
    dropped = sorted(set(counts.index) - set(kept))
    if dropped:
        log.info("%s: cell types with fewer than %d cells have no interactions: %s", name, min_cells,
                 ", ".join(f"{t} ({counts[t]})" for t in dropped))
    X = sp.csr_matrix(adata.X, dtype=np.float32, copy=True)
    genes = pd.Index(adata.var_names.astype(str))
    work = AnnData(
        X=X,
        obs=pd.DataFrame({label_key: pd.Categorical(labels, categories=sorted(counts.index))},
                         index=[str(i) for i in range(adata.n_obs)]),
        var=pd.DataFrame(index=genes),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = liana.mt.cellphonedb(
            work, groupby=label_key, resource_name=resource_name, expr_prop=0.0, min_cells=int(min_cells),
            n_perms=int(n_perms), seed=int(seed), use_raw=False, layer=None, inplace=False, verbose=False,
            n_jobs=int(n_jobs), return_all_lrs=False,
        )
    result = result.reset_index(drop=True)
    result["source"] = result["source"].astype(str)
    result["target"] = result["target"].astype(str)
    if result.duplicated(KEYS).any():  # LIANA returns one row per key; guard the alignment below
        raise RuntimeError(f"{name}: LIANA returned duplicated interaction keys")
    fractions = _expression_fractions(X, labels, kept, genes)
    result["ligand_props"] = _complex_fraction(result["ligand_complex"], result["source"], fractions)
    result["receptor_props"] = _complex_fraction(result["receptor_complex"], result["target"], fractions)
    result["expressed"] = (result["ligand_props"] >= expr_prop) & (result["receptor_props"] >= expr_prop)
    result["cellphone_pvals"] = np.where(result["expressed"], result["cellphone_pvals"], 1.0)
    result["significant"] = result["expressed"] & (result["cellphone_pvals"] <= alpha)
    table = result[INTERACTION_COLUMNS].sort_values(KEYS, kind="stable").reset_index(drop=True)
    return table


def resource_coverage(table: pd.DataFrame, resource_name: str = "consensus") -> dict[str, int]:
    """How many of the resource's ligand–receptor pairs an interaction table covers (offline)."""
    import liana

    resource = liana.resource.select_resource(resource_name)
    return {"pairs_measured": int(table[["ligand_complex", "receptor_complex"]].drop_duplicates().shape[0]),
            "pairs_in_resource": int(resource[["ligand", "receptor"]].drop_duplicates().shape[0])}


def _types(table: pd.DataFrame) -> set[str]:
    return set(table["source"]) | set(table["target"])


def _restrict(table: pd.DataFrame, types: set[str]) -> pd.DataFrame:
    return table[table["source"].isin(types) & table["target"].isin(types)]


def aligned_rmse(reference: pd.DataFrame, other: pd.DataFrame, value: str = "lr_means",
                 missing: float = 0.0) -> dict[str, float]:
    """RMSE of ``value`` between two interaction tables, aligned on :data:`KEYS`.

    Row order does not matter. Only cell types present in both tables are compared; within them
    the RMSE runs over the union of keys with a key missing from one table counted as ``missing``
    (0: an undetected gene gives a CellPhoneDB mean of 0). ``rmse_shared`` uses the keys present in
    both only; ``rmse_expressed`` the keys ``expressed`` (above the CellPhoneDB threshold) in at
    least one of the two sets, when both tables have that column.

    Returns
    -------
    dict
        ``rmse``, ``rmse_shared``, ``rmse_expressed``, ``n_union``, ``n_shared``,
        ``n_only_reference``, ``n_only_other``, ``n_expressed``, ``n_types``.
    """
    for table in (reference, other):
        if table.duplicated(KEYS).any():
            raise ValueError("interaction tables must have one row per (ligand, receptor, source, target)")
    types = _types(reference) & _types(other)
    columns = [*KEYS, value] + (["expressed"] if "expressed" in reference and "expressed" in other else [])
    a = _restrict(reference, types)[columns]
    b = _restrict(other, types)[columns]
    merged = a.merge(b, on=KEYS, how="outer", suffixes=("_reference", "_other"), indicator=True)
    left, right = merged[f"{value}_reference"], merged[f"{value}_other"]
    shared = (merged["_merge"] == "both").to_numpy()
    diff = left.fillna(missing).to_numpy(float) - right.fillna(missing).to_numpy(float)

    def rmse(mask: np.ndarray | None = None) -> float:
        d = diff if mask is None else diff[mask]
        return float(np.sqrt(np.mean(d**2))) if len(d) else float("nan")

    expressed = None
    if "expressed" in columns:
        expressed = (merged["expressed_reference"].astype("boolean").fillna(False)
                     | merged["expressed_other"].astype("boolean").fillna(False)).to_numpy(bool)
    return {
        "rmse": rmse(),
        "rmse_shared": rmse(shared),
        "rmse_expressed": rmse(expressed) if expressed is not None else float("nan"),
        "n_union": float(len(merged)),
        "n_shared": float(shared.sum()),
        "n_only_reference": float((merged["_merge"] == "left_only").sum()),
        "n_only_other": float((merged["_merge"] == "right_only").sum()),
        "n_expressed": float(expressed.sum()) if expressed is not None else float("nan"),
        "n_types": float(len(types)),
    }


def significant_jaccard(reference: pd.DataFrame, other: pd.DataFrame) -> dict[str, float]:
    """Jaccard overlap of the significant keys (cell types present in both tables)."""
    types = _types(reference) & _types(other)
    keys = [set(map(tuple, _restrict(t, types).loc[lambda d: d["significant"], KEYS].to_numpy()))
            for t in (reference, other)]
    union = keys[0] | keys[1]
    return {
        "jaccard_significant": len(keys[0] & keys[1]) / len(union) if union else float("nan"),
        "n_significant_reference": float(len(keys[0])),
        "n_significant_other": float(len(keys[1])),
        "n_significant_shared": float(len(keys[0] & keys[1])),
    }


def compare_interactions(reference: pd.DataFrame, other: pd.DataFrame, missing: float = 0.0) -> dict[str, object]:
    """:func:`aligned_rmse` and :func:`significant_jaccard`, plus the cell types left out."""
    types_ref, types_other = _types(reference), _types(other)
    excluded = sorted(types_ref ^ types_other)
    return {
        **aligned_rmse(reference, other, missing=missing),
        **significant_jaccard(reference, other),
        "types_excluded": ", ".join(excluded),
    }


def significant_counts(table: pd.DataFrame, types: list[str] | None = None) -> pd.DataFrame:
    """Number of significant interactions per source (rows) × target (columns) type (Fig 6)."""
    types = sorted(_types(table)) if types is None else list(types)
    counts = (table[table["significant"]].groupby(["source", "target"]).size()
              .unstack(fill_value=0).reindex(index=types, columns=types))
    present = _types(table)
    for t in types:  # 0 for types that were analysed, NaN for types with no interactions at all
        if t in present:
            counts.loc[t] = counts.loc[t].fillna(0)
    return counts.where(pd.DataFrame(
        [[s in present and t in present for t in types] for s in types], index=types, columns=types))
