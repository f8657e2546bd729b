"""Generators of raw counts: what they share, from the training counts to cells in the fold's space.

A :class:`CountGenerator` learns the fold's HVG **counts** (``layers["counts"]``) rather than the
log-normalised ``X``, and samples integer counts. Its cells reach the fold's space exactly as the
preprocessing put real cells there: ``X = log1p(counts / total_counts * target_sum)``, where
``total_counts`` is the cell's library size over *all* genes (the HVGs hold only part of it) and
``target_sum`` the fold's ``uns["normalisation"]["target_sum"]``. So the synthetic cells carry both
``X`` and ``layers["counts"]``, and go through a user's usual QC and normalisation.

Library sizes are modelled per cell type (:class:`LibrarySizes`): a bivariate normal of the log HVG
library and the log ratio of total to HVG counts, type means with a covariance shrunk towards the
pooled within-type covariance (rare types borrow the spread of the others).
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from cellsynth.generators.base import EpochCallback, Generator, GeneratorError, TrainingHistory, rng_scope
from cellsynth.schema import COUNTS_LAYER

#: The preprocessing's default ``target_sum`` (``uns["normalisation"]`` of a fold says the one used).
DEFAULT_TARGET_SUM = 10_000.0
#: Cells a type's own covariance counts for against the pooled one (shrinkage of rare types' spread).
_SHRINKAGE_CELLS = 10.0
_LIBRARY_FILE = "library_sizes.json"
#: Cells per block of :func:`negative_binomial` (each block has its own stream, so the counts do
#: not depend on how many threads draw them).
NB_BLOCK = 256


def training_counts(adata: AnnData, owner: str) -> sp.csr_matrix:
    """The HVG counts of ``adata`` (``layers["counts"]``) as CSR float32, checked to be counts."""
    if COUNTS_LAYER not in adata.layers:
        raise GeneratorError(
            f"{owner}: models raw counts and needs layers[{COUNTS_LAYER!r}] (the preprocessing keeps them); "
            f"this AnnData has layers {list(adata.layers)}"
        )
    counts = sp.csr_matrix(adata.layers[COUNTS_LAYER], dtype=np.float32)
    values = counts.data
    if not np.isfinite(values).all() or (values < 0).any() or not np.array_equal(values, np.round(values)):
        raise GeneratorError(
            f"{owner}: layers[{COUNTS_LAYER!r}] must hold non-negative integer counts (raw UMI or read counts)"
        )
    if (np.asarray(counts.sum(axis=1)).ravel() == 0).any():
        raise GeneratorError(f"{owner}: some training cells have no counts in these genes; drop them first")
    return counts


def negative_binomial(mean: np.ndarray, theta: np.ndarray, rng: np.random.Generator, *,
                      dropout: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """Negative-binomial counts (float32) of ``mean`` and inverse dispersion ``theta`` (cells × genes).

    Drawn as Poisson(Gamma(theta, mean / theta)), zero where a uniform falls below ``dropout`` (the
    zero-inflation probability, if given). Blocks of :data:`NB_BLOCK` cells draw from streams spawned
    from ``rng`` on ``threads`` threads (numpy releases the GIL while drawing): the same ``rng`` state
    gives the same counts for any ``threads``.
    """
    mean = np.asarray(mean, dtype=np.float32)
    theta = np.broadcast_to(np.asarray(theta, dtype=np.float32), mean.shape)
    starts = range(0, len(mean), NB_BLOCK)
    streams = rng.spawn(len(starts))
    out = np.empty(mean.shape, dtype=np.float32)

    def draw(block: int) -> None:
        rows, stream = slice(starts[block], starts[block] + NB_BLOCK), streams[block]
        rate = stream.standard_gamma(theta[rows], dtype=np.float32)  # float32: half the time of float64
        rate *= mean[rows] / theta[rows]
        drawn = stream.poisson(rate)
        if dropout is not None:
            drawn[stream.random(drawn.shape, dtype=np.float32) < dropout[rows]] = 0
        out[rows] = drawn

    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            list(pool.map(draw, range(len(starts))))
    else:
        for block in range(len(starts)):
            draw(block)
    return out


def to_fold_space(counts: np.ndarray, total_counts: np.ndarray, target_sum: float) -> np.ndarray:
    """``log1p(counts / total_counts * target_sum)`` (float32): the preprocessing's LogNormalize."""
    factors = np.float32(target_sum) / total_counts.astype(np.float32)
    scaled = np.multiply(counts, factors[:, None], dtype=np.float32)  # one float32 array, even from int counts
    return np.log1p(scaled, out=scaled)


