"""The seed paper's SDV baselines: CTGAN, TVAE and Gaussian copula (SDV 2.0).

Each cell becomes one row of a table with one numerical column per gene (named ``g0 .. g{n-1}``,
safe for SDV; the order of ``var_names`` maps them back) and, for conditional models, a categorical
``label`` column holding the cell type. The metadata comes from
``Metadata.detect_from_dataframes`` with every gene column forced to ``numerical`` (detection
would call a sparse gene with a handful of distinct values categorical).

Conditional sampling (``conditional=True``, the default)
    SDV 2.0 offers ``sample_from_conditions``, which for CTGAN and TVAE is plain rejection from
    unconditional draws, one condition after another, and costs one synthesizer call per
    condition. Each call pays SDV's reverse transform, whose overhead is per gene rather than per
    row (tens of ms per gene on a busy CPU: minutes per call at 2000 genes), so the number of
    calls matters more than the number of rows. Here, rows are collected into per-type pools:

    * **pooled draws** (all three models): one unconditional ``sample(n_rows)`` call serves every
      requested type; rows are kept by their generated label. A request in training proportions
      is usually filled by one or two calls.
    * **native draws** (``ctgan``, ``gaussian_copula``), one call per type still short, used when a
      pooled draw would waste more than half its rows (e.g. up-sampling only the rare types, or
      the last few cells of a type the model under-produces). CTGAN sets its conditional vector
      (the "training-by-sampling" input its generator was trained with) to the type; the copula
      is conditioned on the label's encoded value (SDV's ``sample_from_conditions``). Rows whose
      label still differs are rejected. TVAE has no conditional input: pooled draws only.

    Pool sizes follow each type's observed acceptance rate. A type the model (almost) never
    produces within ``max_draw_ratio`` drawn rows per requested cell is a :class:`GeneratorError`
    naming it; use ``conditional=False`` (the paper's setting) or
    :class:`~cellsynth.generators.per_type.PerTypeGenerator`.

Unconditional models (``conditional=False``)
    The table has no label column; samples are labelled by the base class's k-NN classifier of the
    training cells (``obs["label_source"] == "knn"``). This is what the paper ran on PBMC3K.

Reproducibility
    SDV keeps its own random states: the model's (NumPy, torch) generators and the data
    processor's transformer states. Every ``sample(seed=s)`` first calls ``reset_sampling()`` and
    then seeds the model with ``s``, so the same seed gives the same cells, also after
    ``save`` / ``load`` (SDV's cloudpickle of the whole synthesizer). Fitting runs with torch's and
    NumPy's global RNGs seeded with the fit seed, inside a scope that restores the caller's.

Devices
    ``device="cuda"`` / ``"auto"`` sets SDV's ``enable_gpu``. SDV cannot load a model pickled on a
    GPU on a CPU-only machine: sample where you trained, or train on the CPU.

Cost
    CTGAN and TVAE first fit a Bayesian Gaussian mixture per gene (CTGAN's mode-specific
    normalisation; about 0.1-0.5 s of CPU per gene, so minutes for 2000 genes before the first
    epoch, without a progress bar) and then work on an input of up to 11 columns per gene. The
    encoding runs in-process (see ``_fit``): CTGAN's own joblib parallelism is quadratic in genes. The Gaussian
    copula fits one univariate distribution per gene (``default_distribution``; ``"beta"``, SDV's
    default, is the slowest) and a genes × genes correlation matrix. See
    ``benchmarks/sdv_timing.py`` for measured times; the quick default run skips these models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import joblib
import numpy as np
import pandas as pd
import torch

from cellsynth.generators.base import EpochCallback, Generator, GeneratorError, TrainingHistory, rng_scope
from cellsynth.generators.params import Check
from cellsynth.schema import LABEL_KEY

LOGGER = logging.getLogger(__name__)

_TABLE = "cells"
_LABEL = "label"
_MODEL_FILE = "synthesizer.pkl"
#: Most rows drawn from the synthesizer in one call while rejection sampling (memory bound).
_MAX_DRAW = 20_000


def gene_columns(n_genes: int) -> list[str]:
    """SDV column names of the genes, in ``var_names`` order."""
    return [f"g{j}" for j in range(n_genes)]


@contextlib.contextmanager
def _quiet(capture_stdout: bool = True) -> Iterator[io.StringIO]:
    """Silence SDV's / RDT's / copulas' warnings and (optionally) their ``print`` output.

    CTGAN prints a "PerformanceAlert" listing every column when the encoded width exceeds 1000
    columns (always, with thousands of genes); it is replaced by one log line.
    """
    buffer = io.StringIO()
    with warnings.catch_warnings():
        for module in ("sdv", "rdt", "ctgan", "copulas", "sklearn", "scipy"):
            warnings.filterwarnings("ignore", module=module)
        redirect = contextlib.redirect_stdout(buffer) if capture_stdout else contextlib.nullcontext()
        with redirect:
            yield buffer


@dataclasses.dataclass(frozen=True)
class SDVCommonParams:
    """Hyperparameters shared by the three SDV models."""

    #: ``True``: the cell type is a column of the table and samples are drawn for the requested
    #: types (see the module docstring for how). ``False``: fitted without the label; samples are
    #: labelled by a k-NN classifier (the paper's unconditional setting).
    conditional: bool = True
    #: Clip every gene to the range seen in training (SDV's ``enforce_min_max_values``).
    enforce_min_max_values: bool = True
    #: Rejection sampling (conditional models): give up (a :class:`GeneratorError`) once
    #: this many rows per requested cell have been drawn and some type is still short.
    max_draw_ratio: float = 50.0

    def _check(self, owner: str) -> Check:
        """A :class:`Check` of the subclass's fields that has checked the common ones."""
        check = Check(owner, self)
        check.number("max_draw_ratio", ge=1)
        return check


