"""Sanity baselines: cheap reference generators that bracket what the metrics can tell apart.

None of them learns anything beyond per-type statistics of the training cells, and none has epochs.
They exist so that every metric table has reference rows with a known answer:

``train_copy``
    Copies of training cells: the *memorisation* reference. Perfect realism, zero novelty; a
    privacy / overfitting metric must flag it.
``gene_shuffle``
    Each gene drawn independently from that type's training values: right per-gene marginals
    within each type, no gene-gene structure. A metric that cannot tell it from real data is blind
    to correlation.
``class_gaussian_pca``
    One multivariate Gaussian per cell type in a PCA space of the training cells, back-projected:
    right type means and low-rank covariance, but smooth (no zero inflation, no fine structure).

All three are conditional (every requested cell type is sampled from that type's training cells or
statistics), reproducible (``sample(seed=s)`` always gives the same cells, also after
``save`` / ``load``), and store their state in one ``.npz`` file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cellsynth.generators.base import (
    EpochCallback,
    Generator,
    GeneratorError,
    TrainingHistory,
    column_mean_std,
    row_blocks,
)
from cellsynth.generators.params import Check
from cellsynth.schema import LABEL_KEY

_STATE_FILE = "baseline_state.npz"
#: Cells per block when resampling genes independently (bounds the index matrix's memory).
_BLOCK = 4096


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The baseline has no hyperparameter."""


