"""scVI (Lopez et al., Nature Methods 2018) through scvi-tools: the count-space peer of cellsynth's
generators, and the negative-binomial autoencoder under :mod:`cellsynth.generators.latent_flow`.

:func:`fit_scvi` trains ``scvi.model.SCVI`` on a fold's HVG counts with the cell type as its
categorical covariate (scvi-tools' ``batch_key``: the decoder sees the type). :class:`ScviDecoder`
keeps the trained torch module and turns latents into negative-binomial counts with a seeded numpy
generator (never torch's global stream).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from cellsynth.generators.base import EpochCallback, GeneratorError, TrainingHistory, rng_scope
from cellsynth.generators.count_space import CountGenerator, negative_binomial
from cellsynth.generators.params import Check
from cellsynth.generators.training import resolve_device, validation_split
from cellsynth.schema import LABEL_KEY

log = logging.getLogger(__name__)

_WEIGHTS_FILE = "scvi_module.pt"
_POSTERIOR_FILE = "training_posterior.npz"
#: Cells per decoder pass when sampling.
DECODE_CHUNK = 2048
#: A last mini-batch smaller than this fraction of ``batch_size`` is dropped each epoch (see
#: :func:`drop_short_last_batch`).
SHORT_BATCH_FRACTION = 0.25


def drop_short_last_batch(n_train: int, batch_size: int) -> bool:
    """Whether each epoch should drop its last, short mini-batch.

    The encoder and decoder normalise with BatchNorm, so a batch of a few cells takes a full Adam step
    on statistics of those few cells (a batch of one cell fails outright), and scvi-tools keeps the
    weights after the last step of the last epoch. On Zheng17 folds 2 and 3, 2-cell last batches made
    ``nb_latent_flow``'s cells far easier to detect (docs/generators.md). The dropped cells differ
    every epoch (batches are reshuffled), so every cell still trains the model.
    """
    remainder = n_train % batch_size
    return n_train > batch_size and 0 < remainder < SHORT_BATCH_FRACTION * batch_size


@dataclasses.dataclass(frozen=True)
class ScviParams:
    """The scVI autoencoder's hyperparameters (scvi-tools' names and defaults, but for training)."""

    n_latent: int = 10
    n_hidden: int = 128
    n_layers: int = 1
    dropout_rate: float = 0.1
    gene_likelihood: Literal["nb", "zinb"] = "nb"
    #: ``"gene"``: one inverse dispersion per gene; ``"gene-batch"``: per gene and cell type;
    #: ``"gene-cell"``: per gene and cell, from the decoder.
    dispersion: Literal["gene", "gene-batch", "gene-cell"] = "gene"
    #: ``None``: scvi-tools' heuristic (400 epochs up to 20,000 cells, fewer above).
    epochs: int | None = None
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    #: Weight of the KL term at the end of its linear warm-up (scvi-tools' names). Far below 1 the
    #: VAE tends to a plain autoencoder: sharper decoded cells, a latent that only a learned prior fits.
    max_kl_weight: float = 1.0
    n_epochs_kl_warmup: int | None = 400
    #: Stratified fraction of the training cells whose ELBO decides early stopping.
    validation_fraction: float = 0.1
    #: Epochs without improvement of the validation ELBO before stopping (``None``: all epochs).
    patience: int | None = 20
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    def check(self, owner: str) -> Check:
        check = Check(owner, self)
        check.training(optional_epochs=True)
        check.integer("n_latent", "n_hidden", "n_layers")
        check.number("dropout_rate", ge=0, lt=1)
        check.number("max_kl_weight", ge=0)
        check.integer("n_epochs_kl_warmup", optional=True)
        return check


def _scvi_history(model, description: str) -> TrainingHistory:
    """scvi-tools' per-epoch ELBOs (per cell) as a :class:`TrainingHistory`."""
    def series(key: str) -> list[float]:
        frame = model.history.get(key)
        return [] if frame is None else [float(v) for v in np.asarray(frame).ravel()]

    history = TrainingHistory(train_loss=series("elbo_train"), val_loss=series("elbo_validation"))
    for key in ("reconstruction_loss_train", "kl_local_train", "reconstruction_loss_validation"):
        if values := series(key):
            history.extra[key] = values
    if history.val_loss:
        history.best_epoch = int(np.argmin(history.val_loss))
    return history