class LibrarySizes:
    """Per-type distribution of a cell's HVG library and of its total library (all genes).

    ``(log hvg_counts, log(total_counts / hvg_counts))`` is bivariate normal per type: the type's
    mean, and its covariance shrunk towards the pooled within-type covariance with weight
    ``n_type / (n_type + 10)``.
    """

    def __init__(self, means: np.ndarray, covariances: np.ndarray):
        self.means = np.asarray(means, dtype=np.float64)  # types × 2
        self.covariances = np.asarray(covariances, dtype=np.float64)  # types × 2 × 2

    @classmethod
    def fit(cls, hvg_counts: np.ndarray, total_counts: np.ndarray, labels: np.ndarray, n_types: int) -> LibrarySizes:
        features = np.column_stack([np.log(hvg_counts), np.log(total_counts / hvg_counts)])
        means = np.stack([features[labels == t].mean(axis=0) for t in range(n_types)])
        centred = features - means[labels]
        pooled = centred.T @ centred / max(len(features) - n_types, 1)
        covariances = []
        for t in range(n_types):
            own = centred[labels == t]
            weight = len(own) / (len(own) + _SHRINKAGE_CELLS)
            own_cov = own.T @ own / max(len(own) - 1, 1)
            covariances.append(weight * own_cov + (1 - weight) * pooled)
        return cls(means, np.stack(covariances))

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(hvg_library, total_to_hvg_ratio)`` per requested type code (the ratio is at least 1)."""
        draws = np.empty((len(labels), 2))
        for t in np.unique(labels):
            rows = np.flatnonzero(labels == t)
            draws[rows] = rng.multivariate_normal(self.means[t], self.covariances[t], size=len(rows), method="eigh")
        return np.exp(draws[:, 0]), np.exp(np.maximum(draws[:, 1], 0.0))

    def state(self) -> dict:
        return {"means": self.means.tolist(), "covariances": self.covariances.tolist()}


class CountGenerator(Generator):
    """A generator of raw counts (see the module docstring).

    Subclasses implement ``_fit_counts(counts, labels, *, seed, progress, on_epoch)`` on the CSR
    float32 HVG counts and ``_sample_counts(labels, hvg_library, *, seed)`` returning a dense array
    of non-negative integer counts with expected library ``hvg_library``, plus ``_save_model`` and
    ``_load_model``. Fitting reads ``layers["counts"]``, ``obs[label_key]``, ``obs["total_counts"]``
    (library size over all genes; the HVG sum when absent) and ``uns["normalisation"]``.
    """

    models_counts = True

    def fit(self, adata: AnnData, *, seed: int = 0, progress: bool = True,
            on_epoch: EpochCallback | None = None) -> TrainingHistory:
        """Learn the counts of ``adata`` (see the class docstring for the fields read). Does not modify ``adata``."""
        corrected = (adata.uns.get("batch_correction") or {}).get("method", "none")
        if corrected != "none":
            raise GeneratorError(
                f"{self.name}: X is batch-corrected ({corrected}) and the counts are not, so sampled cells would "
                "not be in X's space; use a gene-space generator for integrated data")
        labels = self._training_labels(adata)
        counts = training_counts(adata, self.name)
        hvg_library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
        total = adata.obs["total_counts"].to_numpy(np.float64) if "total_counts" in adata.obs else hvg_library
        self.library_ = LibrarySizes.fit(hvg_library, np.maximum(total, hvg_library), labels, len(self.cell_types_))
        self.target_sum_ = float(adata.uns.get("normalisation", {}).get("target_sum", DEFAULT_TARGET_SUM))
        self.nonnegative_ = True
        started = time.perf_counter()
        with rng_scope():
            history = self._fit_counts(counts, labels, seed=seed, progress=progress, on_epoch=on_epoch)
        history.fit_seconds = time.perf_counter() - started
        return history

    def _fit(self, X, labels, *, seed, progress, on_epoch):  # pragma: no cover - fit() is overridden
        raise NotImplementedError("count generators fit on layers['counts'] through fit()")

    def _sample(self, labels: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, 1])
        hvg_library, total_ratio = self.library_.sample(labels, rng)
        counts = self._sample_counts(labels, hvg_library, seed=seed)
        total = np.maximum(counts.sum(axis=1) * total_ratio, 1.0)
        return to_fold_space(counts, total, self.target_sum_), counts

    def _save_state(self, directory: Path) -> None:
        state = {"library": self.library_.state(), "target_sum": self.target_sum_}
        (directory / _LIBRARY_FILE).write_text(json.dumps(state))
        self._save_model(directory)

    def _load_state(self, directory: Path) -> None:
        state = json.loads((directory / _LIBRARY_FILE).read_text())
        self.library_ = LibrarySizes(state["library"]["means"], state["library"]["covariances"])
        self.target_sum_ = float(state["target_sum"])
        self._load_model(directory)

    @abstractmethod
    def _fit_counts(self, counts: sp.csr_matrix, labels: np.ndarray, *, seed: int, progress: bool,
                    on_epoch: EpochCallback | None) -> TrainingHistory: ...

    @abstractmethod
    def _sample_counts(self, labels: np.ndarray, hvg_library: np.ndarray, *, seed: int) -> np.ndarray: ...

    @abstractmethod
    def _save_model(self, directory: Path) -> None: ...

    @abstractmethod
    def _load_model(self, directory: Path) -> None: ...