class _TrainingCellsBaseline(Generator):
    """Shared state of the baselines that resample the training matrix itself.

    Keeps the training matrix (``_X``, float32) and codes (``_labels``), saved in one ``.npz``.
    Subclasses implement ``_draw(rows, n, rng)``: ``n`` new cells from the training rows ``rows``
    (all of one type), using only ``rng``; types are visited in code order, so a seed fixes the
    cells whatever the order of the request.
    """

    Params = NoParams

    def __init__(self, label_key: str = LABEL_KEY, **hyperparameters):
        super().__init__(label_key=label_key, **hyperparameters)
        self._X: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def _fit(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int,
        progress: bool,
        on_epoch: EpochCallback | None,
    ) -> TrainingHistory:
        self._X = X  # the fit's own copy (Generator.fit): kept, not copied again
        self._labels = labels.copy()
        return TrainingHistory()

    def _rows_of_type(self, code: int) -> np.ndarray:
        rows = np.flatnonzero(self._labels == code)
        if len(rows) == 0:  # cannot happen for codes that came from the training labels
            raise GeneratorError(f"{self.name}: no training cell of type {self.cell_types_[code]!r}")
        return rows

    def _sample(self, labels: np.ndarray, *, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((len(labels), self._X.shape[1]), dtype=np.float32)
        # Types in code order so the draws do not depend on the order of the request's rows.
        for code in np.unique(labels):
            positions = np.flatnonzero(labels == code)
            out[positions] = self._draw(self._rows_of_type(int(code)), len(positions), rng)
        return out

    def _draw(self, rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _save_state(self, directory: Path) -> None:
        np.savez_compressed(directory / _STATE_FILE, X=self._X, labels=self._labels)

    def _load_state(self, directory: Path) -> None:
        with np.load(directory / _STATE_FILE) as state:
            self._X = state["X"].astype(np.float32)
            self._labels = state["labels"].astype(np.int64)


class TrainCopyGenerator(_TrainingCellsBaseline):
    """Copies of training cells of the requested type: the memorisation reference.

    Each synthetic cell of type *t* is a training cell of type *t* drawn uniformly with
    replacement, returned unchanged. Tests whether a metric rewards plain memorisation: copies score
    perfectly on realism (WD, MMD, C2ST against the training cells) yet have zero novelty, so
    distance-to-closest-record / privacy metrics must single them out.
    """

    name = "train_copy"

    def _draw(self, rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return self._X[rng.choice(rows, size=n, replace=True)]


class GeneShuffleGenerator(_TrainingCellsBaseline):
    """Every gene drawn independently from that gene's training values within the requested type.

    For a cell of type *t*, the value of gene *g* is the value of *g* in a training cell of type
    *t* drawn uniformly with replacement, independently for every gene (and cell). Per-gene
    marginals within each type are exactly right; gene-gene correlation within a type is destroyed
    (only the between-type structure of the means survives). Tests whether a metric sees
    gene-gene structure at all.
    """

    name = "gene_shuffle"

    def _draw(self, rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        n_genes = self._X.shape[1]
        genes = np.arange(n_genes)[None, :]
        out = np.empty((n, n_genes), dtype=np.float32)
        # In blocks of cells: the index matrix is 8 bytes per cell and gene.
        for start in range(0, n, _BLOCK):
            stop = min(start + _BLOCK, n)
            picks = rows[rng.integers(0, len(rows), size=(stop - start, n_genes))]
            out[start:stop] = self._X[picks, genes]
        return out


@dataclasses.dataclass(frozen=True)
class ClassGaussianPCAParams:
    """Hyperparameters of :class:`ClassGaussianPCAGenerator`."""

    #: PCA dimensions; clipped to ``min(n_cells - 1, n_genes)`` of the training data.
    n_components: int = 50
    #: z-score genes (training statistics) before the PCA, as the seed paper does before every
    #: generator; samples are transformed back.
    standardize: bool = True

    def __post_init__(self) -> None:
        Check("class_gaussian_pca", self).integer("n_components")


class ClassGaussianPCAGenerator(Generator):
    """One Gaussian per cell type in a PCA space of the training cells, back-projected to genes.

    Fit: genes are (optionally) z-scored, a PCA with ``n_components`` (clipped to the data) is
    fitted on all training cells (``random_state`` = the fit seed, so the randomized solver is
    reproducible), and each type's PC scores get their own mean and full covariance. Sample: draws
    from the requested type's Gaussian (a type with one cell has zero covariance and returns its
    mean), maps back through the PCA and the scaler.

    Tests what a smooth low-rank model with the right per-type means and covariances already
    achieves on a metric: it has no zero inflation and no structure beyond the leading PCs.
    """

    name = "class_gaussian_pca"
    Params = ClassGaussianPCAParams

    def __init__(self, label_key: str = LABEL_KEY, **hyperparameters):
        super().__init__(label_key=label_key, **hyperparameters)
        self._state: dict[str, np.ndarray] | None = None

    def _fit(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int,
        progress: bool,
        on_epoch: EpochCallback | None,
    ) -> TrainingHistory:
        from sklearn.decomposition import PCA

        gene_mean, std = column_mean_std(X)
        gene_scale = np.where(std > 1e-8, std, 1.0) if self.params.standardize else np.ones(X.shape[1])
        Z = X  # z-scored in place (X is the fit's own copy); the PCA scores are all that is kept
        Z -= gene_mean.astype(np.float32)
        Z /= gene_scale.astype(np.float32)
        n_components = min(self.params.n_components, X.shape[0] - 1, X.shape[1])
        pca = PCA(n_components=n_components, copy=False, random_state=int(seed) % 2**32)
        # fit_transform, not fit then transform: with copy=False the SVD may overwrite Z
        scores = pca.fit_transform(Z).astype(np.float64)
        n_types = len(self.cell_types_)
        means = np.zeros((n_types, n_components))
        # Per type a factor L with L @ L.T = covariance (eigen-decomposition: works for the
        # singular covariances of types with fewer cells than components).
        factors = np.zeros((n_types, n_components, n_components))
        for code in range(n_types):
            members = scores[labels == code]
            means[code] = members.mean(axis=0)
            if len(members) > 1:
                cov = np.cov(members, rowvar=False).reshape(n_components, n_components)
                eigval, eigvec = np.linalg.eigh(cov)
                factors[code] = eigvec * np.sqrt(np.clip(eigval, 0.0, None))[None, :]
        self._state = {
            "gene_mean": gene_mean,
            "gene_scale": gene_scale,
            "pca_mean": pca.mean_,
            "components": pca.components_,
            "type_means": means,
            "type_factors": factors,
        }
        return TrainingHistory()

    def _sample(self, labels: np.ndarray, *, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        s = self._state
        n_components = s["components"].shape[0]
        scores = np.empty((len(labels), n_components))
        for code in np.unique(labels):
            positions = np.flatnonzero(labels == code)
            noise = rng.standard_normal((len(positions), n_components))
            scores[positions] = s["type_means"][code] + noise @ s["type_factors"][code].T
        X = np.empty((len(labels), s["components"].shape[1]), dtype=np.float32)
        for rows in row_blocks(len(X)):  # float64 temporaries of one block, not of all cells
            X[rows] = (scores[rows] @ s["components"] + s["pca_mean"]) * s["gene_scale"] + s["gene_mean"]
        return X

    def _save_state(self, directory: Path) -> None:
        np.savez_compressed(directory / _STATE_FILE, **self._state)

    def _load_state(self, directory: Path) -> None:
        with np.load(directory / _STATE_FILE) as state:
            self._state = {key: state[key] for key in state.files}