class ScviDecoder:
    """A trained scVI module: posterior of cells, and counts decoded from latents."""

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval()

    @torch.no_grad()
    def posterior(self, counts: sp.csr_matrix, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of ``q(z | x, type)`` of every cell (float32)."""
        means, stds = [], []
        for start in range(0, counts.shape[0], DECODE_CHUNK):
            x = torch.from_numpy(counts[start : start + DECODE_CHUNK].toarray())
            types = torch.from_numpy(labels[start : start + DECODE_CHUNK, None])
            qz = self.module.inference(x, types)["qz"]
            means.append(qz.loc.numpy())
            stds.append(qz.scale.numpy())
        return np.concatenate(means), np.concatenate(stds)

    @torch.no_grad()
    def counts(self, z: np.ndarray, labels: np.ndarray, hvg_library: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """Negative-binomial (zero-inflated for ``zinb``) counts of latents ``z`` of types ``labels``
        with expected library ``hvg_library``, drawn from ``rng`` as Poisson(Gamma) mixtures."""
        chunks = []
        for start in range(0, len(z), DECODE_CHUNK):
            rows = slice(start, start + DECODE_CHUNK)
            px = self.module.generative(
                z=torch.from_numpy(np.asarray(z[rows], dtype=np.float32)),
                library=torch.from_numpy(np.log(hvg_library[rows]).astype(np.float32)[:, None]),
                batch_index=torch.from_numpy(labels[rows, None]),
            )["px"]
            zi_logits = getattr(px, "zi_logits", None)
            dropout = None if zi_logits is None else torch.sigmoid(zi_logits).numpy()
            chunks.append(negative_binomial(px.mu.numpy(), px.theta.numpy(), rng, dropout=dropout,
                                            threads=torch.get_num_threads()))
        return np.concatenate(chunks)


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's start-up banner (accelerators, tips) at WARNING for the duration of a fit."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def fit_scvi(counts: sp.csr_matrix, labels: np.ndarray, cell_types: list[str], params: ScviParams, *,
             seed: int, progress: bool, description: str) -> tuple[ScviDecoder, TrainingHistory]:
    """Train scVI on ``counts`` (cells × HVGs) with the cell type as categorical covariate.

    The validation slice is cellsynth's stratified, seeded split; weights and mini-batch order come
    from torch's global generator seeded with ``seed`` inside :func:`rng_scope` (scvi-tools'
    own ``settings.seed`` would also reseed the caller's streams).
    """
    import scvi
    from scvi.model._utils import get_max_epochs_heuristic  # the cap scvi-tools uses when max_epochs is None

    device = resolve_device(params.device, description)
    adata = AnnData(X=counts, obs=pd.DataFrame(
        {LABEL_KEY: pd.Categorical.from_codes(labels, categories=cell_types)},
        index=[str(i) for i in range(counts.shape[0])]))
    train_idx, val_idx = validation_split(counts.shape[0], params.validation_fraction, seed, labels)
    max_epochs = params.epochs or get_max_epochs_heuristic(counts.shape[0])  # scvi-tools' own cap
    drop_last = drop_short_last_batch(len(train_idx), params.batch_size)
    if drop_last:
        log.info("%s: each epoch drops its last mini-batch of %d cells (of %d; batch_size %d)", description,
                 len(train_idx) % params.batch_size, len(train_idx), params.batch_size)
    # scvi-tools prints its early-stopping reason to stdout; cellsynth logs its own line after the fit.
    with (rng_scope(seed, device), warnings.catch_warnings(), _quiet_lightning(),
          contextlib.redirect_stdout(io.StringIO())):
        warnings.filterwarnings("ignore", module=r"(lightning|scvi|torch)\b")
        scvi.model.SCVI.setup_anndata(adata, batch_key=LABEL_KEY)
        model = scvi.model.SCVI(adata, n_latent=params.n_latent, n_hidden=params.n_hidden,
                                n_layers=params.n_layers, dropout_rate=params.dropout_rate,
                                gene_likelihood=params.gene_likelihood, dispersion=params.dispersion)
        model.train(
            max_epochs=max_epochs, batch_size=params.batch_size,
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
            datasplitter_kwargs={"external_indexing": [train_idx, val_idx, np.zeros(0, dtype=np.int64)],
                                 "drop_last": drop_last},
            early_stopping=params.patience is not None and len(val_idx) > 0,
            early_stopping_patience=params.patience or 1,
            check_val_every_n_epoch=1 if len(val_idx) else None,
            plan_kwargs={"lr": params.learning_rate, "weight_decay": params.weight_decay,
                         "max_kl_weight": params.max_kl_weight, "n_epochs_kl_warmup": params.n_epochs_kl_warmup},
            enable_progress_bar=progress, enable_model_summary=False,
        )
    history = _scvi_history(model, description)
    history.stopped_early = len(history.train_loss) < max_epochs
    if not np.isfinite(history.train_loss).all():
        raise GeneratorError(f"{description}: the ELBO became non-finite; lower learning_rate")
    n_run = len(history.train_loss)
    ran = (f"stopped at epoch {n_run} of {max_epochs} (patience {params.patience})" if history.stopped_early
           else f"ran all {n_run} of {max_epochs} epochs")
    end = "kept the last epoch's weights (scvi-tools does not restore the best)"
    if history.val_loss:
        end += f"; validation ELBO {history.val_loss[-1]:.4g} (best {min(history.val_loss):.4g})"
    log.info("%s: scVI %s; %s", description, ran, end)
    return ScviDecoder(model.module.cpu()), history


def scvi_module_args(params: ScviParams, n_genes: int, n_types: int) -> dict:
    """What ``scvi.module.VAE`` is built from, to rebuild a saved module without the training AnnData."""
    return {"n_input": n_genes, "n_batch": n_types, "n_latent": params.n_latent, "n_hidden": params.n_hidden,
            "n_layers": params.n_layers, "dropout_rate": params.dropout_rate,
            "gene_likelihood": params.gene_likelihood, "dispersion": params.dispersion}


def save_decoder(decoder: ScviDecoder, directory: Path) -> None:
    torch.save(decoder.module.state_dict(), directory / _WEIGHTS_FILE)


def load_decoder(params: ScviParams, n_genes: int, n_types: int, directory: Path) -> ScviDecoder:
    from scvi.module import VAE

    module = VAE(**scvi_module_args(params, n_genes, n_types))
    module.load_state_dict(torch.load(directory / _WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return ScviDecoder(module)


@dataclasses.dataclass(frozen=True)
class ScviGeneratorParams(ScviParams):
    """Hyperparameters of :class:`ScviGenerator`: scVI's, and where latents are drawn from."""

    #: ``"posterior"``: the aggregate posterior, ``z ~ q(z | x, type)`` of a random training cell of
    #: the requested type; ``"prior"``: scVI's generative model as specified, ``z ~ N(0, I)``.
    latent_sampling: Literal["posterior", "prior"] = "posterior"

    def __post_init__(self) -> None:
        self.check("scvi")


class ScviGenerator(CountGenerator):
    """scVI as a generator: the stock scvi-tools model, the peer every cellsynth generator is ranked against.

    scVI (Lopez, Regier, Cole, Jordan & Yosef, "Deep generative modeling for single-cell
    transcriptomics", Nature Methods 15, 2018) is a VAE whose decoder gives each gene a negative
    binomial whose mean is the cell's library times a softmax over genes. Here it is scvi-tools'
    ``SCVI`` (10 latent dimensions, one 128-wide hidden layer, NB likelihood) trained on the fold's
    HVG counts (``layers["counts"]``) with the cell type as its categorical covariate, early stopping
    on a 10 % validation slice. A cell of type ``t`` is sampled by drawing ``z`` (from the
    aggregate posterior of type ``t``'s training cells, or from ``N(0, I)``: ``latent_sampling``), a
    library from the type's library-size model (:class:`~cellsynth.generators.count_space.LibrarySizes`),
    and NB counts from the decoder; :meth:`sample` returns them in ``layers["counts"]`` and
    log-normalised as the preprocessing does in ``X``.
    """

    name = "scvi"
    Params = ScviGeneratorParams

    def __init__(self, label_key: str = LABEL_KEY, **hyperparameters):
        super().__init__(label_key=label_key, **hyperparameters)
        self._decoder: ScviDecoder | None = None
        self._posterior: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _fit_counts(self, counts: sp.csr_matrix, labels: np.ndarray, *, seed: int, progress: bool,
                    on_epoch: EpochCallback | None) -> TrainingHistory:
        self._decoder, history = fit_scvi(counts, labels, self.cell_types_, self.params, seed=seed,
                                          progress=progress, description=self.name)
        if self.params.latent_sampling == "posterior":
            self._posterior = (*self._decoder.posterior(counts, labels), labels)
        return history

    def _sample_counts(self, labels: np.ndarray, hvg_library: np.ndarray, *, seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, 2])
        if self.params.latent_sampling == "prior":
            z = rng.standard_normal((len(labels), self.params.n_latent))
        else:
            means, stds, train_labels = self._posterior
            donors = np.empty(len(labels), dtype=np.int64)
            for t in np.unique(labels):
                rows = np.flatnonzero(labels == t)
                donors[rows] = rng.choice(np.flatnonzero(train_labels == t), size=len(rows))
            z = means[donors] + stds[donors] * rng.standard_normal((len(labels), self.params.n_latent))
        return self._decoder.counts(z, labels, hvg_library, rng)

    def _save_model(self, directory: Path) -> None:
        save_decoder(self._decoder, directory)
        if self._posterior is not None:
            means, stds, labels = self._posterior
            np.savez(directory / _POSTERIOR_FILE, means=means, stds=stds, labels=labels)

    def _load_model(self, directory: Path) -> None:
        self._decoder = load_decoder(self.params, len(self.var_names_), len(self.cell_types_), directory)
        if self.params.latent_sampling == "posterior":
            with np.load(directory / _POSTERIOR_FILE, allow_pickle=False) as saved:
                self._posterior = (saved["means"], saved["stds"], saved["labels"])
