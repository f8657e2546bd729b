"""Integrating several datasets: shared genes, harmonised labels, batch correction and its score.

Library code (no Kedro imports). The ``preprocessing`` pipeline uses it when the ``datasets``
parameter lists more than one input:

1. each dataset is validated and quality-controlled on its own;
2. :func:`check_gene_overlap` refuses a dataset whose genes barely overlap another's, and
   :func:`shared_genes` keeps the genes every dataset has;
3. :func:`harmonise_labels` maps each dataset's labels onto a shared vocabulary;
4. :func:`concatenate_datasets` stacks them with ``obs["batch"]``;
5. after normalisation, :func:`correct_batch_effects` corrects the log-expression in gene space
   (``none``, ``combat`` = :func:`scanpy.pp.combat`, ``linear`` = ``limma::removeBatchEffect``);
6. :func:`integration_scores` measures the batch mixing (scib's ASW-batch) and the cell-type
   separation before and after, and :func:`integration_figure` draws the UMAPs (the paper's Fig 2).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from cellsynth.data.validation import InputDataError
from cellsynth.reporting.html import Figure, Table, section
from cellsynth.schema import BATCH_KEY, LABEL_KEY

log = logging.getLogger(__name__)

SECTION_ID = "integration"
SECTION_TITLE = "Dataset integration"

METHODS = ("none", "combat", "linear")
UNCORRECTED_LAYER = "log_uncorrected"


# ----------------------------------------------------------------------------- the dataset list
@dataclass(frozen=True)
class DatasetSpec:
    """One entry of the ``datasets`` parameter."""

    name: str
    path: str
    label_key: str
    counts_layer: str | None = None
    batch_key: str | None = None  # an obs column splitting this dataset into several batches
    qc: dict[str, Any] = field(default_factory=dict)  # overrides of preprocessing.qc for this dataset

    @property
    def source(self) -> str:
        return f"dataset {self.name!r} ({self.path})"


def parse_dataset_specs(entries: Sequence[Mapping[str, Any]]) -> list[DatasetSpec]:
    """Check the ``datasets`` parameter: each entry needs ``name``, ``path`` and ``label_key``; names are unique."""
    known = {"name", "path", "label_key", "counts_layer", "batch_key", "qc"}
    specs: list[DatasetSpec] = []
    for i, entry in enumerate(entries):
        entry = dict(entry or {})
        missing = [k for k in ("name", "path", "label_key") if not entry.get(k)]
        if missing:
            raise InputDataError(f"datasets[{i}] lacks {missing}: every entry needs name (the batch), path and label_key.")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise InputDataError(f"datasets[{i}] ({entry['name']!r}) has unknown keys {unknown}; allowed: {sorted(known)}.")
        specs.append(
            DatasetSpec(
                name=str(entry["name"]),
                path=str(entry["path"]),
                label_key=str(entry["label_key"]),
                counts_layer=entry.get("counts_layer"),
                batch_key=entry.get("batch_key"),
                qc=dict(entry.get("qc") or {}),
            )
        )
    names = [s.name for s in specs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputDataError(f"datasets: names must be unique (they become the batch labels); repeated: {duplicated}.")
    return specs


# ----------------------------------------------------------------------------- genes
def check_gene_overlap(gene_sets: Mapping[str, Sequence[str]], *, min_overlap: float = 0.5) -> pd.DataFrame:
    """Pairwise gene overlap, as a share of the smaller gene set; refuse pairs under ``min_overlap``.

    Returns one row per pair (``dataset_a``, ``dataset_b``, ``genes_a``, ``genes_b``, ``shared``,
    ``overlap``). Raises :class:`InputDataError` naming both datasets of every pair under the threshold
    (typically different gene identifiers, e.g. Ensembl ids against symbols, or another species).
    """
    sets = {name: pd.Index(genes).astype(str) for name, genes in gene_sets.items()}
    rows = []
    for a, b in itertools.combinations(sets, 2):
        shared = len(sets[a].intersection(sets[b]))
        smaller = min(len(sets[a]), len(sets[b]))
        rows.append((a, b, len(sets[a]), len(sets[b]), shared, shared / smaller if smaller else 0.0))
    table = pd.DataFrame(rows, columns=["dataset_a", "dataset_b", "genes_a", "genes_b", "shared", "overlap"])
    bad = table[table["overlap"] < min_overlap]
    if len(bad):
        pairs = "; ".join(
            f"{r.dataset_a!r} and {r.dataset_b!r} share {r.shared} genes, {r.overlap:.0%} of the smaller "
            f"({min(r.genes_a, r.genes_b)} genes)"
            for r in bad.itertuples()
        )
        raise InputDataError(
            f"datasets with too few shared genes (under {min_overlap:.0%} of the smaller gene set): {pairs}. "
            "Check that every file uses the same gene identifiers (e.g. HGNC symbols, not Ensembl ids) and "
            "species, or remove the dataset from the `datasets` list (integration.min_gene_overlap sets the threshold)."
        )
    return table


def shared_genes(gene_sets: Mapping[str, Sequence[str]]) -> tuple[pd.Index, pd.DataFrame]:
    """The genes every dataset has (in the first dataset's order) and, per dataset, how many were dropped."""
    sets = {name: pd.Index(genes).astype(str) for name, genes in gene_sets.items()}
    if not sets:
        raise InputDataError("no dataset to integrate")
    names = list(sets)
    common = set(sets[names[0]])
    for name in names[1:]:
        common &= set(sets[name])
    genes = sets[names[0]][sets[names[0]].isin(common)]
    table = pd.DataFrame(
        {
            "dataset": names,
            "genes": [len(sets[n]) for n in names],
            "shared": len(genes),
            "dropped": [len(sets[n]) - len(genes) for n in names],
        }
    )
    for row in table.itertuples():
        log.info("dataset %r: %d of its %d genes are shared by every dataset, %d dropped", row.dataset, row.shared, row.genes, row.dropped)
    if len(genes) == 0:
        raise InputDataError(f"the datasets {names} share no gene; check their gene identifiers.")
    return genes, table


# ----------------------------------------------------------------------------- labels
def mapping_as_dict(mapping: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, *, dataset: str) -> dict[str, str | None]:
    """One dataset's label mapping as ``{label: shared label or None}``.

    Accepts a mapping, or a list of one-entry mappings (``- CD14+ Mono: CD14+ Mono``), the form
    shipped in the configuration: MLflow refuses parameter names with characters such as ``+``, and
    list values are logged as one string instead of one parameter per label.
    """
    if mapping is None:
        return {}
    if isinstance(mapping, Mapping):
        items = list(mapping.items())
    elif isinstance(mapping, Sequence) and not isinstance(mapping, str):
        items = []
        for entry in mapping:
            if not isinstance(entry, Mapping):
                raise InputDataError(f"label_mapping.{dataset}: expected 'label: shared label' entries, got {entry!r}")
            items.extend(entry.items())
    else:
        raise InputDataError(f"label_mapping.{dataset}: expected a mapping or a list of 'label: shared label' entries")
    out: dict[str, str | None] = {}
    for label, target in items:
        label = str(label)
        target = None if target is None else str(target)
        if label in out and out[label] != target:
            raise InputDataError(f"label_mapping.{dataset}: {label!r} is mapped twice ({out[label]!r} and {target!r})")
        out[label] = target
    return out


def harmonise_labels(
    adata: AnnData,
    mapping: Mapping[str, str | None] | Sequence[Mapping[str, str | None]] | None,
    *,
    dataset: str,
    unmapped: str = "keep",
) -> tuple[AnnData, pd.DataFrame]:
    """Map ``obs["cell_type"]`` onto a shared vocabulary.

    ``mapping`` (see :func:`mapping_as_dict`) sends each of the dataset's labels to a shared label,
    or to ``None`` (null in YAML):
    those cells are dropped, with a count. Labels absent from the mapping are *unmapped*: reported
    (warned) and kept as they are (``unmapped="keep"``) or dropped (``unmapped="drop"``). Without
    a mapping (``None`` or empty) the labels stay as they are and nothing is reported. Unlabelled
    cells (NaN) are left to :func:`~cellsynth.data.validation.drop_unusable_cells`.

    Returns the kept cells (a copy, labels categorical) and a table with one row per original label:
    ``dataset``, ``label``, ``harmonised`` (empty when dropped), ``n_cells``, ``status``
    (``mapped``, ``unmapped (kept)``, ``unmapped (dropped)``, ``mapped to nothing (dropped)``).
    """
    if unmapped not in ("keep", "drop"):
        raise InputDataError(f"label mapping: unmapped must be 'keep' or 'drop', got {unmapped!r}")
    labels = adata.obs[LABEL_KEY].astype(object)
    counts = labels.value_counts(dropna=True)
    mapping = mapping_as_dict(mapping, dataset=dataset)
    rows = []
    new = pd.Series(np.nan, index=adata.obs_names, dtype=object)
    keep = labels.isna().to_numpy().copy()  # unlabelled cells pass through (dropped later, counted there)
    for label, n in counts.items():
        label = str(label)
        is_label = (labels == label).to_numpy()
        if not mapping:
            status, target = "unchanged", label
        elif label in mapping:
            target = mapping[label]
            status = "mapped" if target is not None else "mapped to nothing (dropped)"
        else:
            status = "unmapped (kept)" if unmapped == "keep" else "unmapped (dropped)"
            target = label if unmapped == "keep" else None
        if target is not None:
            new[is_label] = target
            keep |= is_label
        rows.append((dataset, label, target or "", int(n), status))
    table = pd.DataFrame(rows, columns=["dataset", "label", "harmonised", "n_cells", "status"])
    absent = sorted(set(mapping) - set(map(str, counts.index)))
    if absent:
        log.info("dataset %r: mapped labels not present after QC: %s", dataset, absent)
    left = table[table["status"].str.startswith("unmapped")]
    if len(left):
        log.warning(
            "dataset %r: %d label(s) not in the label mapping, %s: %s",
            dataset, len(left), "kept as they are" if unmapped == "keep" else "their cells dropped",
            dict(zip(left["label"], left["n_cells"], strict=True)),
        )
    dropped = table.loc[table["harmonised"] == "", "n_cells"].sum()
    if dropped:
        log.warning(
            "dataset %r: dropped %d cells whose label maps to nothing (%s)",
            dataset, dropped, dict(zip(table.loc[table["harmonised"] == "", "label"], table.loc[table["harmonised"] == "", "n_cells"], strict=True)),
        )
    out = adata[keep].copy()
    out.obs[LABEL_KEY] = pd.Categorical(new[keep].to_numpy())
    return out, table


# ----------------------------------------------------------------------------- concatenation
def concatenate_datasets(parts: Mapping[str, AnnData], genes: Sequence[str]) -> AnnData:
    """Stack the datasets on ``genes`` with ``obs["batch"]`` (the dataset's name, unless it already has one).

    Cell names become ``<cell>-<dataset>`` (10x barcodes repeat across runs). ``obs`` keeps
    ``cell_type``, ``batch``, ``dataset`` and the QC columns; ``X`` stays sparse.
    """
    genes = pd.Index(genes).astype(str)
    pieces = []
    for name, part in parts.items():
        piece = part[:, genes].copy()
        piece.obs["dataset"] = name
        if BATCH_KEY in piece.obs:  # a dataset with batches of its own: "<dataset>/<batch>"
            piece.obs[BATCH_KEY] = name + "/" + piece.obs[BATCH_KEY].astype(str)
        else:
            piece.obs[BATCH_KEY] = name
        piece.obs[LABEL_KEY] = piece.obs[LABEL_KEY].astype(object)
        piece.uns = {}
        pieces.append(piece)
    combined = ad.concat(pieces, join="inner", keys=list(parts), index_unique="-", merge=None)
    combined.X = sp.csr_matrix(combined.X, dtype=np.float32)
    combined.var = pd.DataFrame(index=genes)
    for column in (LABEL_KEY, BATCH_KEY, "dataset"):
        combined.obs[column] = pd.Categorical(combined.obs[column].astype(object))
    return combined


# ----------------------------------------------------------------------------- correction
def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _design_check(batch: pd.Categorical, covariate: pd.Categorical | None) -> None:
    if len(batch.categories) < 2:
        raise InputDataError(f"batch correction needs at least two batches, got {list(batch.categories)}")
    if covariate is None:
        return
    present = pd.crosstab(np.asarray(covariate), np.asarray(batch)).gt(0)  # cell types × batches
    shared_types = present[present.sum(axis=1) > 1]
    alone = [str(b) for b in present.columns if not shared_types[b].any()]
    if alone:
        raise InputDataError(
            f"batch correction: batch(es) {alone} share no cell type with another batch, so their batch effect "
            "cannot be told apart from cell type (no cell type is present in more than one batch for them). "
            "Harmonise the labels (label_mapping) or set integration.protect_cell_type: false."
        )


def remove_batch_effect(
    X, batch: Sequence[str], covariates: Sequence[str] | None = None
) -> np.ndarray:
    """The equivalent of ``limma::removeBatchEffect(X, batch, design=model.matrix(~covariates))``.

    Per gene, least squares of the expression on an intercept, the covariate (treatment coding) and the
    batch (sum-to-zero coding); the fitted batch terms are subtracted, so each batch is moved to the
    average of the batches while the covariate's effect is kept. ``X`` is cells × genes (dense or sparse);
    returns a dense float32 array (values may be negative).
    """
    batch = pd.Categorical(np.asarray(batch).astype(str))
    covariate = None if covariates is None else pd.Categorical(np.asarray(covariates).astype(str))
    _design_check(batch, covariate)
    n = len(batch)
    codes = batch.codes
    k = len(batch.categories)
    contrasts = np.zeros((n, k - 1))  # contr.sum: batch j<k-1 -> e_j, the last batch -> -1
    for j in range(k - 1):
        contrasts[codes == j, j] = 1.0
    contrasts[codes == k - 1, :] = -1.0
    columns = [np.ones((n, 1))]
    if covariate is not None and len(covariate.categories) > 1:
        columns.append(np.eye(len(covariate.categories))[covariate.codes][:, 1:])
    design = np.hstack([*columns, contrasts])
    # Normal equations, X^T D computed without densifying a sparse X; lstsq copes with rank deficiency.
    xtd = X.T @ design if sp.issparse(X) else np.asarray(X, dtype=np.float64).T @ design
    coef, *_ = np.linalg.lstsq(design.T @ design, np.asarray(xtd).T, rcond=None)
    batch_coef = coef[-(k - 1) :]
    corrected = _dense(X).astype(np.float64) - contrasts @ batch_coef
    return corrected.astype(np.float32)


def _combat(X, batch: pd.Categorical, covariate: pd.Categorical | None) -> np.ndarray:
    """:func:`scanpy.pp.combat` on the genes it can fit; genes constant within a batch get ``linear``."""
    import scanpy as sc

    dense = _dense(X).astype(np.float64)
    variable = np.ones(dense.shape[1], dtype=bool)
    for code in range(len(batch.categories)):
        variable &= dense[batch.codes == code].var(axis=0) > 0
    corrected = np.empty_like(dense, dtype=np.float32)
    if (~variable).any():
        log.warning("combat: %d genes are constant within a batch; they get the linear correction instead", int((~variable).sum()))
        corrected[:, ~variable] = remove_batch_effect(dense[:, ~variable], batch, covariate)
    obs = pd.DataFrame({BATCH_KEY: batch}, index=[str(i) for i in range(len(batch))])
    covariates = None
    if covariate is not None and len(covariate.categories) > 1:
        # Treatment-coded numeric columns: scanpy one-hot encodes a categorical covariate in full,
        # next to the full batch one-hot, and that design is singular (sva drops a level, as here).
        covariates = [f"cell_type_{j}" for j in range(1, len(covariate.categories))]
        for j, name in enumerate(covariates, start=1):
            obs[name] = (covariate.codes == j).astype(np.float64)
    work = AnnData(X=dense[:, variable], obs=obs)
    corrected[:, variable] = sc.pp.combat(work, key=BATCH_KEY, covariates=covariates, inplace=False)
    return corrected


def correct_batch_effects(
    adata: AnnData, method: str = "linear", *, protect_cell_type: bool = True
) -> AnnData:
    """Batch-correct the log-expression ``X`` in gene space.

    ``method``: ``none`` (unchanged), ``combat`` (:func:`scanpy.pp.combat`) or ``linear``
    (:func:`remove_batch_effect`); ``protect_cell_type`` passes ``obs["cell_type"]`` as a covariate
    so that the biology is not removed with the batch in unbalanced designs. Reads ``obs["batch"]``.

    Returns a copy with the corrected values in ``X`` (dense float32, may be negative), the
    uncorrected log values in ``layers["log_uncorrected"]`` and ``uns["batch_correction"]``.
    ``layers["counts"]`` (raw counts) is kept.
    """
    if method not in METHODS:
        raise InputDataError(f"integration.method must be one of {list(METHODS)}, got {method!r}")
    if BATCH_KEY not in adata.obs:
        raise InputDataError("batch correction needs obs['batch']")
    out = adata.copy()
    out.layers[UNCORRECTED_LAYER] = sp.csr_matrix(adata.X, dtype=np.float32) if sp.issparse(adata.X) else adata.X.copy()
    batch = pd.Categorical(adata.obs[BATCH_KEY].astype(str))
    covariate = pd.Categorical(adata.obs[LABEL_KEY].astype(str)) if protect_cell_type else None
    if method == "linear":
        out.X = remove_batch_effect(adata.X, batch, covariate)
    elif method == "combat":
        _design_check(batch, covariate)
        if covariate is not None:
            log.warning(
                "combat with the cell type protected writes each cell's label into its values: the batch "
                "scale adjustment is applied around the cell's *type* mean, so even a gene's zeros end up at "
                "a type-specific value, and a classifier on these cells reads the label (PBMC3K + Zheng17: "
                "macro F1 1.00 with real cells only). Classification utility and other metrics on these cells "
                "are then optimistic. integration.method: linear (a per-batch shift, estimated with the type "
                "protected) does not do this."
            )
        out.X = _combat(adata.X, batch, covariate)
    if method != "none":
        n_negative = int((out.X < 0).sum())
        log.info(
            "batch correction %s (cell type %s): %d of %d values are now negative (kept as they are)",
            method, "protected" if protect_cell_type else "not protected", n_negative, out.X.size,
        )
    out.uns["batch_correction"] = {
        "method": method,
        "protect_cell_type": bool(protect_cell_type),
        "batches": [str(b) for b in batch.categories],
        "uncorrected_layer": UNCORRECTED_LAYER,
    }
    return out


# ----------------------------------------------------------------------------- scores
def batch_silhouette(
    embedding: np.ndarray, batch: Sequence[str], labels: Sequence[str] | None = None
) -> tuple[float, pd.DataFrame]:
    """scib's ASW-batch: silhouette of the batch labels scaled as ``1 - |s|`` (1 = well mixed, 0 = separated).

    With ``labels`` (the cell types), as scib: within each cell type present in at least two batches,
    the mean of ``1 - |s|`` over its cells; the score is the mean over those types. Without, the mean
    over all cells. Returns the score and the per-group table (``group``, ``n_cells``, ``n_batches``, ``asw_batch``).
    """
    from sklearn.metrics import silhouette_samples

    batch = np.asarray(batch).astype(str)
    groups = np.full(len(batch), "all", dtype=object) if labels is None else np.asarray(labels).astype(str)
    rows = []
    for group in pd.unique(groups):
        idx = np.flatnonzero(groups == group)
        n_batches = len(np.unique(batch[idx]))
        if n_batches < 2 or n_batches == len(idx):
            rows.append((group, len(idx), n_batches, np.nan))
            continue
        s = silhouette_samples(embedding[idx], batch[idx])
        rows.append((group, len(idx), n_batches, float(np.mean(1.0 - np.abs(s)))))
    table = pd.DataFrame(rows, columns=["group", "n_cells", "n_batches", "asw_batch"])
    scored = table["asw_batch"].dropna()
    if scored.empty:
        raise InputDataError("batch silhouette: no cell type is present in two batches")
    return float(scored.mean()), table


def label_silhouette(embedding: np.ndarray, labels: Sequence[str]) -> float:
    """scib's cell-type ASW: the mean silhouette of the labels, scaled to ``(s + 1) / 2`` (1 = types apart)."""
    from sklearn.metrics import silhouette_score

    return float((silhouette_score(embedding, np.asarray(labels).astype(str)) + 1.0) / 2.0)


@dataclass
class IntegrationScores:
    """Scores before/after correction and the embeddings they were computed on."""

    table: pd.DataFrame  # metric, before, after
    per_type: pd.DataFrame  # cell type, n_cells, n_batches, asw_batch_before, asw_batch_after
    cells: pd.DataFrame  # obs of the scored cells (batch, cell_type)
    embeddings: dict[str, np.ndarray]  # "before"/"after" -> PCA coordinates of the scored cells

    def metrics(self) -> dict[str, float]:
        flat = {}
        for row in self.table.itertuples():
            flat[f"{row.metric}_before"] = float(row.before)
            flat[f"{row.metric}_after"] = float(row.after)
        return flat


def _scoring_genes(adata: AnnData, n_top_genes: int) -> pd.Index:
    """HVGs for the scoring embedding: seurat_v3 on raw counts across batches (the same genes before and after)."""
    import scanpy as sc

    n_top = min(int(n_top_genes), adata.n_vars)
    if "counts" in adata.layers:
        work = AnnData(X=sp.csr_matrix(adata.layers["counts"]), obs=adata.obs[[BATCH_KEY]].copy())
        try:
            table = sc.pp.highly_variable_genes(
                work, n_top_genes=n_top, flavor="seurat_v3", batch_key=BATCH_KEY, inplace=False
            )
            return adata.var_names[np.asarray(table["highly_variable"], dtype=bool)]
        except Exception as exc:  # noqa: BLE001 - e.g. scikit-misc missing: fall back to variance
            log.warning("seurat_v3 HVG selection failed (%s); using the most variable log-expression genes", exc)
    values = adata.layers.get(UNCORRECTED_LAYER, adata.X)
    dense = _dense(values)
    return adata.var_names[np.argsort(-dense.var(axis=0), kind="stable")[:n_top]]


def _pca(values: np.ndarray, n_pcs: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n = min(int(n_pcs), values.shape[0] - 1, values.shape[1])
    return PCA(n_components=n, random_state=seed, svd_solver="full" if n >= min(values.shape) else "auto").fit_transform(values)


def integration_scores(
    adata: AnnData,
    *,
    n_top_genes: int = 2000,
    n_pcs: int = 30,
    max_cells: int | None = 20000,
    seed: int = 0,
) -> IntegrationScores:
    """Batch and cell-type silhouettes before (``layers["log_uncorrected"]``) and after (``X``) correction.

    Both in a PCA of the same HVGs (seurat_v3 on ``layers["counts"]`` with the batch; not scaled),
    on at most ``max_cells`` cells (seeded random subset). Rows of the table: ``asw_batch`` (scib's,
    per cell type, 1 = well mixed), ``asw_batch_all_cells`` (the same without cell types),
    ``asw_cell_type`` (1 = types apart; a correction that erases biology lowers it).
    """
    if UNCORRECTED_LAYER not in adata.layers:
        raise InputDataError(f"integration scores need layers[{UNCORRECTED_LAYER!r}] (run the batch correction first)")
    rng = np.random.default_rng(seed)
    idx = np.arange(adata.n_obs)
    if max_cells is not None and adata.n_obs > max_cells:
        idx = np.sort(rng.choice(adata.n_obs, int(max_cells), replace=False))
    genes = _scoring_genes(adata, n_top_genes)
    gene_idx = adata.var_names.get_indexer(genes)
    cells = adata.obs.iloc[idx][[BATCH_KEY, LABEL_KEY]].copy()
    batch = cells[BATCH_KEY].astype(str).to_numpy()
    labels = cells[LABEL_KEY].astype(str).to_numpy()
    embeddings, rows, per_type = {}, {}, {}
    for when, values in (("before", adata.layers[UNCORRECTED_LAYER]), ("after", adata.X)):
        matrix = values[idx][:, gene_idx]
        emb = _pca(_dense(matrix).astype(np.float64), n_pcs, seed)
        embeddings[when] = emb
        asw, table = batch_silhouette(emb, batch, labels)
        asw_all, _ = batch_silhouette(emb, batch)
        rows[when] = {"asw_batch": asw, "asw_batch_all_cells": asw_all, "asw_cell_type": label_silhouette(emb, labels)}
        per_type[when] = table.set_index("group")
    table = pd.DataFrame(
        [(m, rows["before"][m], rows["after"][m]) for m in rows["before"]], columns=["metric", "before", "after"]
    )
    types = per_type["before"][["n_cells", "n_batches"]].copy()
    types["asw_batch_before"] = per_type["before"]["asw_batch"]
    types["asw_batch_after"] = per_type["after"]["asw_batch"]
    types = types.rename_axis(LABEL_KEY).reset_index()
    for row in table.itertuples():
        log.info("integration: %s %.3f before, %.3f after correction", row.metric, row.before, row.after)
    return IntegrationScores(table=table, per_type=types, cells=cells, embeddings=embeddings)


# ----------------------------------------------------------------------------- figure and report
def umap_coordinates(embedding: np.ndarray, *, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """UMAP of a PCA embedding (scanpy's neighbours + UMAP, seeded)."""
    import scanpy as sc

    work = AnnData(X=np.zeros((embedding.shape[0], 1), dtype=np.float32))
    work.obsm["X_pca"] = np.asarray(embedding, dtype=np.float32)
    sc.pp.neighbors(work, n_neighbors=min(n_neighbors, embedding.shape[0] - 1), use_rep="X_pca", random_state=seed)
    sc.tl.umap(work, random_state=seed)
    return work.obsm["X_umap"]


def integration_figure(scores: IntegrationScores, *, method: str, n_neighbors: int = 15, seed: int = 0):
    """Fig 2: UMAPs before/after correction (rows), coloured by batch and by cell type (columns)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    batch = scores.cells[BATCH_KEY].astype(str).to_numpy()
    labels = scores.cells[LABEL_KEY].astype(str).to_numpy()
    values = scores.table.set_index("metric")
    fig, axes = plt.subplots(2, 2, figsize=(12, 10), squeeze=False)
    for r, when in enumerate(("before", "after")):
        coords = umap_coordinates(scores.embeddings[when], n_neighbors=n_neighbors, seed=seed)
        for c, (title, groups, metric) in enumerate(
            (("batch", batch, "asw_batch"), ("cell type", labels, "asw_cell_type"))
        ):
            ax = axes[r, c]
            cats = sorted(pd.unique(groups))
            cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
            order = np.random.default_rng(seed).permutation(len(groups))  # no batch drawn on top of the other
            colours = {g: cmap(i % cmap.N) for i, g in enumerate(cats)}
            ax.scatter(coords[order, 0], coords[order, 1], s=3, c=[colours[g] for g in groups[order]], linewidths=0)
            for g in cats:
                ax.scatter([], [], s=20, color=colours[g], label=g)
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False, markerscale=1.5)
            stage = "before correction" if when == "before" else f"after correction ({method})"
            ax.set_title(f"{stage}, by {title}\n{metric} = {values.loc[metric, when]:.3f}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("UMAP 1")
            ax.set_ylabel("UMAP 2")
    fig.tight_layout()
    return fig


def integration_section_html(
    *,
    dataset: str,
    method: str,
    protect_cell_type: bool,
    scores: pd.DataFrame,
    per_type: pd.DataFrame,
    cells_per_type: pd.DataFrame,
    genes: pd.DataFrame,
    labels: pd.DataFrame,
    figure_png_bytes: bytes,
) -> str:
    """The report's ``integration`` section (a fragment from :func:`cellsynth.reporting.html.section`)."""
    before, after = scores.set_index("metric").loc["asw_batch", ["before", "after"]]
    ct_before, ct_after = scores.set_index("metric").loc["asw_cell_type", ["before", "after"]]
    facts = [
        f"Batch correction: {method} in gene space"
        + (" with the cell type protected as a covariate" if protect_cell_type and method != "none" else "")
        + "; corrected values may be negative and are kept as they are.",
        f"Batch mixing (scib ASW-batch, 1 = well mixed): {before:.3f} before, {after:.3f} after correction.",
        f"Cell-type separation (ASW, 1 = types apart): {ct_before:.3f} before, {ct_after:.3f} after"
        + (" — the correction erased part of the biology." if ct_after < ct_before - 0.05 else "."),
    ]
    unmapped = labels[labels["status"].str.startswith("unmapped")]
    if len(unmapped):
        facts.append("Labels not in the mapping: "
                     + ", ".join(f"{r.dataset}: {r.label} ({r.n_cells})" for r in unmapped.itertuples()))
    dropped = labels[labels["harmonised"] == ""]
    if len(dropped):
        facts.append(f"Cells dropped by the label mapping: {int(dropped['n_cells'].sum())}.")
    figure = Figure("UMAP before and after batch correction", figure_png_bytes,
                    "UMAP of the PCA of the shared HVGs before and after correction, coloured by batch "
                    "and by harmonised cell type (Fig 2).")
    tables = [
        Table("Scores", scores, float_format=".3f"),
        Table("Cells per harmonised type and batch", cells_per_type, float_format=".0f"),
        Table("Batch mixing per cell type", per_type, float_format=".3f"),
        Table("Shared genes", genes),
        Table("Label harmonisation", labels, label_columns=3),
    ]
    return section(SECTION_ID, SECTION_TITLE, dataset=dataset, tables=tables, figures=[figure], facts=facts)


def cells_per_type(adata: AnnData) -> pd.DataFrame:
    """Cells per harmonised type (rows) and batch (columns), with a total."""
    table = pd.crosstab(adata.obs[LABEL_KEY].astype(str), adata.obs[BATCH_KEY].astype(str))
    table["total"] = table.sum(axis=1)
    table = table.sort_values("total", ascending=False)
    table.columns.name = None
    return table.rename_axis(LABEL_KEY).reset_index()
