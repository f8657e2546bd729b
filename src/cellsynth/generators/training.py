"""The one training loop of the torch generators (``maf``, ``moe``, ``activa``) and its pieces.

:func:`train` runs the epochs: seeded shuffling, mini-batches, a per-batch ``step`` supplied by the
model (one optimiser for the flows, three for ACTIVA's introspective VAE), a finite-loss check, a
validation slice of the *training* cells with early stopping and best-weights restore, a tqdm bar
and a per-epoch callback. :func:`fit_likelihood` is the step and validation of a model trained by
maximum likelihood with Adam (the flows).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cellsynth.generators.base import EpochCallback, GeneratorError, TrainingHistory, rng_scope

log = logging.getLogger(__name__)

#: Offsets of the fit seed that seed a fit's own torch streams: mini-batch order and fixed noise
#: draws. Offsets rather than :func:`~cellsynth.generators.base.derive_seed`: the trained weights of
#: every model depend on them, and they are what earlier cellsynth versions used.
SHUFFLE_STREAM, NOISE_STREAM = 1, 2

#: ``loss_fn(x_batch, context_batch)``: a mean loss (e.g. NLL) of a batch of cells.
LossFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

#: ``step(batch, epoch) -> {metric: value}``: one mini-batch update (``batch``: a CPU tensor of row
#: indices). Must return ``"train_loss"``; every metric is averaged over the epoch's cells.
Step = Callable[[torch.Tensor, int], dict[str, float]]


def seeded_generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed + stream`` (never the global RNG)."""
    return torch.Generator().manual_seed(int(seed) + stream)


def resolve_device(wanted: str, name: str) -> torch.device:
    """The torch device of a ``device`` hyperparameter (``"cpu"``, ``"cuda"`` or ``"auto"``).

    ``"auto"`` picks CUDA when it is available; ``"cuda"`` without a CUDA device is a clear error
    naming the generator, not a failure deep inside torch.
    """
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise GeneratorError(f"{name}: device='cuda' but no CUDA device is available")
    return torch.device(wanted)


def one_hot(labels: np.ndarray | torch.Tensor, n_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long)
    return torch.nn.functional.one_hot(labels, n_classes).to(torch.float32)


def validation_split(
    n_cells: int, fraction: float, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, validation)``; ``fraction == 0`` gives an empty validation slice.

    Stratified by ``labels`` when given, so a rare type is not left out of either part.
    """
    if fraction <= 0 or n_cells < 4:
        return np.arange(n_cells), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups = [np.arange(n_cells)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    val = []
    for members in groups:
        members = rng.permutation(members)
        n_val = int(round(fraction * len(members)))
        if len(members) - n_val >= 1:
            val.append(members[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(n_cells), val_idx)
    return train_idx, val_idx


@dataclasses.dataclass
class LoopSettings:
    """What :func:`train` reads (first block) and what :func:`fit_likelihood` adds (second)."""

    epochs: int
    batch_size: int
    patience: int | None = None  # scored epochs without validation improvement before stopping
    #: Epochs before this one are not scored: they neither count for patience nor give the best weights.
    warmup_epochs: int = 0
    description: str = "fit"

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = None
    validation_fraction: float = 0.0

    @classmethod
    def from_params(cls, params: Any, description: str) -> LoopSettings:
        """The settings named like fields of a generator's ``Params``."""
        fields = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(params)}
        return cls(**{name: getattr(params, name) for name in fields}, description=description)