@dataclasses.dataclass(frozen=True)
class CTGANParams(SDVCommonParams):
    """Hyperparameters of :class:`CTGANGenerator` (SDV's ``CTGANSynthesizer``; paper: 100 epochs)."""

    epochs: int = 100
    #: Rows per step; must be even and a multiple of ``pac``.
    batch_size: int = 500
    embedding_dim: int = 128
    generator_dim: tuple[int, ...] = (256, 256)
    discriminator_dim: tuple[int, ...] = (256, 256)
    generator_lr: float = 2e-4
    generator_decay: float = 1e-6
    discriminator_lr: float = 2e-4
    discriminator_decay: float = 1e-6
    discriminator_steps: int = 1
    #: Sample the conditional vector's categories with log frequency during training.
    log_frequency: bool = True
    #: Rows the discriminator sees together (PacGAN).
    pac: int = 10
    #: ``"cuda"`` fails without a GPU; ``"auto"`` uses one when available.
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    def __post_init__(self) -> None:
        check = self._check("ctgan")
        check.integer("epochs", "batch_size", "embedding_dim", "discriminator_steps", "pac")
        check.widths("generator_dim", "discriminator_dim")
        check.require(
            self.batch_size % 2 == 0 and self.batch_size % self.pac == 0,
            f"batch_size must be even and a multiple of pac={self.pac}, got {self.batch_size}",
        )
        check.number("generator_lr", "discriminator_lr", gt=0)


@dataclasses.dataclass(frozen=True)
class TVAEParams(SDVCommonParams):
    """Hyperparameters of :class:`TVAEGenerator` (SDV's ``TVAESynthesizer``; paper: 100 epochs)."""

    epochs: int = 100
    batch_size: int = 500
    embedding_dim: int = 128
    compress_dims: tuple[int, ...] = (128, 128)
    decompress_dims: tuple[int, ...] = (128, 128)
    l2scale: float = 1e-5
    #: Weight of the reconstruction term.
    loss_factor: float = 2.0
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    def __post_init__(self) -> None:
        check = self._check("tvae")
        check.integer("epochs", "batch_size", "embedding_dim")
        check.widths("compress_dims", "decompress_dims")
        check.number("l2scale", ge=0)


GaussianCopulaDistribution = Literal["norm", "beta", "truncnorm", "gamma", "uniform", "gaussian_kde"]


@dataclasses.dataclass(frozen=True)
class GaussianCopulaParams(SDVCommonParams):
    """Hyperparameters of :class:`GaussianCopulaGenerator` (SDV's ``GaussianCopulaSynthesizer``).

    No epochs: the fit is closed-form (marginals, then the copula's correlation matrix).
    """

    #: Univariate distribution of every gene; ``"beta"`` is SDV's default (and the paper's).
    default_distribution: GaussianCopulaDistribution = "beta"

    def __post_init__(self) -> None:
        self._check("gaussian_copula")


