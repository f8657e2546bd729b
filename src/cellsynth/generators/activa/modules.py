"""The networks of ACTIVA (:class:`~cellsynth.generators.activa.model.ActivaGenerator`): encoder,
decoder and cell-type classifier, and the two loss terms they share."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: Log-variance of q(z|x) is clamped to this range: exp(logvar) over/underflowing is the usual way an
#: introspective VAE's encoder produces NaN once it starts pushing generated cells away.
_LOGVAR_RANGE = (-12.0, 8.0)


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of ``sizes`` with LeakyReLU(0.2) between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            # Leaky, as in IntroVAE's networks: the encoder-as-discriminator needs gradients for
            # inputs far from the data, which dead ReLUs would cut off.
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class ActivaNetworks(nn.Module):
    """Encoder, decoder and cell-type classifier of ACTIVA (see :mod:`cellsynth.generators.activa.model`).

    ``p`` is an :class:`~cellsynth.generators.activa.model.ActivaParams`, read by field name (the
    modules do not import the model).
    """

    def __init__(self, n_genes: int, n_types: int, p: Any):
        super().__init__()
        self.n_types = n_types
        self.latent_dim = p.latent_dim
        widths = list(p.hidden)
        self.encoder = _mlp([n_genes + n_types, *widths, 2 * p.latent_dim])
        self.decoder = _mlp([p.latent_dim + n_types, *reversed(widths), n_genes])
        self.classifier = _mlp([n_genes, *p.classifier_hidden, n_types])
        #: Smallest non-zero training value of each gene (0 for genes never expressed); ``output="snapped"``.
        self.register_buffer("gene_floor", torch.zeros(n_genes))

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(torch.cat([x, c], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(*_LOGVAR_RANGE)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # ReLU output (ACTIVA): log-normalised expression is >= 0, and exact zeros are reachable.
        return F.relu(self.decoder(torch.cat([z, c], dim=1)))

    @torch.no_grad()
    def init_output_bias(self, gene_means: torch.Tensor) -> None:
        """Start the decoder at each gene's mean: every output unit starts alive (> 0 where the gene
        is expressed), and reconstruction starts at the per-gene mean rather than at zero."""
        last = self.decoder[-1]
        last.bias.copy_(gene_means)
        last.weight.mul_(0.1)


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per cell, summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def reconstruction_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``0.5 * ||x - x_hat||^2`` per cell (summed over genes)."""
    return 0.5 * (x - x_hat).pow(2).sum(dim=1)
