"""ACTIVA: a conditional introspective VAE with a jointly trained cell-type classifier.

Heydari, Davalos, Zhao, Hoyer & Sindi, "ACTIVA: realistic single-cell RNA-seq generation with
automatic cell-type identification using introspective variational autoencoders", Bioinformatics
38(8):2194-2201, 2022. ACTIVA trains a VAE introspectively (IntroVAE: Huang, Li, He, Sun & Tan,
"IntroVAE: Introspective Variational Autoencoders for Photographic Image Synthesis", NeurIPS 2018):
the encoder doubles as the discriminator, and a cell-type identifier network supplies the cell-type
information that conditions generation. The authors' code (SindiLab/ACTIVA) could not be installed
or read here; this module implements the method from its published description and registers it as
``"activa"`` (:class:`ActivaGenerator`).

AnnData fields
--------------
``fit`` reads ``adata.X`` (cells x genes, the fold's log-normalised HVG expression, dense or sparse)
and ``adata.obs[label_key]``; it never writes to the input. ``sample`` returns a new AnnData with
``X`` (float32, same ``var_names``, non-negative), ``obs[label_key]``, ``obs["synthetic"]``,
``obs["generator"] = "activa"`` and ``obs["label_source"] = "conditioned"``.

Model
-----
Three MLPs on the log-normalised expression itself (no z-scoring, as in ACTIVA):

* classifier ``C``: expression -> cell-type logits, trained with cross-entropy on the real
  training cells only (never on generated ones, so it stays a judge of real cell types);
* encoder ``E``: ``[x, c]`` -> mean and log-variance of ``q(z | x, c)`` (``latent_dim``);
* decoder ``G``: ``[z, c]`` -> expression, with a ReLU output layer (ACTIVA's), so every generated
  value is >= 0 and genes can be exactly zero, as most values of the input are.

``c`` is the cell-type vector. For a real cell it is the classifier's prediction (softmax
probabilities, no gradient into ``C``) with ``condition_on="prediction"`` (default: the identifier's
prediction conditions the reconstruction, ACTIVA's "automatic cell-type identification"), or the
one-hot label with ``condition_on="label"``. For cells generated from the prior, during training and
in :meth:`~cellsynth.generators.base.Generator.sample`, it is the one-hot of the requested type.

Objective (per mini-batch; ``KL(x, c)`` is the KL divergence of ``q(z | x, c)`` from ``N(0, I)``,
summed over latent dimensions; ``L_AE = 0.5 * ||x - x_r||^2`` summed over genes; every term is a
mean over the batch's cells):

* ``x_r = G(z, c)`` with ``z ~ q(z | x, c)`` (reconstruction), ``x_p = G(z_p, c_p)`` with
  ``z_p ~ N(0, I)`` and ``c_p`` the one-hot of the batch's own labels (sampled cells, in training
  proportions).
* encoder: ``L_E = kl_weight * KL(x, c) + beta * L_AE
  + alpha * ([margin - KL(sg(x_r), c)]^+ + [margin - KL(sg(x_p), c_p)]^+)`` (``sg`` = stop gradient):
  the encoder, as discriminator, keeps real cells near the prior and pushes reconstructed and
  sampled cells at least ``margin`` nats away from it.
* decoder: ``L_G = alpha * (KL(x_r, c) + KL(x_p, c_p)) + beta * L_AE
  + type_weight * CE(C(x_p), type of c_p)``: the opposite pressure (make generated cells look real
  to the encoder), reconstruction, and the classifier's verdict on the sampled cells, which makes
  the decoder honour the requested type (ACTIVA's cell-type loss; extended here from the
  reconstructions the paper scores to the sampled cells that conditional generation produces).
* classifier: ``CE(C(x), y)`` on real cells.

Each of ``E``, ``G``, ``C`` has its own Adam optimiser and is only updated by its own loss. The first
``warmup_epochs`` epochs train ``E`` and ``G`` jointly as a plain conditional VAE
(``kl_weight * KL + beta * L_AE + type_weight * CE(C(x_p), y_p)``), as IntroVAE's implementation
does (its ``num_vae``), so the adversarial game starts from a decoder that already reconstructs.

Training, validation and early stopping
---------------------------------------
A stratified ``validation_fraction`` of the training cells is held out. Every epoch reports, to the
``on_epoch`` callback (which the generation pipeline logs to MLflow) and in
:class:`~cellsynth.generators.base.TrainingHistory`:

* ``train_loss`` / ``val_loss``: the negative ELBO ``beta * L_AE + kl_weight * KL(x, c)`` per cell
  of the training batches / of the validation cells (one fixed, seeded draw of the reparameterisation
  noise every epoch, so successive epochs are comparable). It is the quantity early stopping watches:
  the adversarial losses are a game and do not decrease monotonically.
* ``extra``: ``encoder_loss``, ``decoder_loss``, ``reconstruction`` (``L_AE``), ``kl_real``,
  ``kl_reconstructed``, ``kl_sampled`` (encoder's KL of the three kinds of cells), ``classifier_loss``,
  ``type_loss`` (``CE(C(x_p), y_p)``), ``val_accuracy`` (classifier on validation cells) and
  ``val_sampled_accuracy`` (the classifier's accuracy on cells sampled for the validation cells'
  types: how well generation honours the requested type).

Early stopping only counts introspective epochs: the best validation epoch is chosen among epochs
after the warm-up (otherwise the plain VAE, which has no adversarial pressure and so a lower
reconstruction error, would always win), and training stops after ``patience`` such epochs without
improvement; the best epoch's weights are restored.

Hyperparameters: where they come from
-------------------------------------
The paper's text could not be consulted while this was written, so "ACTIVA's" below means the
method as published and summarised in issue 9, with values as recalled; treat them as unverified.
From ACTIVA / IntroVAE: the introspective objective with margin ``m`` and weights ``alpha``,
``beta``; a 128-dimensional latent space (``latent_dim``); a ReLU output layer on log-normalised
data (``output="mean"``); Adam at learning rate 2e-4; mini-batches of 128; a cell-type identifier
network in the style of ACTINN (Ma & Pellegrini, Bioinformatics 2020: hidden layers of 100, 50 and
25 units, ``classifier_hidden``). A plain-VAE warm-up is IntroVAE's practice (``num_vae``).
cellsynth's choices: LeakyReLU hidden activations and the hidden widths; ``margin=150`` (above the
30-50 nats of real PBMC3K cells' KL at a 128-d latent); ``alpha=0.25``; ``beta=10`` and
``learning_rate=1e-3`` (see their comments); ``type_weight``; ``warmup_epochs=5``; training the
classifier jointly rather than beforehand; conditioning both encoder and decoder on ``c``; the
decoder's output bias starting at each gene's training mean (a ReLU output started at zero leaves
most genes without gradient); the log-variance clamp; gradient clipping; the validation and
early-stopping scheme; ``output="snapped"``. The ``paper`` preset of the generation pipeline
(``conf/base/parameters_generation.yml``) sets ``beta=1``, ``learning_rate=2e-4``, ``output="mean"``
and keeps the rest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cellsynth.generators.activa.modules import ActivaNetworks, kl_to_prior, reconstruction_error
from cellsynth.generators.base import (
    EpochCallback,
    Generator,
    GeneratorError,
    TrainingHistory,
    rng_scope,
    smallest_nonzero,
)
from cellsynth.generators.params import Check
from cellsynth.generators.training import (
    NOISE_STREAM,
    LoopSettings,
    one_hot,
    resolve_device,
    seeded_generator,
    train,
    update,
    validation_split,
)
from cellsynth.schema import LABEL_KEY

_STATE_FILE = "activa_state.pt"

#: Cells per network batch when sampling (the latent draws are made for all cells at once, so the
#: chunk size does not change the sampled cells).
SAMPLE_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class ActivaParams:
    """Hyperparameters of :class:`ActivaGenerator` (see the module docstring for their origin)."""

    #: Dimension of the latent space (ACTIVA: 128).
    latent_dim: int = 128
    #: Hidden layer widths of the encoder; the decoder uses them in reverse order (cellsynth).
    hidden: tuple[int, ...] = (512, 256)
    #: Hidden layer widths of the cell-type classifier (ACTINN's 100-50-25).
    classifier_hidden: tuple[int, ...] = (100, 50, 25)
    #: IntroVAE margin ``m`` in nats: the encoder pushes the KL of reconstructed and sampled cells
    #: up to this value. It must sit above the KL of real cells, which depends on the data and the
    #: latent size (cellsynth's value for 2000 log-normalised HVGs and a 128-d latent).
    margin: float = 150.0
    #: Weight ``alpha`` of the adversarial (introspective) terms in both losses.
    alpha: float = 0.25
    #: Weight ``beta`` of the reconstruction error ``L_AE`` in both losses. ``L_AE`` is a unit-variance
    #: Gaussian's; PBMC3K's genes have a variance of ~0.3, and at ``beta=1`` the KL term wins and the
    #: latent code stays nearly unused (reconstruction error 274 -> 249 of a 274 baseline). 10 is
    #: cellsynth's (an observation scale of ~0.3).
    beta: float = 10.0
    #: Weight of the real cells' KL in the encoder loss.
    kl_weight: float = 1.0
    #: Weight of the classifier's cross-entropy on sampled cells in the decoder loss.
    type_weight: float = 10.0
    #: ``"prediction"``: real cells are conditioned on the classifier's (detached) softmax
    #: prediction; ``"label"``: on their one-hot label.
    condition_on: Literal["prediction", "label"] = "prediction"
    #: What a sampled cell is. ``"mean"``: the decoder's output ``G(z, c)`` as it is (ACTIVA). ``"snapped"``
    #: (cellsynth): every value in a gene's gap between 0 and its smallest non-zero training value
    #: (log-normalised counts have no value there: one count is the smallest non-zero) becomes either
    #: that smallest value or 0, with the probability that keeps its expectation (value / smallest);
    #: the decoder's mean of a mostly-zero gene lands in that gap, so its cells are otherwise never
    #: sparse (PBMC3K: 41 % zeros vs 90 % real).
    output: Literal["snapped", "mean"] = "snapped"
    #: Epochs of plain conditional-VAE training before the introspective game starts (0 = none).
    warmup_epochs: int = 5
    epochs: int = 60
    batch_size: int = 128
    #: Adam learning rate of encoder and decoder (ACTIVA / IntroVAE: 2e-4, the ``paper`` preset; at
    #: ~17 steps per epoch on PBMC3K it barely moves within a few minutes, hence cellsynth's 1e-3).
    learning_rate: float = 1e-3
    #: Adam learning rate of the classifier.
    classifier_learning_rate: float = 1e-3
    weight_decay: float = 0.0
    #: Max gradient norm of each network's update; ``None`` disables clipping.
    grad_clip: float | None = 100.0
    #: Stratified fraction of the *training* cells held out for early stopping (0 = none).
    validation_fraction: float = 0.1
    #: Introspective epochs without validation improvement before stopping; ``None`` = run all.
    patience: int | None = 5
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    def __post_init__(self) -> None:
        check = Check("activa", self)
        check.training()
        check.integer("latent_dim")
        check.integer("warmup_epochs", minimum=0)
        check.widths("hidden", "classifier_hidden")
        check.number("margin", "alpha", "kl_weight", "type_weight", ge=0)
        check.number("beta", "classifier_learning_rate", gt=0)


class ActivaGenerator(Generator):
    """ACTIVA (Heydari et al., Bioinformatics 2022): conditional introspective VAE + cell-type classifier.

    Reads ``adata.X`` (log-normalised HVG expression, cells x genes) and ``adata.obs[label_key]``;
    ``sample`` returns non-negative log-normalised cells of the requested types (the decoder's ReLU
    output; the base class's clipping at 0 is then a no-op). Objective, conditioning, training
    losses and the origin of every hyperparameter: see the module docstring of
    :mod:`cellsynth.generators.activa.model`.

    Default preset on PBMC3K fold 0 (2000 HVGs, 2110 training cells; shared 2-core machine): 17
    epochs in 558 s (best validation epoch 11; validation negative ELBO 2554 -> 2322 per cell), the
    classifier 0.89 accurate on validation cells, 0.94 of cells sampled for the validation cells'
    types classified as the requested type. Honest protocol: WD x3.3 the floor, C2ST AUC 0.97,
    k-NN precision 0.84 but recall 0.02 (samples sit near the decoder's type means: realistic but
    far from covering the data), memorisation 0.92. Known limit: the decoder outputs a conditional
    mean, so sampled cells lack the cell-to-cell noise of real ones.

    Parameters
    ----------
    label_key
        ``obs`` column holding the cell type.
    **hyperparameters
        Fields of :class:`ActivaParams`.
    """

    name = "activa"
    Params = ActivaParams

    def __init__(self, label_key: str = LABEL_KEY, **hyperparameters):
        super().__init__(label_key=label_key, **hyperparameters)
        self._nets: ActivaNetworks | None = None

    # ------------------------------------------------------------------ helpers
    def _device(self) -> torch.device:
        return resolve_device(self.params.device, self.name)

    def _build(self, n_genes: int, seed: int) -> ActivaNetworks:
        """Fresh networks; the initial weights depend only on ``seed``."""
        with rng_scope(seed, self._device()):
            nets = ActivaNetworks(n_genes, len(self.cell_types_), self.params)
        return nets.to(self._device())

    def _condition(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cell-type vector of real cells: the classifier's prediction or the one-hot label."""
        if self.params.condition_on == "label":
            return F.one_hot(y, self._nets.n_types).to(x.dtype)
        with torch.no_grad():
            return F.softmax(self._nets.classifier(x), dim=1)

    @property
    def networks(self) -> ActivaNetworks:
        """The fitted encoder, decoder and classifier."""
        if self._nets is None:
            raise GeneratorError("activa: call fit() first")
        return self._nets

    # ------------------------------------------------------------------ hooks
    def _fit(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int,
        progress: bool,
        on_epoch: EpochCallback | None,
    ) -> TrainingHistory:
        p = self.params
        device = self._device()
        train_idx, val_idx = validation_split(len(X), p.validation_fraction, seed, labels)
        X_t = torch.from_numpy(X).to(device)
        y_t = torch.as_tensor(labels, dtype=torch.long, device=device)
        self._nets = nets = self._build(X.shape[1], seed)
        in_training_part = np.zeros((len(X), 1), dtype=bool)
        in_training_part[train_idx] = True
        # a masked mean, not a mean of X[train_idx] (a second copy of most of the matrix)
        train_mean = X.mean(axis=0, dtype=np.float64, where=in_training_part).astype(np.float32)
        nets.init_output_bias(torch.from_numpy(train_mean).to(device))
        positive = smallest_nonzero(X)
        nets.gene_floor.copy_(torch.from_numpy(np.where(np.isfinite(positive), positive, 0.0).astype(np.float32)))

        def adam(module: nn.Module, lr: float) -> torch.optim.Optimizer:
            return torch.optim.Adam(module.parameters(), lr=lr, weight_decay=p.weight_decay)

        opt_e = adam(nets.encoder, p.learning_rate)
        opt_g = adam(nets.decoder, p.learning_rate)
        opt_c = adam(nets.classifier, p.classifier_learning_rate)

        def step(batch: torch.Tensor, epoch: int) -> dict[str, float]:
            batch = batch.to(device)
            return self._step(X_t[batch], y_t[batch], epoch >= p.warmup_epochs, opt_e, opt_g, opt_c)

        return train(
            nets,
            step,
            train_idx,
            LoopSettings.from_params(p, "activa"),
            seed=seed,
            device=device,
            validate=(lambda: self._validate(X_t[val_idx], y_t[val_idx], seed)) if len(val_idx) else None,
            progress=progress,
            on_epoch=on_epoch,
        )

    def _step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        introspective: bool,
        opt_e: torch.optim.Optimizer,
        opt_g: torch.optim.Optimizer,
        opt_c: torch.optim.Optimizer,
    ) -> dict[str, float]:
        """One mini-batch: classifier, encoder and decoder updates. Returns the batch's loss terms."""
        p, nets = self.params, self._nets
        out: dict[str, float] = {}

        # Classifier: cross-entropy on real cells only.
        classifier_loss = F.cross_entropy(nets.classifier(x), y)
        update(classifier_loss, [opt_c], [nets.classifier], p.grad_clip)
        out["classifier_loss"] = classifier_loss.item()

        c = self._condition(x, y)
        c_p = F.one_hot(y, nets.n_types).to(x.dtype)  # sampled cells: the batch's types, one-hot

        def forward() -> tuple[torch.Tensor, ...]:
            mu, logvar = nets.encode(x, c)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            x_r = nets.decode(z, c)
            x_p = nets.decode(torch.randn_like(mu), c_p)
            return mu, logvar, z, x_r, x_p

        def type_loss(x_p: torch.Tensor) -> torch.Tensor:
            # Only the decoder is stepped on this term; the classifier's gradients are discarded.
            return F.cross_entropy(nets.classifier(x_p), y)

        mu, logvar, z, x_r, x_p = forward()
        kl_real = kl_to_prior(mu, logvar).mean()
        rec = reconstruction_error(x, x_r).mean()
        elbo = p.beta * rec + p.kl_weight * kl_real
        out |= {"train_loss": elbo.item(), "reconstruction": rec.item(), "kl_real": kl_real.item()}

        if not introspective:
            # Warm-up: a plain conditional VAE, encoder and decoder trained jointly.
            t_loss = type_loss(x_p)
            loss = elbo + p.type_weight * t_loss
            update(loss, [opt_e, opt_g], [nets.encoder, nets.decoder], p.grad_clip)
            with torch.no_grad():  # reported (not trained on) so every series has one value per epoch
                kl_rec_e = kl_to_prior(*nets.encode(x_r, c)).mean()
                kl_fake_e = kl_to_prior(*nets.encode(x_p, c_p)).mean()
            return out | {
                "encoder_loss": loss.item(),
                "decoder_loss": loss.item(),
                "kl_reconstructed": kl_rec_e.item(),
                "kl_sampled": kl_fake_e.item(),
                "type_loss": t_loss.item(),
            }

        # Encoder (discriminator): real cells near the prior, generated cells >= margin away.
        kl_rec_e = kl_to_prior(*nets.encode(x_r.detach(), c))
        kl_fake_e = kl_to_prior(*nets.encode(x_p.detach(), c_p))
        adversarial = (F.relu(p.margin - kl_rec_e) + F.relu(p.margin - kl_fake_e)).mean()
        loss_e = elbo + p.alpha * adversarial
        update(loss_e, [opt_e], [nets.encoder], p.grad_clip)

        # Decoder: the opposite pressure, through the updated encoder; z fixed (no encoder update).
        x_r = nets.decode(z.detach(), c)
        x_p = nets.decode(torch.randn_like(mu), c_p)
        kl_rec = kl_to_prior(*nets.encode(x_r, c)).mean()
        kl_fake = kl_to_prior(*nets.encode(x_p, c_p)).mean()
        rec_g = reconstruction_error(x, x_r).mean()
        t_loss = type_loss(x_p)
        loss_g = p.alpha * (kl_rec + kl_fake) + p.beta * rec_g + p.type_weight * t_loss
        update(loss_g, [opt_g], [nets.decoder], p.grad_clip)
        return out | {
            "encoder_loss": loss_e.item(),
            "decoder_loss": loss_g.item(),
            "kl_reconstructed": kl_rec_e.mean().item(),
            "kl_sampled": kl_fake_e.mean().item(),
            "type_loss": t_loss.item(),
        }

    @torch.no_grad()
    def _validate(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, float]:
        """Negative ELBO and classifier accuracies on the validation cells (fixed noise per call)."""
        p, nets = self.params, self._nets
        nets.eval()
        noise = seeded_generator(seed, NOISE_STREAM)
        eps = torch.randn((len(x), p.latent_dim), generator=noise).to(x.device)
        z_p = torch.randn((len(x), p.latent_dim), generator=noise).to(x.device)
        c = self._condition(x, y)
        mu, logvar = nets.encode(x, c)
        x_r = nets.decode(mu + eps * torch.exp(0.5 * logvar), c)
        elbo = p.beta * reconstruction_error(x, x_r) + p.kl_weight * kl_to_prior(mu, logvar)
        x_p = nets.decode(z_p, F.one_hot(y, nets.n_types).to(x.dtype))
        nets.train()
        return {
            "val_loss": elbo.mean().item(),
            "val_accuracy": (nets.classifier(x).argmax(1) == y).float().mean().item(),
            "val_sampled_accuracy": (nets.classifier(x_p).argmax(1) == y).float().mean().item(),
        }

    @torch.no_grad()
    def _sample(self, labels: np.ndarray, *, seed: int) -> np.ndarray:
        nets, device = self.networks, self._device()
        nets.eval()
        # All latent draws at once from a seeded generator: same seed, same cells, however chunked.
        draws = seeded_generator(seed)
        z = torch.randn((len(labels), self.params.latent_dim), generator=draws)
        c = one_hot(labels, nets.n_types)
        chunks = [
            nets.decode(z[s : s + SAMPLE_CHUNK].to(device), c[s : s + SAMPLE_CHUNK].to(device)).cpu()
            for s in range(0, len(labels), SAMPLE_CHUNK)
        ]
        X = torch.cat(chunks)
        if self.params.output == "snapped":
            floor = nets.gene_floor.cpu().expand_as(X)
            u = torch.rand(X.shape, generator=draws)
            gap = (X > 0) & (floor > X)
            # Mean-preserving: E[snapped] = floor * (X / floor) = X.
            snapped = torch.where(u * floor < X, floor, torch.zeros_like(X))
            X = torch.where(gap, snapped, X)
        return X.numpy().astype(np.float32)

    def _save_state(self, directory: Path) -> None:
        state = {k: v.detach().cpu() for k, v in self.networks.state_dict().items()}
        torch.save(state, directory / _STATE_FILE)

    def _load_state(self, directory: Path) -> None:
        self._nets = self._build(len(self.var_names_), seed=0)
        state = torch.load(directory / _STATE_FILE, map_location=self._device(), weights_only=True)
        self._nets.load_state_dict(state)
        self._nets.eval()
