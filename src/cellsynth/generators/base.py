"""The one interface every cellsynth generator implements.

A generator learns the distribution of a fold's log-normalised HVG matrix (``adata.X``) together with
the cell-type labels (``adata.obs[label_key]``), and samples new cells in the same space.

Subclasses implement four hooks on plain numpy arrays:

``_fit(X, labels, seed, progress, on_epoch) -> TrainingHistory``
    ``X`` is a dense ``float32`` array (cells × genes) in the input's space, ``labels`` an ``int64``
    array of cell-type codes (indices into ``self.cell_types_``). ``X`` is the fit's one dense copy
    of the expression matrix, owned by the generator: ``_fit`` may transform it in place or keep it
    as state, and should not make another full copy (the evaluation of a 50k-cell fold would hold
    several gigabytes).
``_sample(labels, seed) -> np.ndarray | tuple[np.ndarray, np.ndarray]``
    One row per requested code. Conditional models honour the codes; unconditional ones
    (``conditional = False``) ignore them and the base class labels their cells with a k-NN
    classifier fitted on the training cells (``obs["label_source"] == "knn"``). Models of raw
    counts (:class:`~cellsynth.generators.count_space.CountGenerator`) return ``(X, counts)``: the
    cells in the input's space and the integer counts they were normalised from, which
    :meth:`Generator.sample` writes to ``layers["counts"]``.
``_save_state(directory)`` / ``_load_state(directory)``
    Weights and fitted state; hyperparameters and the fitted metadata are saved by the base class.

Hyperparameters are a frozen dataclass ``Params`` per subclass, so a typo in a parameter file is an
error that lists the valid names, never a silently ignored key.

``fit``, ``sample`` and ``load`` run under :func:`rng_scope`: whatever a model or its library draws
from the global random number generators (torch, numpy, python), the caller's streams stay as they
were.
Every subclass with a ``name`` is registered under it, so :meth:`Generator.load` rebuilds any saved
generator from its ``generator.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from cellsynth.schema import COUNTS_LAYER, LABEL_KEY

EpochCallback = Callable[[int, dict[str, float]], None]
"""Called after every epoch with the epoch index and its metrics (e.g. ``{"train_loss": ...}``)."""


@dataclasses.dataclass
class TrainingHistory:
    """Per-epoch losses of one ``fit`` call.

    ``train_loss`` and ``val_loss`` hold one value per epoch (``val_loss`` is empty for models
    without a validation slice, e.g. the SDV models and the sanity baselines). ``extra`` holds
    model-specific per-epoch series such as a GAN's discriminator loss.
    """

    train_loss: list[float] = dataclasses.field(default_factory=list)
    val_loss: list[float] = dataclasses.field(default_factory=list)
    extra: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    fit_seconds: float = float("nan")
    best_epoch: int | None = None
    stopped_early: bool = False

    def to_frame(self) -> pd.DataFrame:
        """Long table ``epoch, series, value`` of every per-epoch series."""
        series = {"train_loss": self.train_loss, "val_loss": self.val_loss, **self.extra}
        rows = [
            (epoch, name, float(value))
            for name, values in series.items()
            for epoch, value in enumerate(values)
        ]
        return pd.DataFrame(rows, columns=["epoch", "series", "value"])


class GeneratorError(ValueError):
    """Bad input to a generator (wrong labels, non-finite values, unknown cell type, ...)."""


@contextlib.contextmanager
def rng_scope(seed: int | None = None, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with the global random state restored afterwards.

    Restores torch's CPU generator (and its CUDA generators when CUDA is in use or ``device`` is a
    CUDA device), numpy's legacy global generator (``np.random``) and python's ``random``. With
    ``seed``, torch's and numpy's global generators start from ``seed`` inside the block, so what
    a library draws from them (torch's initialisers, nflows, zuko, CTGAN) is reproducible.
    """
    on_cuda = torch.cuda.is_initialized() or (device is not None and torch.device(device).type == "cuda")
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if on_cuda else []):
            if seed is not None:
                torch.manual_seed(int(seed))
                np.random.seed(int(seed) % 2**32)  # noqa: NPY002
            yield
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)


