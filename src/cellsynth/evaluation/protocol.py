"""What is compared with what: the paper's protocol and the honest protocol, as long-format rows.

Every function returns (or validates) a long table with the columns :data:`COLUMNS`:
``dataset, generator, fold, protocol, cell_type, metric, value``. See the package docstring of
:mod:`cellsynth.evaluation` for the full protocol.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from cellsynth.config import EvaluationSettings
from cellsynth.metrics import ReferenceSpace, compare, compare_by_type, paper_metrics, split_halves
from cellsynth.schema import (
    ALL_TYPES,
    FLOOR,
    LABEL_KEY,
    REAL_ONLY,
    REAL_ROWS,
    REAL_TRAIN_VS_TEST,
    SANITY_BASELINES,
)

log = logging.getLogger(__name__)

__all__ = [
    "ALL_TYPES",
    "COLUMNS",
    "COUNT_METRICS",
    "FLOOR",
    "HONEST",
    "LABEL_KEY",
    "PAPER",
    "PAPER_METRICS",
    "PAPER_UPSAMPLE",
    "RATIO_SUFFIX",
    "REAL_GENERATORS",
    "REAL_ONLY",
    "REAL_TRAIN_VS_TEST",
    "RUN",
    "SANITY_BASELINES",
    "UTILITY",
    "EvaluationSettings",
    "add_floor_ratios",
    "aligned_matrix",
    "cell_labels",
    "finite_cells",
    "fit_reference_space",
    "generator_metrics",
    "halves_from_split",
    "honest_split_frame",
    "long_frame",
    "matched_subsample",
    "project",
    "real_metrics",
    "run_info_rows",
    "validate_long_frame",
    "without_nonfinite",
]

COLUMNS = ["dataset", "generator", "fold", "protocol", "cell_type", "metric", "value"]
"""Columns of every long-format metrics table, in order."""

PAPER = "paper"
PAPER_UPSAMPLE = "paper_upsample"
HONEST = "honest"
UTILITY = "utility"
RUN = "run"

REAL_GENERATORS = REAL_ROWS

PAPER_METRICS = ("wd", "cd", "mmd")
COUNT_METRICS = ("n_cells_reference", "n_cells_compared")
RATIO_SUFFIX = "_ratio_to_floor"
RUN_INFO_KEYS = ("fit_seconds", "sample_seconds", "sample_cells_per_second", "peak_rss_gib_fit",
                 "peak_rss_gib_sample", "epochs_run", "train_loss_first", "train_loss_last")


# ----------------------------------------------------------------------------- long-format helpers
def long_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A long-format table with the :data:`COLUMNS` (and their dtypes) from row dicts."""
    frame = pd.DataFrame(list(rows), columns=COLUMNS)
    return _typed(frame)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[COLUMNS].copy()
    for column in ("dataset", "generator", "protocol", "cell_type", "metric"):
        frame[column] = frame[column].astype(str)
    frame["fold"] = frame["fold"].astype(np.int64)
    frame["value"] = frame["value"].astype(np.float64)
    return frame.reset_index(drop=True)


