"""Shared PyTorch plumbing for the likelihood-trained generators (flows).

One training loop (mini-batches, a validation slice of the *training* cells for early stopping,
gradient clipping, a tqdm bar showing epoch and loss, a per-epoch callback) so every flow trains
and reports the same way.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cellsynth.generators.base import EpochCallback, TrainingHistory


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (never the global RNG)."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen


def resolve_device(wanted: str, name: str) -> torch.device:
    """The torch device of a ``device`` hyperparameter (``"cpu"``, ``"cuda"`` or ``"auto"``).

    ``"auto"`` picks CUDA when it is available; ``"cuda"`` without a CUDA device is a clear error
    naming the generator, not a failure deep inside torch.
    """
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        from cellsynth.generators.base import GeneratorError

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


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.0
    grad_clip: float | None = None
    patience: int | None = None  # epochs without validation improvement before stopping
    validation_fraction: float = 0.0
    description: str = "fit"


def train_likelihood_model(
    module: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    X: np.ndarray,
    context: np.ndarray | None,
    settings: LoopSettings,
    *,
    seed: int,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    stratify: np.ndarray | None = None,
) -> TrainingHistory:
    """Minimise ``loss_fn(x_batch, context_batch)`` (a mean NLL) with Adam.

    With ``settings.validation_fraction > 0`` a seeded (stratified) slice of ``X`` is held out; the
    weights of the epoch with the lowest validation loss are restored at the end, and training stops
    after ``settings.patience`` epochs without improvement. Returns the per-epoch losses.
    """
    torch.manual_seed(seed)
    train_idx, val_idx = validation_split(len(X), settings.validation_fraction, seed, stratify)
    X_t = torch.from_numpy(X)
    C_t = None if context is None else torch.as_tensor(context, dtype=torch.float32)
    optimizer = torch.optim.Adam(
        module.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    shuffler = seeded_generator(seed + 1)
    history = TrainingHistory()
    best_val, best_state, best_epoch, stale = math.inf, None, None, 0
    bar = tqdm(range(settings.epochs), desc=settings.description, disable=not progress, leave=False)
    for epoch in bar:
        module.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=shuffler)]
        total, seen = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            loss = loss_fn(X_t[batch], None if C_t is None else C_t[batch])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{settings.description}: loss became {loss.item()} at epoch {epoch}; "
                    "lower the learning rate or enable grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), settings.grad_clip)
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        metrics = {"train_loss": total / max(seen, 1)}
        history.train_loss.append(metrics["train_loss"])
        if len(val_idx):
            val_loss = evaluate_loss(module, loss_fn, X_t[val_idx], None if C_t is None else C_t[val_idx], settings.batch_size)
            metrics["val_loss"] = val_loss
            history.val_loss.append(val_loss)
            if val_loss < best_val - 1e-4:
                best_val, best_epoch, stale = val_loss, epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                stale += 1
        bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()})
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if settings.patience is not None and len(val_idx) and stale >= settings.patience:
            history.stopped_early = True
            break
    if best_state is not None:
        module.load_state_dict(best_state)
        history.best_epoch = best_epoch
    module.eval()
    return history


@torch.no_grad()
def evaluate_loss(
    module: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
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