def derive_seed(seed: int, *keys: int) -> int:
    """A seed for the independent stream ``keys`` of ``seed`` (e.g. sub-model ``i`` of a fit), different
    for every key and every base seed (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed) % 2**63, *(int(k) for k in keys)]).generate_state(1)[0])


#: Rows per block when a matrix is transformed or summarised blockwise: temporaries stay at a few
#: blocks (8 MB each at 2000 genes), a small fraction of one dense copy of a fold.
ROW_BLOCK = 1024


def dense_float32(matrix: Any, *, copy: bool = False) -> np.ndarray:
    """``matrix`` as a C-contiguous dense float32 array: one copy at most, always a new array with
    ``copy=True`` (a sparse matrix is densified once, without a float64 intermediate)."""
    if sp.issparse(matrix):
        return np.ascontiguousarray(matrix.astype(np.float32, copy=False).toarray())
    return np.asarray(matrix, dtype=np.float32, order="C", copy=True if copy else None)


def row_blocks(n_rows: int, block: int = ROW_BLOCK) -> Iterator[slice]:
    """Consecutive row slices of at most ``block`` rows covering ``range(n_rows)``."""
    for start in range(0, n_rows, block):
        yield slice(start, min(start + block, n_rows))


def smallest_nonzero(X: np.ndarray) -> np.ndarray:
    """Each gene's smallest positive value in ``X`` (``inf`` for a gene that is never positive).

    Log-normalised counts have no value between 0 and a gene's smallest non-zero value (one count):
    a continuous model's mass in that gap belongs to the gene's zero atom (see :func:`snap_to_zero`).
    """
    smallest = np.full(X.shape[1], np.inf, dtype=np.float32)
    for rows in row_blocks(len(X)):
        np.minimum(smallest, np.where(X[rows] > 0, X[rows], np.inf).min(axis=0), out=smallest)
    return smallest


def column_mean_std(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and (population) standard deviation in float64, in row blocks: numpy's
    ``X.std`` would allocate a float64 temporary twice the size of a float32 ``X``."""
    mean = X.mean(axis=0, dtype=np.float64)
    centre = mean.astype(X.dtype)  # block temporaries in X's precision, sums in float64
    squares = np.zeros(X.shape[1], dtype=np.float64)
    for rows in row_blocks(len(X)):
        block = X[rows] - centre
        squares += np.square(block, out=block).sum(axis=0, dtype=np.float64)
    return mean, np.sqrt(squares / max(len(X), 1))


def snap_to_zero(X: np.ndarray, smallest: np.ndarray) -> np.ndarray:
    """Set every value of ``X`` below its gene's ``smallest`` non-zero training value to 0 (in place)."""
    for rows in row_blocks(len(X)):  # a block's mask at a time, not one of the whole matrix
        block = X[rows]
        block[smallest > block] = 0.0
    return X


class Standardizer:
    """Per-gene z-scoring (the paper's StandardScaler) that also inverts.

    Genes with zero variance keep scale 1 so they map to 0 and back to their constant value.
    """

    def __init__(self, mean: np.ndarray | None = None, scale: np.ndarray | None = None):
        self.mean = mean
        self.scale = scale

    def fit(self, X: np.ndarray) -> Standardizer:
        mean, std = column_mean_std(X)
        self.mean = mean.astype(np.float32)
        self.scale = np.where(std > 1e-8, std, 1.0).astype(np.float32)
        return self

    def transform(self, X: np.ndarray, *, inplace: bool = False) -> np.ndarray:
        """z-scores of ``X`` (float32); ``inplace=True`` overwrites a float32 ``X`` instead of
        allocating a second matrix."""
        if not inplace:
            return ((X - self.mean) / self.scale).astype(np.float32)
        X -= self.mean
        X /= self.scale
        return X

    def inverse_transform(self, Z: np.ndarray, *, inplace: bool = False) -> np.ndarray:
        """Expression of z-scores ``Z`` (float32); ``inplace=True`` overwrites a float32 ``Z``."""
        if not inplace:
            return (Z * self.scale + self.mean).astype(np.float32)
        Z *= self.scale
        Z += self.mean
        return Z

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale}


def _fit_labeller(X: np.ndarray, labels: np.ndarray, *, n_neighbors: int):
    """The k-NN classifier that labels an unconditional generator's cells (refitted from arrays on load)."""
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=n_neighbors).fit(X, labels)