def validate_long_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Check the long-format schema (columns, dtypes, no duplicate key) and return it typed.

    Raises
    ------
    ValueError
        Missing columns, or two rows with the same (dataset, generator, fold, protocol, cell_type, metric).
    """
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}; expected {COLUMNS}")
    frame = _typed(frame)
    key = COLUMNS[:-1]
    duplicated = frame.duplicated(key, keep=False)
    if duplicated.any():
        raise ValueError(f"duplicate metric rows:\n{frame[duplicated].head(10)}")
    return frame


def _rows(metrics: Mapping[str, float], *, dataset: str, generator: str, fold: int, protocol: str,
          cell_type: str = ALL_TYPES) -> list[dict[str, Any]]:
    return [
        {"dataset": dataset, "generator": generator, "fold": int(fold), "protocol": protocol,
         "cell_type": cell_type, "metric": name, "value": float(value)}
        for name, value in metrics.items()
    ]


def _per_type_rows(by_type: pd.DataFrame, keep: Iterable[str] | None, **key: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for record in by_type.to_dict("records"):
        cell_type = str(record.pop("cell_type"))
        counts = {"n_cells_reference": record.pop("n_reference"), "n_cells_compared": record.pop("n_candidate")}
        values = record if keep is None else {m: record[m] for m in keep if m in record}
        rows += _rows({**values, **counts}, cell_type=cell_type, **key)
    return rows


# ----------------------------------------------------------------------------- inputs
def cell_labels(adata: AnnData, key: str = LABEL_KEY) -> np.ndarray | None:
    """Cell-type labels as a string array, or ``None`` when ``obs`` has no ``key`` column."""
    if key not in adata.obs.columns:
        return None
    return adata.obs[key].astype(str).to_numpy()


def aligned_matrix(adata: AnnData, var_names: Iterable[str]):
    """``adata.X`` with its genes in the order ``var_names`` (no copy when already aligned).

    Raises
    ------
    ValueError
        When ``adata`` lacks some of the genes.
    """
    var_names = pd.Index(var_names)
    if adata.var_names.equals(var_names):
        return adata.X
    missing = var_names.difference(adata.var_names)
    if len(missing):
        raise ValueError(f"{len(missing)} genes of the training cells are missing, e.g. {list(missing[:5])}")
    return adata[:, var_names].X


def finite_cells(adata: AnnData) -> np.ndarray:
    """Boolean mask of the cells whose expression is all finite (a diverged generator can emit NaN/inf)."""
    X = adata.X
    if sp.issparse(X):
        X = X.tocsr()
        bad = np.zeros(X.shape[0], dtype=bool)
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        bad[rows[~np.isfinite(X.data)]] = True
        return ~bad
    return np.isfinite(np.asarray(X)).all(axis=1)


def without_nonfinite(adata: AnnData, what: str) -> tuple[AnnData, int]:
    """``adata`` restricted to its finite cells (a view; the input is untouched) and the number dropped.

    Raises
    ------
    ValueError
        When no cell is finite.
    """
    mask = finite_cells(adata)
    dropped = int((~mask).sum())
    if dropped == 0:
        return adata, 0
    if not mask.any():
        raise ValueError(f"every one of the {adata.n_obs} {what} cells has non-finite values")
    log.warning("%d of %d %s cells have non-finite values and are left out of the evaluation",
                dropped, adata.n_obs, what)
    return adata[mask], dropped


def fit_reference_space(train: AnnData, n_components: int = 50, seed: int = 0) -> ReferenceSpace:
    """``StandardScaler`` + ``PCA(n_components, seed)`` fitted on the fold's real training cells only."""
    space = ReferenceSpace(n_components=n_components, seed=seed).fit(train.X)
    space.var_names_ = np.asarray(train.var_names, dtype=object)
    return space


def project(space: ReferenceSpace, adata: AnnData) -> np.ndarray:
    """Cells of ``adata`` in the reference space (genes aligned to the space's training genes)."""
    var_names = getattr(space, "var_names_", None)
    X = adata.X if var_names is None else aligned_matrix(adata, var_names)
    return space.transform(X)


# ----------------------------------------------------------------------------- honest split
def honest_split_frame(test: AnnData, seed: int, fold: int) -> pd.DataFrame:
    """The stratified, seeded halves A/B of the test cells as a table.

    Columns ``cell`` (obs name), ``position`` (row in ``test``), ``half`` ("A"/"B"),
    ``cell_type``, ``fold``; rows in test order. Uses :func:`cellsynth.metrics.split_halves`.
    """
    labels = cell_labels(test)
    if labels is None:
        raise ValueError(f"test cells have no obs[{LABEL_KEY!r}] column")
    idx_a, idx_b = split_halves(labels, seed=seed)
    half = np.empty(test.n_obs, dtype=object)
    half[idx_a] = "A"
    half[idx_b] = "B"
    return pd.DataFrame(
        {
            "cell": np.asarray(test.obs_names, dtype=str),
            "position": np.arange(test.n_obs, dtype=np.int64),
            "half": half.astype(str),
            "cell_type": labels,
            "fold": np.int64(fold),
        }
    )