class SDVGenerator(Generator):
    """Shared plumbing of the SDV single-table synthesizers (subclasses choose the synthesizer).

    Subclasses set ``name``, ``Params`` and implement :meth:`_synthesizer` (build the unfitted SDV
    synthesizer from the metadata) and, where SDV exposes them, :meth:`_history` (per-epoch losses).
    """

    #: Whether :meth:`_draw_for_type` conditions the model natively (else pooled draws only).
    _native_draws: ClassVar[bool] = False
    _synthesizer_name: ClassVar[str] = ""
    #: Appended to the log line that starts a fit (what takes the time before any progress bar).
    _fit_note: ClassVar[str] = ""

    def __init__(self, label_key: str = LABEL_KEY, **hyperparameters: Any):
        super().__init__(label_key=label_key, **hyperparameters)
        self.conditional = bool(self.params.conditional)
        self._synth = None

    # ------------------------------------------------------------------ subclass hooks
    def _synthesizer(self, metadata, progress: bool):
        raise NotImplementedError

    def _history(self) -> TrainingHistory:
        return TrainingHistory()

    def _draw_for_type(self, cell_type: str, n_rows: int) -> pd.DataFrame:
        """``n_rows`` rows (SDV's output table) drawn with the model conditioned on ``cell_type``.

        Only called when ``_native_draws`` is true.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ Generator hooks
    def _table(self, X: np.ndarray, labels: np.ndarray | None) -> pd.DataFrame:
        frame = pd.DataFrame(X.astype(np.float64), columns=gene_columns(X.shape[1]))
        if labels is not None:
            frame[_LABEL] = np.asarray(self.cell_types_, dtype=object)[labels]
        return frame

    def _metadata(self, frame: pd.DataFrame):
        from sdv.metadata import Metadata

        metadata = Metadata.detect_from_dataframes({_TABLE: frame}, infer_keys=None)
        metadata.update_columns(gene_columns(frame.shape[1] - (_LABEL in frame)), sdtype="numerical")
        if _LABEL in frame:
            metadata.update_column(_LABEL, sdtype="categorical")
        return metadata

    def _fit(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int,
        progress: bool,
        on_epoch: EpochCallback | None,
    ) -> TrainingHistory:
        frame = self._table(X, labels if self.conditional else None)
        LOGGER.info(
            "%s: fitting SDV %s on %d cells x %d genes%s",
            self.name,
            self._synthesizer_name,
            X.shape[0],
            X.shape[1],
            self._fit_note,
        )
        with _quiet() as printed:
            metadata = self._metadata(frame)
            self._synth = self._synthesizer(metadata, progress)
            # CTGAN's data transformer encodes tables of >= 500 rows with joblib ``Parallel`` over
            # genes, each task pickling the whole transformer (every gene's mixture): quadratic in
            # the genes (150 genes: 86 s with loky vs 12 s in-process; 2000 genes: hours). Run
            # those tasks in-process (also keeps the global RNG seeded here in charge: CTGAN and TVAE
            # draw from torch's and numpy's).
            device = "cuda" if self._enable_gpu() else None
            with rng_scope(seed, device), joblib.parallel_config(backend="sequential"):
                self._synth.fit({_TABLE: frame})
        if "PerformanceAlert" in printed.getvalue():
            LOGGER.info("%s: SDV warns that the encoded table is wide (%d genes); fitting anyway", self.name, X.shape[1])
        history = self._history()
        if on_epoch is not None:
            series = {"train_loss": history.train_loss, **history.extra}
            for epoch in range(len(history.train_loss)):
                on_epoch(epoch, {k: float(v[epoch]) for k, v in series.items() if epoch < len(v)})
        return history

    def _reseed(self, seed: int) -> None:
        # Public reset (data processor's transformer states), then the model's own generators.
        # ``_set_random_state`` is what SDV itself calls with a fixed seed before a first sample.
        self._synth.reset_sampling()
        self._synth._set_random_state(int(seed) % 2**32)

    def _genes(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[gene_columns(len(self.var_names_))].to_numpy(dtype=np.float32)

    def _sample(self, labels: np.ndarray, *, seed: int) -> np.ndarray:
        with _quiet():
            self._reseed(seed)
            if not self.conditional:
                return self._genes(self._synth.sample(len(labels))[_TABLE])
            return self._rejection_sample(labels)

    def _rejection_sample(self, labels: np.ndarray) -> np.ndarray:
        """Exact rows of ``p(x | type)`` by rejection; see the module docstring."""
        need = np.bincount(labels, minlength=len(self.cell_types_))
        codes = [int(c) for c in np.flatnonzero(need)]
        pools: dict[int, list[np.ndarray]] = {c: [] for c in codes}
        have = dict.fromkeys(codes, 0)
        # Rows drawn / accepted per type, for pooled and for native (per-type) draws.
        stats = {mode: {c: [0, 0] for c in codes} for mode in ("pooled", "native")}
        train_share = np.asarray(self.type_counts_, dtype=float) / sum(self.type_counts_)
        budget = max(int(self.params.max_draw_ratio * len(labels)), len(labels) + 1)
        total = 0

        def rows_for(mode: str, code: int, missing: int) -> int:
            # Expected draws to fill ``missing`` at the observed acceptance rate (prior: the
            # training share for pooled draws, 1 for native ones), with a 20% margin.
            drawn, accepted = stats[mode][code]
            prior = train_share[code] if mode == "pooled" else 1.0
            rate = max((accepted + prior) / (drawn + 1.0), 1e-6)
            return math.ceil(1.2 * missing / rate) + 1

        def take(mode: str, codes_drawn: list[int], frame: pd.DataFrame) -> None:
            label = frame[_LABEL].astype(str).to_numpy()
            for code in codes_drawn:
                rows = self._genes(frame[label == self.cell_types_[code]])
                stats[mode][code][0] += len(frame)
                stats[mode][code][1] += len(rows)
                rows = rows[: need[code] - have[code]]
                pools[code].append(rows)
                have[code] += len(rows)

        while total < budget:
            short = {c: int(need[c] - have[c]) for c in codes if have[c] < need[c]}
            if not short:
                break
            pooled = max(rows_for("pooled", c, m) for c, m in short.items())
            # One pooled draw serves every type; native draws cost one synthesizer call per type
            # (SDV's reverse transform has a large per-call, per-gene overhead). Pool while at
            # most half of a pooled draw would be wasted.
            if not self._native_draws or pooled <= 2 * sum(short.values()):
                n_rows = min(pooled, _MAX_DRAW, budget - total)
                take("pooled", list(short), self._synth.sample(n_rows)[_TABLE])
                total += n_rows
                continue
            for code, missing in short.items():
                n_rows = min(rows_for("native", code, missing), _MAX_DRAW, budget - total)
                if n_rows < 1:
                    break
                take("native", [code], self._draw_for_type(self.cell_types_[code], n_rows))
                total += n_rows
        short = {
            self.cell_types_[c]: f"{have[c]}/{need[c]}"
            + "".join(f", {mode} acceptance {stats[mode][c][1]}/{stats[mode][c][0]}" for mode in stats)
            for c in codes
            if have[c] < need[c]
        }
        if short:
            raise GeneratorError(
                f"{self.name}: rejection sampling stopped after drawing {total} rows "
                f"(max_draw_ratio={self.params.max_draw_ratio} x {len(labels)} requested); types "
                f"still short (got/requested): {short}. The model rarely generates them: train "
                "longer, raise max_draw_ratio, use conditional=False, or fit one model per type "
                "(PerTypeGenerator)"
            )
        out = np.empty((len(labels), len(self.var_names_)), dtype=np.float32)
        for code, parts in pools.items():
            out[labels == code] = np.concatenate(parts)[: need[code]]
        return out

    def _save_state(self, directory: Path) -> None:
        with _quiet():
            self._synth.save(str(directory / _MODEL_FILE))

    def _load_state(self, directory: Path) -> None:
        from sdv.utils import load_synthesizer

        with _quiet():
            self._synth = load_synthesizer(str(directory / _MODEL_FILE))

    def _enable_gpu(self) -> bool:
        device = getattr(self.params, "device", "cpu")  # the Gaussian copula has no device
        if device == "cuda" and not torch.cuda.is_available():
            raise GeneratorError(f"{self.name}: device='cuda' but no CUDA device is available")
        return device == "cuda" or (device == "auto" and torch.cuda.is_available())


class CTGANGenerator(SDVGenerator):
    """Conditional tabular GAN (Xu et al., NeurIPS 2019) through SDV's ``CTGANSynthesizer``.

    The seed paper's CTGAN baseline (100 epochs). Per-epoch losses: ``train_loss`` is the
    generator loss and ``extra["discriminator_loss"]`` the discriminator (critic) loss, both of the
    epoch's last step (what CTGAN records). ``progress`` shows CTGAN's own epoch bar.
    """

    name = "ctgan"
    Params = CTGANParams
    _native_draws = True
    _synthesizer_name = "CTGANSynthesizer"
    _fit_note = (
        " (a Bayesian Gaussian mixture per gene comes first, without a progress bar: "
        "about 0.3-1 s per gene on one core)"
    )

    def _synthesizer(self, metadata, progress: bool):
        from sdv.single_table import CTGANSynthesizer

        p = self.params
        return CTGANSynthesizer(
            metadata,
            enforce_min_max_values=p.enforce_min_max_values,
            enforce_rounding=False,
            embedding_dim=p.embedding_dim,
            generator_dim=p.generator_dim,
            discriminator_dim=p.discriminator_dim,
            generator_lr=p.generator_lr,
            generator_decay=p.generator_decay,
            discriminator_lr=p.discriminator_lr,
            discriminator_decay=p.discriminator_decay,
            batch_size=p.batch_size,
            discriminator_steps=p.discriminator_steps,
            log_frequency=p.log_frequency,
            verbose=progress,
            epochs=p.epochs,
            pac=p.pac,
            enable_gpu=self._enable_gpu(),
        )

    def _history(self) -> TrainingHistory:
        losses = self._synth.get_loss_values()
        return TrainingHistory(
            train_loss=[float(v) for v in losses["Generator Loss"]],
            extra={"discriminator_loss": [float(v) for v in losses["Discriminator Loss"]]},
        )

    def _draw_for_type(self, cell_type: str, n_rows: int) -> pd.DataFrame:
        # CTGAN's conditional vector set to the type (SDV 2.0 does not expose it: its CTGAN
        # ``sample_from_conditions`` is plain rejection), then SDV's reverse transform.
        raw = self._synth._model.sample(n_rows, condition_column=_LABEL, condition_value=cell_type)
        return self._synth._data_processor.reverse_transform(raw)


class TVAEGenerator(SDVGenerator):
    """Tabular variational autoencoder (Xu et al., NeurIPS 2019) through SDV's ``TVAESynthesizer``.

    The seed paper's TVAE baseline (100 epochs). ``train_loss`` is the mean over the epoch's
    batches of TVAE's loss (reconstruction + KL). ``progress`` shows TVAE's own epoch bar.
    Conditional sampling is pooled rejection (TVAE has no conditional input).
    """

    name = "tvae"
    Params = TVAEParams
    _synthesizer_name = "TVAESynthesizer"
    _fit_note = (
        " (a Bayesian Gaussian mixture per gene comes first, without a progress bar: "
        "about 0.3-1 s per gene on one core)"
    )

    def _synthesizer(self, metadata, progress: bool):
        from sdv.single_table import TVAESynthesizer

        p = self.params
        return TVAESynthesizer(
            metadata,
            enforce_min_max_values=p.enforce_min_max_values,
            enforce_rounding=False,
            embedding_dim=p.embedding_dim,
            compress_dims=p.compress_dims,
            decompress_dims=p.decompress_dims,
            l2scale=p.l2scale,
            batch_size=p.batch_size,
            verbose=progress,
            epochs=p.epochs,
            loss_factor=p.loss_factor,
            enable_gpu=self._enable_gpu(),
        )

    def _history(self) -> TrainingHistory:
        losses = self._synth.get_loss_values()
        per_epoch = losses.groupby("Epoch", sort=True)["Loss"].mean()
        return TrainingHistory(train_loss=[float(v) for v in per_epoch])


class GaussianCopulaGenerator(SDVGenerator):
    """Gaussian copula through SDV's ``GaussianCopulaSynthesizer`` (the paper's "GC").

    Each gene gets a fitted univariate distribution (``default_distribution``), and the genes
    (plus the label, encoded on [0, 1]) are joined by a Gaussian copula. Conditional sampling is
    pooled rejection on the sampled label (see the module docstring for why not SDV's
    ``sample_from_conditions``). No epochs, so the history is empty; ``progress`` has nothing to
    show during the fit.
    """

    name = "gaussian_copula"
    Params = GaussianCopulaParams
    _native_draws = True
    _synthesizer_name = "GaussianCopulaSynthesizer"
    _fit_note = " (one univariate fit per gene, then the correlation matrix; no progress bar)"

    def _synthesizer(self, metadata, progress: bool):
        from sdv.single_table import GaussianCopulaSynthesizer

        return GaussianCopulaSynthesizer(
            metadata,
            enforce_min_max_values=self.params.enforce_min_max_values,
            enforce_rounding=False,
            default_distribution=self.params.default_distribution,
        )

    def _draw_for_type(self, cell_type: str, n_rows: int) -> pd.DataFrame:
        from sdv.sampling import Condition

        condition = Condition(column_values={_LABEL: cell_type}, num_rows=n_rows)
        # SDV always shows a "Sampling conditions" bar here; keep it off the caller's stderr.
        with contextlib.redirect_stderr(io.StringIO()):
            return self._synth.sample_from_conditions([condition])[_TABLE]
