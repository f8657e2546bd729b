"""Conditional flow matching (Lipman et al., ICLR 2023; Tong et al., TMLR 2024): a velocity field
trained by regression, sampled by integrating an ODE from noise. cellsynth uses it as the learned
prior in the latent space of :class:`~cellsynth.generators.latent.NBLatentFlowGenerator` (as CFGen,
Palma et al., ICLR 2025, does); it also fits any continuous matrix, e.g. log-normalised genes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from cellsynth.generators.base import EpochCallback, Generator, Standardizer, TrainingHistory, rng_scope
from cellsynth.generators.params import Check
from cellsynth.generators.training import (
    NOISE_STREAM,
    LoopSettings,
    evaluate_loss,
    one_hot,
    resolve_device,
    seeded_generator,
    train,
    update,
    validation_split,
)
from cellsynth.schema import LABEL_KEY

_STATE_FILE = "flow_matching.pt"
_SCALER_FILE = "standardizer.npz"
#: Cells per network batch when sampling (fixed: the noise drawn, so the cells, depend on it).
SAMPLE_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class FlowMatchingParams:
    """Hyperparameters of :class:`FlowMatchingGenerator`."""

    #: Width and number of hidden layers of the velocity network (an MLP with SiLU activations).
    hidden_features: int = 256
    hidden_layers: int = 3
    #: Sine/cosine frequencies of the time embedding.
    time_frequencies: int = 16
    #: Steps of the ODE solver from noise (t = 0) to data (t = 1) when sampling.
    integration_steps: int = 64
    solver: Literal["euler", "midpoint"] = "midpoint"
    #: Standard deviation of the noise the ODE starts from when sampling: 1 samples the learnt
    #: distribution; below 1 concentrates cells towards its centre (truncation), above 1 spreads
    #: them (measured effects on real cells: docs/generators.md, ablation).
    sampling_temperature: float = 1.0
    #: Standard deviation of the Gaussian path around the straight line from noise to a cell
    #: (``sigma_min`` of conditional flow matching; 0 = rectified flow).
    path_std: float = 0.0
    #: z-score features with the training cells' statistics before fitting (samples are mapped back).
    standardize: bool = True
    epochs: int = 400
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    #: Stratified fraction of the training cells whose flow-matching loss (on fixed noise and times)
    #: decides early stopping and the weights kept.
    validation_fraction: float = 0.1
    patience: int | None = 40
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    def __post_init__(self) -> None:
        check = Check("flow_matching", self)
        check.training()
        check.integer("hidden_features", "hidden_layers", "time_frequencies", "integration_steps")
        check.number("path_std", ge=0)
        check.number("sampling_temperature", gt=0)


class VelocityField(nn.Module):
    """``v(x_t, t, type)``: an MLP of the state, a sine/cosine embedding of t and the one-hot type."""

    def __init__(self, n_features: int, n_types: int, params: FlowMatchingParams):
        super().__init__()
        self.n_types = n_types
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(params.time_frequencies) / 2)
        width = n_features + 2 * params.time_frequencies + n_types
        layers: list[nn.Module] = []
        for _ in range(params.hidden_layers):
            layers += [nn.Linear(width, params.hidden_features), nn.SiLU()]
            width = params.hidden_features
        layers.append(nn.Linear(width, n_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.frequencies
        features = [x, torch.sin(angles), torch.cos(angles), one_hot(types, self.n_types).to(x.device)]
        return self.net(torch.cat(features, dim=1))


class FlowMatchingGenerator(Generator):
    """Conditional flow matching on ``adata.X`` (one velocity field, conditioned on cell type).

    Training regresses the network on the velocity ``x1 - x0`` of the straight path
    ``x_t = (1 - t) x0 + t x1`` from a standard-normal draw ``x0`` to a (z-scored) training cell
    ``x1`` at a uniform time ``t`` (plus ``path_std`` Gaussian noise around the path). Sampling
    integrates ``dx/dt = v(x, t, type)`` from ``x0 ~ N(0, I)`` at t = 0 to t = 1 with
    ``integration_steps`` midpoint (or Euler) steps: new points, never copies of training cells.

    Reads ``adata.X`` (any continuous features: a latent space, or log-normalised genes) and
    ``adata.obs[label_key]``. The losses of the history are the mean squared velocity error per
    feature; the validation loss uses noise and times fixed by the seed, so epochs compare.
    """

    name = "flow_matching"
    Params = FlowMatchingParams

    def __init__(self, label_key: str = LABEL_KEY, **hyperparameters):
        super().__init__(label_key=label_key, **hyperparameters)
        self._field: VelocityField | None = None
        self._scaler: Standardizer | None = None

    def _device(self) -> torch.device:
        return resolve_device(self.params.device, self.name)

    def _build(self, n_features: int, seed: int) -> VelocityField:
        with rng_scope(seed):
            return VelocityField(n_features, len(self.cell_types_), self.params).to(self._device())

    def _fit(self, X: np.ndarray, labels: np.ndarray, *, seed: int, progress: bool,
             on_epoch: EpochCallback | None) -> TrainingHistory:
        p, device = self.params, self._device()
        self._scaler = Standardizer().fit(X) if p.standardize else None
        if self._scaler is not None:
            X = self._scaler.transform(X, inplace=True)
        self._field = field = self._build(X.shape[1], seed)
        data = torch.from_numpy(X).to(device)
        types = torch.from_numpy(labels).to(device)
        train_idx, val_idx = validation_split(len(X), p.validation_fraction, seed, labels)
        noise = seeded_generator(seed, NOISE_STREAM)  # the validation slice's fixed noise and times
        val_noise = torch.randn(len(val_idx), X.shape[1], generator=noise).to(device)
        val_times = torch.rand(len(val_idx), generator=noise).to(device)
        optimizer = torch.optim.Adam(field.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
        settings = LoopSettings.from_params(p, description=self.name)

        def loss(x1: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, batch_types: torch.Tensor) -> torch.Tensor:
            x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
            if p.path_std > 0:
                x_t = x_t + p.path_std * torch.randn_like(x_t)
            return (field(x_t, t, batch_types) - (x1 - x0)).square().mean()

        def step(batch: torch.Tensor, epoch: int) -> dict[str, float]:
            x1 = data[batch.to(device)]
            value = loss(x1, torch.rand(len(x1), device=device), torch.randn_like(x1), types[batch.to(device)])
            update(value, [optimizer], [field], p.grad_clip)
            return {"train_loss": value.item()}

        val_rows = torch.from_numpy(val_idx).to(device)
        positions = torch.arange(len(val_idx), device=device)

        def validation_loss(rows: torch.Tensor, _context: torch.Tensor | None) -> torch.Tensor:
            return loss(data[val_rows[rows]], val_times[rows], val_noise[rows], types[val_rows[rows]])

        def validate() -> dict[str, float]:
            with rng_scope(seed + NOISE_STREAM):  # path noise of the validation slice: fixed too
                return {"val_loss": evaluate_loss(field, validation_loss, positions, None, p.batch_size)}

        return train(field, step, train_idx, settings, seed=seed, device=device,
                     validate=validate if len(val_idx) else None, progress=progress, on_epoch=on_epoch)

    @torch.no_grad()
    def _sample(self, labels: np.ndarray, *, seed: int) -> np.ndarray:
        field, device, p = self._field, self._device(), self.params
        field.eval()
        noise = seeded_generator(seed)
        step = 1.0 / p.integration_steps
        chunks = []
        for start in range(0, len(labels), SAMPLE_CHUNK):
            types = torch.from_numpy(labels[start : start + SAMPLE_CHUNK]).to(device)
            x = p.sampling_temperature * torch.randn(len(types), field.net[-1].out_features, generator=noise).to(device)
            for i in range(p.integration_steps):
                t = torch.full((len(x),), i * step, device=device)
                if p.solver == "euler":
                    x = x + step * field(x, t, types)
                else:
                    half = x + 0.5 * step * field(x, t, types)
                    x = x + step * field(half, t + 0.5 * step, types)
            chunks.append(x.cpu().numpy())
        X = np.concatenate(chunks).astype(np.float32)
        return self._scaler.inverse_transform(X, inplace=True) if self._scaler is not None else X

    def _save_state(self, directory: Path) -> None:
        torch.save(self._field.state_dict(), directory / _STATE_FILE)
        if self._scaler is not None:
            np.savez(directory / _SCALER_FILE, **self._scaler.state())

    def _load_state(self, directory: Path) -> None:
        if self.params.standardize:
            with np.load(directory / _SCALER_FILE) as saved:
                self._scaler = Standardizer(saved["mean"], saved["scale"])
        state = torch.load(directory / _STATE_FILE, map_location=self._device(), weights_only=True)
        self._field = self._build(len(self.var_names_), seed=0)
        self._field.load_state_dict(state)
        self._field.eval()