def update(
    loss: torch.Tensor,
    optimizers: Sequence[torch.optim.Optimizer],
    modules: Sequence[torch.nn.Module],
    grad_clip: float | None,
) -> None:
    """Backpropagate ``loss``, clip each module's gradient norm at ``grad_clip`` and step."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        for module in modules:
            torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    for optimizer in optimizers:
        optimizer.step()


def train(
    module: torch.nn.Module,
    step: Step,
    train_idx: np.ndarray,
    settings: LoopSettings,
    *,
    seed: int,
    device: torch.device | None = None,
    validate: Callable[[], dict[str, float]] | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> TrainingHistory:
    """Run ``settings.epochs`` epochs of ``step`` over shuffled mini-batches of ``train_idx``.

    The batches' order comes from a generator seeded with ``seed + SHUFFLE_STREAM``; draws from the
    global torch RNG inside ``step`` (noise, reparameterisation) start from ``seed`` and leave the
    caller's stream untouched. ``validate()`` (must return ``"val_loss"``) runs after every epoch;
    the weights of the scored epoch with the lowest validation loss are restored at the end, and
    training stops after ``settings.patience`` scored epochs without improvement. Metrics other
    than ``train_loss`` and ``val_loss`` go to ``history.extra``.
    """
    shuffler = seeded_generator(seed, SHUFFLE_STREAM)
    history = TrainingHistory()
    best_val, best_state, best_epoch, stale = math.inf, None, None, 0
    stops_early = settings.patience is not None and validate is not None
    bar = tqdm(
        range(settings.epochs),
        desc=settings.description,
        disable=not progress,
        leave=False,
        unit="epoch",
        # with early stopping the cap is an upper bound: its time left is one too
        bar_format=progress_format(stops_early),
    )
    with rng_scope(seed, device):
        for epoch in bar:
            module.train()
            order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=shuffler)]
            sums: dict[str, float] = {}
            seen = 0
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                for key, value in step(batch, epoch).items():
                    if not math.isfinite(value):
                        raise FloatingPointError(
                            f"{settings.description}: {key} became {value} at epoch {epoch}; "
                            "lower the learning rate or enable grad_clip"
                        )
                    sums[key] = sums.get(key, 0.0) + value * len(batch)
                seen += len(batch)
            metrics = {key: total / max(seen, 1) for key, total in sums.items()}
            if validate is not None:
                metrics |= validate()
            for key, value in metrics.items():
                series = {"train_loss": history.train_loss, "val_loss": history.val_loss}.get(key)
                (series if series is not None else history.extra.setdefault(key, [])).append(value)
            if validate is not None and epoch >= settings.warmup_epochs:
                if metrics["val_loss"] < best_val - 1e-4:
                    best_val, best_epoch, stale = metrics["val_loss"], epoch, 0
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    stale += 1
            bar.set_postfix(progress_postfix(metrics, best_epoch, stale, settings.patience if stops_early else None))
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if settings.patience is not None and validate is not None and stale >= settings.patience:
                history.stopped_early = True
                break
    if best_state is not None:
        module.load_state_dict(best_state)
        history.best_epoch = best_epoch
    module.eval()
    log.info("%s", training_summary(settings, history, best_val))
    return history


def progress_format(stops_early: bool) -> str:
    """tqdm ``bar_format``: epochs of the cap; with early stopping the time left is "at most"."""
    left = "at most {remaining} left" if stops_early else "{remaining} left"
    return "{desc}: {n_fmt}/{total_fmt} epochs |{bar:12}| {elapsed}, " + left + "{postfix}"


def progress_postfix(
    metrics: dict[str, float], best_epoch: int | None, stale: int, patience: int | None
) -> dict[str, str]:
    """The bar's postfix: losses, and with early stopping the best epoch (1-based) and patience left."""
    postfix = {k: f"{metrics[k]:.4g}" for k in ("train_loss", "val_loss") if k in metrics}
    if patience is not None:
        postfix["best"] = "-" if best_epoch is None else str(best_epoch + 1)
        postfix["patience"] = f"{patience - stale}/{patience}"
    return postfix


def training_summary(settings: LoopSettings, history: TrainingHistory, best_val: float) -> str:
    """One line on how training ended and which weights were kept (epochs counted from 1)."""
    ran = len(history.train_loss)
    if history.stopped_early:
        head = f"{settings.description}: stopped at epoch {ran} of {settings.epochs} (patience {settings.patience})"
    else:
        head = f"{settings.description}: ran all {ran} of {settings.epochs} epochs"
    if history.best_epoch is not None:
        return f"{head}; kept epoch {history.best_epoch + 1}, validation loss {best_val:.4g}"
    if history.val_loss:
        return f"{head}; no scored epoch improved on the start, kept the last epoch's weights"
    return f"{head}; no validation slice, kept the last epoch's weights"


def fit_likelihood(
    module: torch.nn.Module,
    loss_fn: LossFn,
    X: np.ndarray,
    context: np.ndarray | None,
    settings: LoopSettings,
    *,
    seed: int,
    device: torch.device | None = None,
    stratify: np.ndarray | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> TrainingHistory:
    """Minimise ``loss_fn(x_batch, context_batch)`` (a mean NLL) with Adam through :func:`train`.

    With ``settings.validation_fraction > 0`` a seeded slice of ``X`` (stratified by ``stratify``)
    is held out and scored with ``loss_fn`` in eval mode after every epoch.
    """
    train_idx, val_idx = validation_split(len(X), settings.validation_fraction, seed, stratify)
    X_t = torch.from_numpy(X)
    C_t = None if context is None else torch.as_tensor(context, dtype=torch.float32)
    optimizer = torch.optim.Adam(module.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)

    def step(batch: torch.Tensor, epoch: int) -> dict[str, float]:
        loss = loss_fn(X_t[batch], None if C_t is None else C_t[batch])
        update(loss, [optimizer], [module], settings.grad_clip)
        return {"train_loss": loss.item()}

    def validate() -> dict[str, float]:
        C_val = None if C_t is None else C_t[val_idx]
        return {"val_loss": evaluate_loss(module, loss_fn, X_t[val_idx], C_val, settings.batch_size)}

    return train(
        module,
        step,
        train_idx,
        settings,
        seed=seed,
        device=device,
        validate=validate if len(val_idx) else None,
        progress=progress,
        on_epoch=on_epoch,
    )


@torch.no_grad()
def evaluate_loss(
    module: torch.nn.Module,
    loss_fn: LossFn,
    X: torch.Tensor,
    context: torch.Tensor | None,
    batch_size: int,
) -> float:
    """Mean of ``loss_fn`` over ``X`` in batches, in eval mode."""
    module.eval()
    total = 0.0
    for start in range(0, len(X), batch_size):
        xb = X[start : start + batch_size]
        cb = None if context is None else context[start : start + batch_size]
        total += loss_fn(xb, cb).item() * len(xb)
    module.train()
    return total / max(len(X), 1)