class Generator(ABC):
    """Base class of all generators.

    Parameters
    ----------
    label_key
        ``obs`` column holding the cell type.
    **hyperparameters
        Fields of the subclass's ``Params`` dataclass.

    Attributes (after ``fit``)
    ----------
    var_names_
        Gene names of the training matrix (the synthetic cells carry the same).
    cell_types_
        Cell-type categories, in code order.
    type_counts_
        Training cells per type (sets the proportions of unconditional requests).
    nonnegative_
        Whether the training matrix had no negative value; if so, samples are clipped at 0.
    """

    name: ClassVar[str]
    Params: ClassVar[type]
    #: Whether ``_sample`` honours the requested cell types. Instances may override it
    #: (e.g. a flow built without a context).
    conditional: bool = True
    #: Whether the model learns raw counts (``layers["counts"]``) and writes sampled counts next to ``X``.
    models_counts: ClassVar[bool] = False
    #: Every subclass that sets ``name``, by that name (what ``save`` writes and ``load`` reads).
    registry: ClassVar[dict[str, type[Generator]]] = {}

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Generator.registry[cls.name] = cls

    def __init__(self, label_key: str = LABEL_KEY, **hyperparameters: Any):
        valid = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(hyperparameters) - valid)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown hyperparameter(s) {unknown}; "
                f"valid names: {sorted(valid)}"
            )
        self.label_key = label_key
        self.params = self.Params(**hyperparameters)
        self.var_names_: list[str] | None = None
        self.cell_types_: list[str] | None = None
        self.type_counts_: list[int] | None = None
        self.nonnegative_: bool = False
        self._labeller = None

    # ------------------------------------------------------------------ public API
    @property
    def is_fitted(self) -> bool:
        return self.var_names_ is not None

    def fit(
        self,
        adata: AnnData,
        *,
        seed: int = 0,
        progress: bool = True,
        on_epoch: EpochCallback | None = None,
    ) -> TrainingHistory:
        """Learn the distribution of ``adata``.

        Reads ``adata.X`` (cells × genes, log-normalised HVG expression, dense or sparse) and
        ``adata.obs[label_key]``. Does not modify ``adata``.
        """
        X, labels = self._training_arrays(adata)
        if not self.conditional:
            # fitted first, on its own copy: ``_fit`` may transform ``X`` in place
            self._labeller = _fit_labeller(X.copy(), labels, n_neighbors=min(15, len(X)))
        started = time.perf_counter()
        with rng_scope():
            history = self._fit(X, labels, seed=seed, progress=progress, on_epoch=on_epoch)
        history.fit_seconds = time.perf_counter() - started
        return history

    def sample(
        self,
        n_cells: int,
        cell_types: Sequence[str] | Mapping[str, int] | None = None,
        seed: int = 0,
    ) -> AnnData:
        """Draw ``n_cells`` synthetic cells.

        Parameters
        ----------
        n_cells
            Number of cells.
        cell_types
            ``None``: types drawn in training proportions. A mapping ``type -> count`` (counts must
            sum to ``n_cells``) or one label per cell. Unconditional models ignore it and label
            their cells with a k-NN classifier of the training cells.
        seed
            Seed of every random draw; the same seed gives the same cells.

        Returns
        -------
        AnnData with ``X`` (float32, cells × genes, same ``var_names`` as the training data),
        ``obs[label_key]`` (categorical, training categories), ``obs["synthetic"] = True``,
        ``obs["generator"]`` and ``obs["label_source"]`` (``"conditioned"`` or ``"knn"``); models of
        raw counts also write the sampled integer counts to ``layers["counts"]`` (CSR, int32).
        """
        if not self.is_fitted:
            raise GeneratorError(f"{self.name}: call fit() before sample()")
        n_cells = int(n_cells)
        if n_cells < 0:
            raise GeneratorError(f"{self.name}: n_cells must be >= 0, got {n_cells}")
        codes = self._requested_codes(n_cells, cell_types, seed)
        counts = None
        if n_cells == 0:
            X = np.zeros((0, len(self.var_names_)), dtype=np.float32)
        else:
            with rng_scope():
                drawn = self._sample(codes, seed=seed)
            if isinstance(drawn, tuple):
                drawn, counts = drawn
            X = np.asarray(drawn, dtype=np.float32)
        if X.shape != (n_cells, len(self.var_names_)):
            raise RuntimeError(f"{self.name}: sampled shape {X.shape}, expected {(n_cells, len(self.var_names_))}")
        if self.nonnegative_:
            # The input space (log1p of normalised counts) has no negative value: clip there.
            np.maximum(X, 0.0, out=X)
        label_source = "conditioned"
        if not self.conditional and n_cells > 0:
            codes = self._labeller.predict(X)
            label_source = "knn"
        obs = pd.DataFrame(
            {
                self.label_key: pd.Categorical.from_codes(codes, categories=self.cell_types_),
                "synthetic": True,
                "generator": self.name,
                "label_source": label_source,
            },
            index=[f"{self.name}_{i}" for i in range(n_cells)],
        )
        cells = AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(self.var_names_)))
        if counts is not None:
            cells.layers[COUNTS_LAYER] = sp.csr_matrix(np.asarray(counts, dtype=np.int32))
        return cells

    def save(self, directory: str | Path) -> None:
        """Write hyperparameters (``generator.json``) and fitted state into ``directory``."""
        if not self.is_fitted:
            raise GeneratorError(f"{self.name}: nothing to save before fit()")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "name": self.name,
            "label_key": self.label_key,
            "params": dataclasses.asdict(self.params),
            "var_names": self.var_names_,
            "cell_types": self.cell_types_,
            "type_counts": self.type_counts_,
            "nonnegative": self.nonnegative_,
            "conditional": self.conditional,
        }
        (directory / "generator.json").write_text(json.dumps(meta, indent=1))
        if self._labeller is not None:  # its training cells, labels and k: no pickle to execute on load
            np.savez(directory / "labeller.npz", X=self._labeller._fit_X,
                     labels=self._labeller.classes_[self._labeller._y], n_neighbors=self._labeller.n_neighbors)
        self._save_state(directory)

    @classmethod
    def load(cls, directory: str | Path) -> Generator:
        """Rebuild a fitted generator saved with :meth:`save`."""
        directory = Path(directory)
        meta = json.loads((directory / "generator.json").read_text())
        if meta["name"] not in Generator.registry:
            raise GeneratorError(f"{directory}: unknown generator {meta['name']!r}; known: {sorted(Generator.registry)}")
        model = Generator.registry[meta["name"]](label_key=meta["label_key"], **meta["params"])
        model.var_names_ = meta["var_names"]
        model.cell_types_ = meta["cell_types"]
        model.type_counts_ = meta["type_counts"]
        model.nonnegative_ = meta["nonnegative"]
        model.conditional = meta["conditional"]
        if (directory / "labeller.npz").exists():
            with np.load(directory / "labeller.npz", allow_pickle=False) as saved:
                model._labeller = _fit_labeller(saved["X"], saved["labels"], n_neighbors=int(saved["n_neighbors"]))
        with rng_scope():  # a network built before its weights are loaded draws from the global RNG
            model._load_state(directory)
        return model

    def hyperparameters(self) -> dict[str, Any]:
        """Flat ``{name: value}`` of the hyperparameters (for MLflow params)."""
        return dataclasses.asdict(self.params)

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _fit(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int,
        progress: bool,
        on_epoch: EpochCallback | None,
    ) -> TrainingHistory: ...

    @abstractmethod
    def _sample(self, labels: np.ndarray, *, seed: int) -> np.ndarray: ...

    @abstractmethod
    def _save_state(self, directory: Path) -> None: ...

    @abstractmethod
    def _load_state(self, directory: Path) -> None: ...

    # ------------------------------------------------------------------ helpers
    def _training_arrays(self, adata: AnnData) -> tuple[np.ndarray, np.ndarray]:
        labels = self._training_labels(adata)
        X = dense_float32(adata.X, copy=True)  # the fit's own copy (see the module docstring)
        if not all(np.isfinite(X[rows]).all() for rows in row_blocks(len(X))):
            raise GeneratorError(f"{self.name}: the expression matrix holds NaN or infinite values")
        self.nonnegative_ = bool(X.min() >= 0)
        return X, labels

    def _training_labels(self, adata: AnnData) -> np.ndarray:
        """The cell-type codes of ``adata``; records the genes, types and type sizes of the fit."""
        if self.label_key not in adata.obs:
            raise GeneratorError(
                f"{self.name}: label column {self.label_key!r} not in obs "
                f"(available: {list(adata.obs.columns)})"
            )
        if adata.n_obs < 2 or adata.n_vars < 1:
            raise GeneratorError(f"{self.name}: need at least 2 cells and 1 gene, got {adata.shape}")
        raw_labels = adata.obs[self.label_key]
        if raw_labels.isna().any():
            raise GeneratorError(f"{self.name}: {int(raw_labels.isna().sum())} cells have no label")
        categories = pd.Categorical(raw_labels.astype(str))
        self.var_names_ = [str(g) for g in adata.var_names]
        self.cell_types_ = [str(c) for c in categories.categories]
        self.type_counts_ = np.bincount(categories.codes, minlength=len(self.cell_types_)).tolist()
        return categories.codes.astype(np.int64)

    def _requested_codes(
        self, n_cells: int, cell_types: Sequence[str] | Mapping[str, int] | None, seed: int
    ) -> np.ndarray:
        index = {t: i for i, t in enumerate(self.cell_types_)}

        def code_of(label: Any) -> int:
            if str(label) not in index:
                raise GeneratorError(
                    f"{self.name}: cell type {label!r} was not in the training data "
                    f"(known: {self.cell_types_})"
                )
            return index[str(label)]

        if cell_types is None:
            proportions = np.asarray(self.type_counts_, dtype=float)
            proportions /= proportions.sum()
            rng = np.random.default_rng(seed)
            return np.sort(rng.choice(len(proportions), size=n_cells, p=proportions))
        if isinstance(cell_types, Mapping):
            total = sum(int(c) for c in cell_types.values())
            if total != n_cells:
                raise GeneratorError(f"{self.name}: type counts sum to {total}, not n_cells={n_cells}")
            return np.concatenate(
                [np.full(int(count), code_of(t), dtype=np.int64) for t, count in cell_types.items()]
                or [np.zeros(0, dtype=np.int64)]
            )
        labels = list(cell_types)
        if len(labels) != n_cells:
            raise GeneratorError(f"{self.name}: got {len(labels)} labels for n_cells={n_cells}")
        return np.array([code_of(t) for t in labels], dtype=np.int64)