def halves_from_split(split: pd.DataFrame, test: AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Positions of halves A and B in ``test``, checked against the saved cell names."""
    if len(split) != test.n_obs or not np.array_equal(split["cell"].astype(str).to_numpy(),
                                                      np.asarray(test.obs_names, dtype=str)):
        raise ValueError("the honest split does not belong to these test cells (re-run the evaluation's split node)")
    positions = split["position"].to_numpy(dtype=np.int64)
    half = split["half"].astype(str).to_numpy()
    return np.sort(positions[half == "A"]), np.sort(positions[half == "B"])


def matched_subsample(labels: np.ndarray | None, target_counts: Mapping[str, int], seed: int) -> np.ndarray:
    """Positions of a seeded subsample of synthetic cells with the per-type counts of ``target_counts``.

    For each type of ``target_counts`` in sorted order, ``min(target, available)`` cells of that type
    are drawn without replacement with ``numpy.random.default_rng(seed).choice``; a shortfall (types
    the generator lacks or under-produced) is filled with cells drawn at random from the rest, so the
    total is ``sum(target_counts)`` whenever the synthetic set is that large (else all its cells).
    Without labels, a plain seeded subsample.

    Returns
    -------
    np.ndarray of int64
        Sorted positions.
    """
    rng = np.random.default_rng(seed)
    total = int(sum(int(v) for v in target_counts.values()))
    n_available = 0 if labels is None else len(labels)
    chosen: list[np.ndarray] = []
    if labels is not None:
        labels = np.asarray(labels, dtype=str)
        for cell_type in sorted(target_counts):
            pool = np.flatnonzero(labels == str(cell_type))
            take = min(int(target_counts[cell_type]), len(pool))
            if take:
                chosen.append(rng.choice(pool, take, replace=False))
    picked = np.concatenate(chosen).astype(np.int64) if chosen else np.array([], dtype=np.int64)
    shortfall = total - len(picked)
    if shortfall > 0:
        rest = np.setdiff1d(np.arange(n_available, dtype=np.int64), picked)
        picked = np.concatenate([picked, rng.choice(rest, min(shortfall, len(rest)), replace=False)])
    return np.sort(picked.astype(np.int64))


def _matched_subsample_any(synthetic: AnnData, target_counts: Mapping[str, int], seed: int) -> np.ndarray:
    labels = cell_labels(synthetic)
    if labels is None:
        rng = np.random.default_rng(seed)
        total = int(sum(target_counts.values()))
        return np.sort(rng.choice(synthetic.n_obs, min(total, synthetic.n_obs), replace=False)).astype(np.int64)
    return matched_subsample(labels, target_counts, seed)


# ----------------------------------------------------------------------------- metrics
def _paper_rows(reference: np.ndarray, candidate: np.ndarray, settings: EvaluationSettings,
                **key: Any) -> list[dict[str, Any]]:
    counts = {"n_cells_reference": len(reference), "n_cells_compared": len(candidate)}
    return _rows({**paper_metrics(reference, candidate, **{"mmd_max_cells": settings.mmd_max_cells, "seed": settings.seed}), **counts}, **key)


def _paper_by_type(reference: np.ndarray, reference_labels: np.ndarray, candidate: np.ndarray,
                   candidate_labels: np.ndarray, settings: EvaluationSettings) -> pd.DataFrame:
    """The paper's metrics per cell type (only those: the rest of :func:`compare` would be discarded)."""
    return compare_by_type(reference, reference_labels, candidate, candidate_labels,
                           min_cells=settings.min_cells_per_type, measure=paper_metrics, **{"mmd_max_cells": settings.mmd_max_cells, "seed": settings.seed})


def _honest_rows(reference: np.ndarray, candidate: np.ndarray, z_train: np.ndarray,
                 settings: EvaluationSettings, **key: Any) -> list[dict[str, Any]]:
    counts = {"n_cells_reference": len(reference), "n_cells_compared": len(candidate)}
    metrics = compare(reference, candidate, train=z_train, **settings.compare_kwargs())
    return _rows({**metrics, **counts}, **key)


def real_metrics(
    train: AnnData,
    test: AnnData,
    space: ReferenceSpace,
    split: pd.DataFrame,
    settings: EvaluationSettings,
    *,
    dataset: str,
    fold: int,
) -> pd.DataFrame:
    """The real-data rows of one fold: the paper's "train vs test" and the honest floor (B vs A).

    Rows: ``paper`` and ``paper_upsample`` × ``real train vs test`` (all training cells vs all test
    cells: wd, cd, mmd), ``honest`` × ``real (B vs A floor)`` (every :func:`cellsynth.metrics.compare`
    metric, B against A, memorisation relative to A), their per-type versions, and the floor's
    ``<metric>_ratio_to_floor`` (1 by construction).
    """
    z_train, z_test = project(space, train), project(space, test)
    y_train, y_test = cell_labels(train), cell_labels(test)
    idx_a, idx_b = halves_from_split(split, test)
    key = {"dataset": dataset, "fold": fold}
    rows = _paper_rows(z_test, z_train, settings, generator=REAL_TRAIN_VS_TEST, protocol=PAPER, **key)
    rows += [{**row, "protocol": PAPER_UPSAMPLE} for row in rows]  # the same comparison, both tables
    rows += _honest_rows(z_test[idx_a], z_test[idx_b], z_train, settings, generator=FLOOR, protocol=HONEST, **key)
    if settings.per_type and y_test is not None and y_train is not None:
        by_type = _paper_by_type(z_test, y_test, z_train, y_train, settings)
        rows += _per_type_rows(by_type, PAPER_METRICS, generator=REAL_TRAIN_VS_TEST, protocol=PAPER, **key)
        by_type = compare_by_type(z_test[idx_a], y_test[idx_a], z_test[idx_b], y_test[idx_b],
                                  min_cells=settings.min_cells_per_type, train=z_train, **settings.compare_kwargs())
        rows += _per_type_rows(by_type, None, generator=FLOOR, protocol=HONEST, **key)
    frame = long_frame(rows)
    return add_floor_ratios(frame, frame)


def run_info_rows(uns: Mapping[str, Any] | None, *, dataset: str, generator: str, fold: int) -> pd.DataFrame:
    """Protocol ``run`` rows from a synthetic AnnData's ``uns["cellsynth"]`` (fit/sample time, ...)."""
    info = dict(uns or {})
    values = {}
    for name in RUN_INFO_KEYS:
        try:
            value = float(info[name])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(value):
            values[name] = value
    return long_frame(_rows(values, dataset=dataset, generator=generator, fold=fold, protocol=RUN))


def generator_metrics(
    train: AnnData,
    test: AnnData,
    synthetic: AnnData,
    upsample: AnnData | None,
    space: ReferenceSpace,
    split: pd.DataFrame,
    floor: pd.DataFrame | None,
    settings: EvaluationSettings,
    *,
    dataset: str,
    generator: str,
    fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All distribution metrics of one generator on one fold, plus the honest sample it used.

    Parameters
    ----------
    train, test : AnnData
        The fold's real cells.
    synthetic : AnnData
        The generator's ``matched`` cells (n = test size). Cells with non-finite values are left out
        (counted in the ``run`` row ``nonfinite_cells_synthetic``).
    upsample : AnnData or None
        The generator's Q3 top-up cells (protocol ``paper_upsample``; skipped when ``None``; non-finite
        cells left out and counted in ``nonfinite_cells_upsample``).
    space : ReferenceSpace
        The fold's reference space (:func:`fit_reference_space`).
    split : pandas.DataFrame
        The fold's honest split (:func:`honest_split_frame`).
    floor : pandas.DataFrame or None
        The fold's real rows (:func:`real_metrics`), for the ratios to the floor; ``None``: no ratio
        rows (add them later with :func:`add_floor_ratios`, as the pipeline does when it collects).
    settings : EvaluationSettings

    Returns
    -------
    metrics : pandas.DataFrame
        Long format (:data:`COLUMNS`): protocols ``paper``, ``paper_upsample``, ``honest`` (with
        ``*_ratio_to_floor``) and ``run``.
    honest_sample : pandas.DataFrame
        ``cell``, ``position`` (row in ``synthetic``), ``cell_type``, ``generator``, ``fold`` of the
        synthetic cells compared with half A.
    """
    key = {"dataset": dataset, "fold": fold, "generator": generator}
    finite = finite_cells(synthetic)
    kept = np.flatnonzero(finite)  # positions in the synthetic file of the cells evaluated
    matched, dropped = without_nonfinite(synthetic, f"{generator} synthetic")
    rows = _rows({"nonfinite_cells_synthetic": dropped}, protocol=RUN, **key)
    z_train, z_test, z_synth = project(space, train), project(space, test), project(space, matched)
    y_test, y_synth = cell_labels(test), cell_labels(matched)
    idx_a, idx_b = halves_from_split(split, test)

    rows += _paper_rows(z_test, z_synth, settings, protocol=PAPER, **key)
    if upsample is not None and upsample.n_obs:
        extra, dropped = without_nonfinite(upsample, f"{generator} upsample")
        rows += _rows({"nonfinite_cells_upsample": dropped}, protocol=RUN, **key)
        z_up = project(space, extra)
        rows += _paper_rows(z_test, np.vstack([z_train, z_up]), settings, protocol=PAPER_UPSAMPLE, **key)

    b_counts = pd.Series(y_test[idx_b]).value_counts().to_dict()
    chosen = _matched_subsample_any(matched, b_counts, settings.seed)
    z_sample = z_synth[chosen]
    rows += _honest_rows(z_test[idx_a], z_sample, z_train, settings, protocol=HONEST, **key)

    if settings.per_type and y_synth is not None:
        by_type = _paper_by_type(z_test, y_test, z_synth, y_synth, settings)
        rows += _per_type_rows(by_type, PAPER_METRICS, protocol=PAPER, **key)
        by_type = compare_by_type(z_test[idx_a], y_test[idx_a], z_sample, y_synth[chosen],
                                  min_cells=settings.min_cells_per_type, train=z_train, **settings.compare_kwargs())
        rows += _per_type_rows(by_type, None, protocol=HONEST, **key)

    frame = pd.concat(
        [long_frame(rows), run_info_rows(synthetic.uns.get("cellsynth"), **key)], ignore_index=True
    )
    if floor is not None:
        frame = add_floor_ratios(frame, floor)
    sample = pd.DataFrame(
        {
            "cell": np.asarray(synthetic.obs_names, dtype=str)[kept[chosen]],
            "position": kept[chosen],
            "cell_type": y_synth[chosen] if y_synth is not None else "",
            "generator": generator,
            "fold": np.int64(fold),
        }
    )
    return validate_long_frame(frame), sample


def add_floor_ratios(frame: pd.DataFrame, floor: pd.DataFrame) -> pd.DataFrame:
    """Append ``<metric>_ratio_to_floor`` rows for every ``honest`` row of ``frame``.

    ratio = value / floor value of the same dataset, fold, cell type and metric, where the floor is
    the ``real (B vs A floor)`` rows of ``floor``; NaN when the floor value is ≤ 0 or not finite.
    Count rows and existing ratio rows are skipped. The floor's own ratio is 1.
    """
    honest = frame[(frame["protocol"] == HONEST)
                   & ~frame["metric"].isin(COUNT_METRICS)
                   & ~frame["metric"].str.endswith(RATIO_SUFFIX)]
    base = floor[(floor["generator"] == FLOOR) & (floor["protocol"] == HONEST)]
    base = base[["dataset", "fold", "cell_type", "metric", "value"]].rename(columns={"value": "floor"})
    if honest.empty:
        return frame
    merged = honest.merge(base, on=["dataset", "fold", "cell_type", "metric"], how="inner")
    floor_values = merged["floor"].to_numpy(dtype=np.float64)
    ok = np.isfinite(floor_values) & (floor_values > 0)
    ratio = np.full(len(merged), np.nan)
    np.divide(merged["value"].to_numpy(dtype=np.float64), floor_values, out=ratio, where=ok)
    merged = merged.assign(value=ratio, metric=merged["metric"] + RATIO_SUFFIX).drop(columns="floor")
    return _typed(pd.concat([frame, merged[COLUMNS]], ignore_index=True))
