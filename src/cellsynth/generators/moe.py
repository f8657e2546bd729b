"""MOE-FB: the seed paper's mixture-of-experts flow, with attention that scales linearly in genes.

The seed paper (Turgut Ögme, Aydın & Kurt, "Comparison of generative models for single-cell RNA-seq
data", PLOS Comput Biol 21(10): e1013525, 2025, section 4.3.5, equations 8-19) proposes MOE-FB: a
contextual feature mask (eqs 8-10), optional ActNorm (eq 11), and blocks of [binary-mask split ->
mixture of E multi-head-attention experts over the conditioning half ``x_a`` weighted by a softmax
gate (eqs 13-15) -> affine coupling of the other half ``x_b`` with ``tanh`` scale and linear shift
(eqs 16-19)] followed by a masked autoregressive transform (MAF, Papamakarios, Pavlakou & Murray,
"Masked Autoregressive Flow for Density Estimation", NeurIPS 2017). This module implements it as
:class:`MOEGenerator` (registered as ``"moe"``).

AnnData fields
--------------
``fit`` reads ``adata.X`` (cells x genes, log-normalised HVG expression, dense or sparse) and
``adata.obs[label_key]``; it never writes to the input. ``sample`` returns a new AnnData with ``X``
(float32, same ``var_names``), ``obs[label_key]``, ``obs["synthetic"]``, ``obs["generator"] = "moe"``
and ``obs["label_source"]`` (``"conditioned"`` for the default, which is conditioned on the cell
type, ``"knn"`` for unconditional instances such as the ``paper`` preset).

Design choices (where this implementation departs from, or pins down, the paper's code)
--------------------------------------------------------------------------------------
Tokens (``tokens="gene_groups"``, the default).
    In the paper's code each cell is ONE token: ``MultiheadAttention(embed_dim=D, num_heads=20)`` on a
    sequence of length 1, where the softmax over a single key is identically 1, so every expert is
    just an affine D x D map (4 D^2 parameters per expert: 179 M parameters at D = 3000, out of memory
    at 17,789 genes). Here the conditioning half ``x_a`` (after the feature mask) is cut into a fixed
    number ``T = min(n_tokens, |x_a|)`` (default 32) of contiguous gene groups (size
    ``ceil(|x_a| / T)``, zero padded). Each group is embedded by its own linear map to ``d_model``
    plus a learned token embedding (plus a projection of the one-hot cell type when conditional).
    Each of the E experts is a multi-head self-attention over the T tokens (pre-layer-norm), exactly
    ``torch.nn.MultiheadAttention(d_model, n_heads)`` but with the E experts computed in one batched
    call (:class:`MultiExpertAttention`; a test checks the equivalence); the gate (eq 14,
    ``Linear-ReLU-Linear-softmax`` on ``x_a``) weights the experts (eq 15) and the result is added to
    the tokens as a residual, so each token keeps its own genes' information while attention lets it
    read the other groups. A shared ``Linear(d_model, coupling_hidden)-ReLU`` followed by a per-token
    linear map gives, for the genes of ``x_b`` assigned to that token (``x_b`` is cut into the same T
    groups), the raw scale (``s = tanh(.)``, eq 16) and shift (eq 17). Parameters and activations are
    O(D * (d_model + gate_hidden + coupling_hidden + mask_hidden + maf_hidden)) + O(T^2 * d_model):
    linear in the number of genes (``benchmarks/moe_scaling.py`` measures it). ``tokens="cell"``
    reproduces the paper's one-token attention (for the ``paper`` preset) with
    ``nn.MultiheadAttention(D, heads)``; if D is not divisible by ``n_heads`` the largest divisor of D
    not above ``n_heads`` is used: with one token the head count does not change the function
    computed (every head's attention weight is 1).

Feature mask (eqs 8-10) and invertibility.
    The mask ``x' = x (1 - m) + mean(x) m`` is not invertible (m depends on x, and x is not
    recoverable from x' in general), so it cannot be part of a bijection. ``mask_mode`` chooses:

    * ``"conditioner"`` (default): the mask acts only inside each coupling's conditioner. It is
      computed from, and applied to, the conditioning half: ``x_a' = x_a (1 - m(x_a)) + mean(x_a)
      m(x_a)`` (an MLP ``|x_a| -> mask_hidden -> |x_a|``), and ``x_a'`` feeds the gate and the
      attention experts that produce ``s, t``. ``x_a`` itself passes through unchanged
      (``z_a = x_a``), so the coupling stays triangular, its inverse is exact (the mask is recomputed
      from ``z_a = x_a``) and eq 19 is its exact log-determinant. The whole flow is an exact bijection
      of x: the loss is the exact negative log-likelihood of the (z-scored, noised, see below) cells
      plus ``mask_penalty * mean(m)`` (at most ``0.5 * mask_penalty`` per cell), and sampling simply
      inverts the flow.
    * ``"input"`` (``paper`` preset): the paper's code. The mask is computed from the whole cell
      (``D -> mask_hidden -> D``) and applied before the flow, never inverted, its log-determinant not
      in the likelihood; loss = NLL_flow(x') + ``mask_penalty`` * mean(m). That loss is NOT a
      likelihood of x (it is a likelihood of the masked cell x', whose map from x can shrink volume
      without penalty), and samples are samples of x' (the flow is inverted; the mask is not).
    * ``"off"``: no mask.

    In every mode the flow part (ActNorms, couplings, MAF steps) is an exact bijection with an exact
    log-determinant (``tests/test_moe.py`` checks inversion to 1e-4 and compares the log-determinant
    with the log-determinant of autograd's Jacobian).

Blocks.
    [per-type ActNorm] + ``n_blocks`` x [ActNorm, MoE coupling, ActNorm, MAF]; the binary mask
    alternates between even and odd genes from block to block and the MAF's gene order is reversed
    every other block, so every gene is transformed and conditions the others. ActNorm (eq 11,
    ``y = exp(log_s) x + b``) starts at the identity or, with ``actnorm_init="data"``, from the first
    training batch's statistics. ``type_actnorm`` (default, conditional models only) prepends an
    ActNorm whose scale and shift are looked up per cell type and initialised to the per-type z-scores
    of the training part (shrunk towards all cells with a weight of 5 cells): the flow starts as a
    per-type diagonal Gaussian and learns the rest (Adam's step size would otherwise need about a
    thousand steps to move the per-type means).

MAF step.
    ``maf_backend="made"`` (default): :class:`BlockMADE`, a MADE (two hidden layers of ``maf_hidden``,
    conditioned on the cell type) over ``passes`` contiguous blocks of genes: block k is an affine
    function of blocks < k, so inversion, and hence sampling, takes ``passes`` network evaluations
    instead of D; masks are built from degrees, so memory is O(D * maf_hidden), and the output layer
    starts at zero (identity). ``maf_backend="zuko"``: the same structure with
    ``zuko.flows.MaskedAutoregressiveTransform`` (whose construction builds a D x D adjacency matrix).
    ``maf_backend="nflows"`` (``paper`` preset): nflows'
    ``MaskedAffineAutoregressiveTransform(features=D, hidden_features=maf_hidden)`` as in the paper's
    code, fully autoregressive: sampling needs D sequential network evaluations (for 2000 genes and
    1000 cells, 2000 passes of a network with ~10 M weights: many minutes on a CPU).

Regularisation and zeros.
    Training on 2000 genes with ~2000 cells overfits within a few epochs: the flow squeezes each gene's
    point mass at zero and the directions the few cells do not span, and the validation NLL explodes.
    ``noise_std`` (default 0.5, in z-score units) adds Gaussian noise to every training value (not to
    the validation cells, which early stopping scores as they are): a ridge on the covariance and a
    floor on each atom's width. The model is
    then a model of the noised cells, which smears the zeros; ``snap_zeros`` (default) sets sampled
    values below a gene's smallest non-zero training value to zero (the training data has no value in
    that gap). On PBMC3K this restores the fraction of zeros (0.90 real vs 0.90 sampled).

Initialisation.
    With ``identity_init=True`` (default) each coupling's and MADE's output layer starts at zero, so
    they start as the identity (stable start; the attention still receives gradients through them).
    The ``paper`` preset keeps PyTorch's and nflows' default initialisation, as the paper's code does.

Data flow.
    Cells are z-scored per gene (:class:`~cellsynth.generators.base.Standardizer`, the paper's
    StandardScaler) before the flow and mapped back after sampling. Sampled z-scores are clipped to one
    standard deviation beyond each gene's training range (a guard against the rare exploding
    inverse; non-finite values are replaced by the bound) before the inverse scaling; the base class
    then clips at 0 for non-negative inputs.

Presets
-------
``PRESETS["default"]`` (= ``MOEGenerator()``, 4.1 M parameters at 2000 genes) learns on PBMC3K
(2000 HVGs, 2110 training cells): validation NLL 2718 -> 2624 nats per cell, best epoch 29 of 38, fraction
of zeros 0.905 (real 0.903), PCA-50 WD 0.43 against the held-out cells. Measured on a shared 2-core
machine at load ~10 with one torch thread: 406 s to fit, ~2 s to sample 1000 cells; an idle machine
is several times faster (``benchmarks/moe_pbmc3k.py``, ``benchmarks/moe_scaling.py``). Sampling
now uses a fused attention kernel and a one-block-per-pass MADE inverse (same cells up to float
rounding): about 0.7-0.8 CPU seconds per 1000 cells on one thread at 2000 genes, was ~1.2-1.3
(``benchmarks/bench.py`` reports it as ``cpu_cells_per_s_1thread``). ``PRESETS["paper"]`` is the
paper's code as documented in ``shared/reference/REFERENCE.md``: one block, ActNorm disabled, the
input mask ``D -> 1024 -> D``, 4 experts of one-token attention with 20 heads, gate and scale/shift
MLPs with 1024 hidden units, nflows MAF with 1024 hidden units, Adam lr 1e-6, 100 epochs, batch 128,
no noise, no validation/early stopping, no gradient clipping, unconditional. Use
``MOEGenerator.from_preset("paper", **overrides)``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from cellsynth.generators._torch import (
    LoopSettings,
    one_hot,
    resolve_device,
    seeded_generator,
    train_likelihood_model,
    validation_split,
)
from cellsynth.generators.base import (
    EpochCallback,
    Generator,
    GeneratorError,
    Standardizer,
    TrainingHistory,
    row_blocks,
    smallest_nonzero,
    snap_to_zero,
)

#: Cells inverted per chunk when sampling (speed only: the base draws are made for all cells first).
#: The fused attention keeps memory per chunk small (~100 MB at 2000 genes); larger chunks amortise
#: the per-pass overhead, which matters most for the D-pass nflows MAF of the ``paper`` preset.
SAMPLE_CHUNK = 1024

# ---------------------------------------------------------------------------------------------------
# Flow building blocks. Every step maps forward(x, context) -> (z, logdet) and inverse(z, context) -> x.


class GroupMoments:
    """Per-group count, sum and sum of squares of feature vectors (float64), accumulated in blocks."""

    def __init__(self, features: int, groups: int):
        self.counts = torch.zeros(groups, dtype=torch.float64)
        self.sums = torch.zeros(groups, features, dtype=torch.float64)
        self.squares = torch.zeros(groups, features, dtype=torch.float64)

    def add(self, x: torch.Tensor, one_hot_groups: torch.Tensor | None = None) -> None:
        """Add the rows of ``x``; ``one_hot_groups`` (rows × groups) assigns them (all to group 0 if
        ``None``)."""
        x = x.double()
        weights = (
            torch.ones(len(x), 1, dtype=torch.float64) if one_hot_groups is None else (one_hot_groups > 0.5).double()
        )
        self.counts += weights.sum(0)
        self.sums += weights.T @ x
        self.squares += weights.T @ x.square()


class ActNorm(nn.Module):
    """Eq 11: ``y = exp(log_s) * x + b`` per feature; ``log|det J| = sum(log_s)``.

    With ``context_features > 0``, ``log_s`` and ``b`` are looked up per cell type (the context is a
    one-hot row), i.e. one ActNorm per type; :meth:`initialize` sets them from data. With
    ``data_init`` the first batch seen in training mode sets ``b`` and ``log_s`` so that batch has
    zero mean and unit variance per feature (standard deviations below 0.1 are raised to 0.1).
    """

    def __init__(self, features: int, context_features: int = 0, data_init: bool = False):
        super().__init__()
        self.context_features = context_features
        rows = max(1, context_features)
        self.loc = nn.Parameter(torch.zeros(rows, features))
        self.log_scale = nn.Parameter(torch.zeros(rows, features))
        self.register_buffer("initialized", torch.tensor(not data_init))

    def _affine(self, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.context_features:
            return context @ self.loc, context @ self.log_scale
        return self.loc[0], self.log_scale[0]

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, context: torch.Tensor | None = None, prior: float = 5.0) -> None:
        """Map each type's cells (or all cells) to zero mean, unit variance.

        A type's mean and variance are shrunk towards those of all cells with a weight of ``prior``
        cells; standard deviations below 0.1 are raised to 0.1.
        """
        moments = GroupMoments(x.shape[1], max(1, self.context_features))
        moments.add(x, context if self.context_features else None)
        self.initialize_from(moments, prior)

    @torch.no_grad()
    def initialize_from(self, moments: GroupMoments, prior: float = 5.0) -> None:
        """:meth:`initialize` from accumulated per-type moments (data seen in blocks)."""
        n, sums, squares = moments.counts[:, None], moments.sums, moments.squares
        total = n.sum()
        mean_all = sums.sum(0) / total
        var_all = squares.sum(0) / total - mean_all**2
        weight = (n + prior).clamp_min(1e-12)
        mean = (sums + prior * mean_all) / weight
        # sum over the type's cells of (x - mean)^2, from its moments
        spread = squares - 2 * mean * sums + n * mean**2
        var = (spread + prior * (var_all + (mean_all - mean) ** 2)) / weight
        std = var.clamp_min(0).sqrt().clamp_min(0.1)
        self.log_scale.copy_(-torch.log(std))
        self.loc.copy_(-mean / std)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized) and x.shape[0] > 1:
            self.initialize(x, context, prior=0.0)
        loc, log_scale = self._affine(context)
        z = x * torch.exp(log_scale) + loc
        return z, log_scale.sum(-1).expand(x.shape[0])

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        loc, log_scale = self._affine(context)
        return (z - loc) * torch.exp(-log_scale)


class FeatureMask(nn.Module):
    """Eqs 8-10: ``m = 0.5 * sigmoid(W_m relu(W_c x + b_c) + b_m)``, ``x' = x (1 - m) + mean(x) m``.

    Not invertible; returns ``(x', m)``.
    """

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = 0.5 * torch.sigmoid(self.net(x))
        x_bar = x.mean(dim=-1, keepdim=True)
        return x * (1 - m) + x_bar * m, m


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


class MultiExpertAttention(nn.Module):
    """E independent multi-head self-attention experts over the same tokens, mixed by gate weights.

    Expert e is exactly ``nn.MultiheadAttention(d_model, n_heads, batch_first=True)`` (same projections,
    same initialisation); the E experts run as one batched computation. ``forward(tokens, gate)`` returns
    ``sum_e gate[:, e] * MHA_e(tokens)`` (eqs 13 and 15).
    """

    def __init__(self, d_model: int, n_heads: int, n_experts: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.n_experts = d_model, n_heads, n_experts
        self.in_weight = nn.Parameter(torch.empty(n_experts, d_model, 3 * d_model))
        self.in_bias = nn.Parameter(torch.zeros(n_experts, 3 * d_model))
        self.out_weight = nn.Parameter(torch.empty(n_experts, d_model, d_model))
        self.out_bias = nn.Parameter(torch.zeros(n_experts, d_model))
        for e in range(n_experts):  # as nn.MultiheadAttention: xavier in_proj, Linear-default out_proj
            w = torch.empty(3 * d_model, d_model)
            nn.init.xavier_uniform_(w)
            self.in_weight.data[e] = w.t()
            w = torch.empty(d_model, d_model)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            self.out_weight.data[e] = w.t()

    def _attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-expert, per-head attention ``(batch, E, heads, T, head_dim)`` before the output projection."""
        batch, n_tok, d = tokens.shape
        qkv = torch.einsum("btd,edf->betf", tokens, self.in_weight) + self.in_bias[:, None, :]
        qkv = qkv.view(batch, self.n_experts, n_tok, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
        scores = (q @ k.transpose(-1, -2)) * (d // self.n_heads) ** -0.5
        return torch.softmax(scores, dim=-1) @ v

    def expert_outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, E, T, d_model)``: every expert's output, ``MHA_e(tokens)`` (eq 13)."""
        batch, n_tok, d = tokens.shape
        att = self._attend(tokens).transpose(2, 3).reshape(batch, self.n_experts, n_tok, d)
        return torch.einsum("betd,edf->betf", att, self.out_weight) + self.out_bias[:, None, :]

    def _attend_fused(self, tokens: torch.Tensor) -> torch.Tensor:
        """:meth:`_attend` with the scaling folded into the queries and the softmax fused
        (``scaled_dot_product_attention``): the ``(batch, E, heads, T, T)`` scores are never
        materialised. The same function up to float rounding; used when sampling (inversion)."""
        batch, n_tok, d = tokens.shape
        qkv = torch.einsum("btd,edf->betf", tokens, self.in_weight) + self.in_bias[:, None, :]
        qkv = qkv.view(batch, self.n_experts, n_tok, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
        shape = (batch * self.n_experts, self.n_heads, n_tok, d // self.n_heads)
        att = nn.functional.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape))
        return att.view(batch, self.n_experts, self.n_heads, n_tok, d // self.n_heads)

    def forward(self, tokens: torch.Tensor, gate: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """``fused=True``: the attention of :meth:`_attend_fused` (inference; training keeps the
        explicit softmax, so trained weights do not depend on it)."""
        batch, n_tok, d = tokens.shape
        att = (self._attend_fused(tokens) if fused else self._attend(tokens)) * gate[:, :, None, None, None]
        att = att.permute(0, 3, 1, 2, 4).reshape(batch, n_tok, self.n_experts * d)
        return att @ self.out_weight.reshape(self.n_experts * d, d) + (gate @ self.out_bias)[:, None, :]


class MoEAttentionCoupling(nn.Module):
    """Eqs 12-19: affine coupling of ``x_b`` whose scale and shift come from a mixture of attention experts.

    Parameters
    ----------
    features
        Number of genes D.
    cond_index
        Indices of the conditioning half ``x_a`` (binary mask M = 1); the rest is ``x_b``.
    context_features
        Width of the one-hot cell-type context (0: unconditional).
    tokens
        ``"gene_groups"``: ``x_a`` cut into ``n_tokens`` gene-group tokens of width ``d_model``
        (linear in D). ``"cell"``: the paper's single token of width D (quadratic in D).
    mask
        Whether the conditioner applies the contextual feature mask (eqs 8-10) to ``x_a``.

    After each ``forward``/``inverse``, ``self.mask_mean`` holds the batch mean of the mask (a
    differentiable scalar tensor, 0 without a mask) for the loss's mask penalty.
    """

    def __init__(
        self,
        features: int,
        cond_index: torch.Tensor,
        context_features: int = 0,
        *,
        tokens: Literal["gene_groups", "cell"] = "gene_groups",
        n_tokens: int = 32,
        d_model: int = 40,
        n_experts: int = 4,
        n_heads: int = 10,
        gate_hidden: int = 64,
        coupling_hidden: int = 64,
        mask: bool = True,
        mask_hidden: int = 64,
        identity_init: bool = True,
    ):
        super().__init__()
        cond = torch.zeros(features, dtype=torch.bool)
        cond[cond_index] = True
        if cond.all() or not cond.any():
            raise ValueError("the binary mask must leave genes on both sides of the coupling")
        self.register_buffer("cond_index", torch.nonzero(cond).squeeze(1))
        self.register_buffer("trans_index", torch.nonzero(~cond).squeeze(1))
        self.features = features
        self.tokens = tokens
        n_a, n_b = len(self.cond_index), len(self.trans_index)
        self.context_features = context_features
        self.mask = FeatureMask(n_a, mask_hidden) if mask else None
        self.mask_mean = torch.zeros(())

        if tokens == "gene_groups":
            if d_model % n_heads:
                raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
            self.n_tok = min(n_tokens, n_a)
            self.group_a = math.ceil(n_a / self.n_tok)
            self.group_b = math.ceil(n_b / self.n_tok)
            self.embed_weight = nn.Parameter(torch.randn(self.n_tok, self.group_a, d_model) / math.sqrt(self.group_a))
            self.token_embedding = nn.Parameter(0.02 * torch.randn(self.n_tok, d_model))
            self.context_proj = nn.Linear(context_features, d_model) if context_features else None
            self.norm = nn.LayerNorm(d_model)
            self.experts = MultiExpertAttention(d_model, n_heads, n_experts)
            self.head_hidden = nn.Sequential(nn.Linear(d_model, coupling_hidden), nn.ReLU())
            self.head_weight = nn.Parameter(
                torch.randn(self.n_tok, coupling_hidden, 2 * self.group_b) / math.sqrt(coupling_hidden)
            )
            self.head_bias = nn.Parameter(torch.zeros(self.n_tok, 2 * self.group_b))
            if identity_init:
                nn.init.zeros_(self.head_weight)
        elif tokens == "cell":
            heads = _largest_divisor_at_most(features, n_heads)
            self.n_heads_used = heads
            self.context_proj = nn.Linear(context_features, features) if context_features else None
            self.experts = nn.ModuleList(
                nn.MultiheadAttention(features, heads, batch_first=True) for _ in range(n_experts)
            )
            self.scale_net = nn.Sequential(
                nn.Linear(features, coupling_hidden), nn.ReLU(), nn.Linear(coupling_hidden, features)
            )
            self.shift_net = nn.Sequential(
                nn.Linear(features, coupling_hidden), nn.ReLU(), nn.Linear(coupling_hidden, features)
            )
            if identity_init:
                for net in (self.scale_net, self.shift_net):
                    nn.init.zeros_(net[-1].weight)
                    nn.init.zeros_(net[-1].bias)
        else:
            raise ValueError(f"unknown tokens {tokens!r}")
        gate_in = (features if tokens == "cell" else n_a) + context_features
        self.gate = nn.Sequential(nn.Linear(gate_in, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, n_experts))

    # -- conditioner: x_a (and context) -> s, t for x_b
    def _scale_shift(
        self, x_a: torch.Tensor, context: torch.Tensor | None, fused: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x_a.shape[0]
        if self.mask is not None:
            x_a, m = self.mask(x_a)
            self.mask_mean = m.mean()
        else:
            self.mask_mean = x_a.new_zeros(())
        if self.tokens == "cell":
            # the paper's x_a = x * M: a D-vector with zeros on x_b, one token per cell
            full = x_a.new_zeros(batch, self.features)
            full[:, self.cond_index] = x_a
            gate_in = full if context is None else torch.cat([full, context], dim=1)
            token = full if self.context_proj is None else full + self.context_proj(context)
            token = token.unsqueeze(1)
            experts = torch.stack([mha(token, token, token, need_weights=False)[0][:, 0] for mha in self.experts], 1)
            g = torch.softmax(self.gate(gate_in), dim=-1)  # eq 14
            h = (g.unsqueeze(-1) * experts).sum(1)  # eq 15
            s = torch.tanh(self.scale_net(h))[:, self.trans_index]  # eq 16
            t = self.shift_net(h)[:, self.trans_index]  # eq 17
            return s, t
        gate_in = x_a if context is None else torch.cat([x_a, context], dim=1)
        pad = self.n_tok * self.group_a - x_a.shape[1]
        groups = nn.functional.pad(x_a, (0, pad)).view(batch, self.n_tok, self.group_a)
        tok = torch.einsum("btg,tgd->btd", groups, self.embed_weight) + self.token_embedding
        if self.context_proj is not None:
            tok = tok + self.context_proj(context).unsqueeze(1)
        g = torch.softmax(self.gate(gate_in), dim=-1)  # eq 14
        h = tok + self.experts(self.norm(tok), g, fused=fused)  # eqs 13, 15 (+ residual)
        out = torch.einsum("bth,tho->bto", self.head_hidden(h), self.head_weight) + self.head_bias
        out = out.view(batch, self.n_tok, self.group_b, 2).reshape(batch, -1, 2)[:, : len(self.trans_index)]
        return torch.tanh(out[..., 0]), out[..., 1]  # eqs 16, 17

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(x[:, self.cond_index], context)
        z = x.clone()
        z[:, self.trans_index] = x[:, self.trans_index] * torch.exp(s) + t  # eq 18
        return z, s.sum(dim=1)  # eq 19

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # without autograd (sampling) the fused attention kernel; with it, the training path
        s, t = self._scale_shift(z[:, self.cond_index], context, fused=not torch.is_grad_enabled())
        x = z.clone()
        x[:, self.trans_index] = (z[:, self.trans_index] - t) * torch.exp(-s)
        return x


class BlockMADE(nn.Module):
    """Masked affine autoregressive transform over ``passes`` blocks of genes (MADE, Germain et al. 2015).

    Genes are cut, in ``order`` (ascending, or descending with ``reverse``), into ``passes`` contiguous
    blocks; the scale and shift of a gene in block k depend on the genes of blocks < k (and on the
    context) through a masked MLP with two hidden layers of width ``hidden``. The masks come from
    degrees (block index of each gene, a degree in ``0..passes-2`` per hidden unit), so they and the
    weights take O(D * hidden) memory (no D x D adjacency matrix, unlike zuko's and nflows' mask
    construction). ``y = x exp(log_s) + t`` with ``log_s = 3 tanh(raw / 3)``; the inverse takes
    ``passes`` network evaluations. With ``identity_init`` the output layer starts at zero.
    """

    max_log_scale = 3.0

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        *,
        hidden: int = 256,
        passes: int = 2,
        reverse: bool = False,
        identity_init: bool = True,
    ):
        super().__init__()
        self.features = features
        self.passes = max(1, min(passes, features))
        position = torch.arange(features)
        if reverse:
            position = position.flip(0)
        block = position * self.passes // features  # block index of each gene
        degree = torch.arange(hidden) % max(1, self.passes - 1)  # a unit of degree d sees blocks <= d
        self.register_buffer("block", block)
        self.register_buffer("mask_in", block[None, :] <= degree[:, None])  # (hidden, features)
        self.register_buffer("mask_hidden", degree[None, :] <= degree[:, None])  # (hidden, hidden)
        self.register_buffer("mask_out", degree[None, :] < block[:, None])  # (features, hidden)
        self.layer_in = nn.Linear(features, hidden)
        self.layer_hidden = nn.Linear(hidden, hidden)
        self.layer_out = nn.Linear(hidden, 2 * features)
        self.context_in = nn.Linear(context_features, hidden, bias=False) if context_features else None
        self.context_out = nn.Linear(context_features, 2 * features, bias=False) if context_features else None
        with torch.no_grad():  # rescale for the fraction of inputs each unit actually sees
            fan_in = self.mask_in.sum(1, keepdim=True).clamp_min(1).float()
            self.layer_in.weight.mul_(math.sqrt(features) / fan_in.sqrt())
        if identity_init:
            nn.init.zeros_(self.layer_out.weight)
            nn.init.zeros_(self.layer_out.bias)
            if self.context_out is not None:
                nn.init.zeros_(self.context_out.weight)

    def _params(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = nn.functional.linear(x, self.layer_in.weight * self.mask_in, self.layer_in.bias)
        if self.context_in is not None:
            h = h + self.context_in(context)
        h = torch.relu(h)
        h = torch.relu(nn.functional.linear(h, self.layer_hidden.weight * self.mask_hidden, self.layer_hidden.bias))
        mask_out = self.mask_out.repeat(2, 1)
        out = nn.functional.linear(h, self.layer_out.weight * mask_out, self.layer_out.bias)
        if self.context_out is not None:
            out = out + self.context_out(context)
        raw_scale, shift = out.chunk(2, dim=1)
        return self.max_log_scale * torch.tanh(raw_scale / self.max_log_scale), shift

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        log_s, shift = self._params(x, context)
        return x * torch.exp(log_s) + shift, log_s.sum(dim=1)

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Invert block by block: pass k computes only block k, from blocks < k.

        Equal (up to float rounding) to ``passes`` evaluations of the full network
        (:meth:`inverse_reference`), but each pass adds only the new block's inputs to the first
        hidden layer and computes only the new block's outputs, so the whole inversion costs about
        one network evaluation plus ``passes - 1`` evaluations of the hidden layer.
        """
        x = torch.zeros_like(z)
        # the masked weights once per call (the full network re-masks them at every pass)
        w_in = self.layer_in.weight * self.mask_in
        w_hidden = self.layer_hidden.weight * self.mask_hidden
        w_out = self.layer_out.weight * self.mask_out.repeat(2, 1)
        pre = self.layer_in.bias.expand(z.shape[0], -1)  # first layer at x = 0
        if self.context_in is not None:
            pre = pre + self.context_in(context)
        ctx_out = self.context_out(context) if self.context_out is not None else None
        previous = None
        for genes in self._block_slices():
            if previous is not None:  # blocks < k are final: add the last one's inputs
                pre = pre + x[:, previous] @ w_in[:, previous].t()
            h = torch.relu(pre)
            h = torch.relu(nn.functional.linear(h, w_hidden, self.layer_hidden.bias))
            shift_genes = slice(genes.start + self.features, genes.stop + self.features)
            raw_scale = nn.functional.linear(h, w_out[genes], self.layer_out.bias[genes])
            shift = nn.functional.linear(h, w_out[shift_genes], self.layer_out.bias[shift_genes])
            if ctx_out is not None:
                raw_scale = raw_scale + ctx_out[:, genes]
                shift = shift + ctx_out[:, shift_genes]
            log_s = self.max_log_scale * torch.tanh(raw_scale / self.max_log_scale)
            x[:, genes] = (z[:, genes] - shift) * torch.exp(-log_s)
            previous = genes
        return x

    def _block_slices(self) -> list[slice]:
        """The genes of block 0, 1, ... as slices (blocks are contiguous ranges of gene indices)."""
        block = self.block.tolist()
        slices = []
        for k in range(self.passes):
            members = [i for i, b in enumerate(block) if b == k]
            if members:
                if members[-1] - members[0] + 1 != len(members):  # pragma: no cover - by construction
                    raise AssertionError("BlockMADE blocks must be contiguous")
                slices.append(slice(members[0], members[-1] + 1))
        return slices

    def inverse_reference(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The textbook inversion: ``passes`` evaluations of the full network (for tests)."""
        x = torch.zeros_like(z)
        for _ in range(self.passes):  # after pass k the blocks 0..k are exact
            log_s, shift = self._params(x, context)
            x = (z - shift) * torch.exp(-log_s)
        return x


class MAFStep(nn.Module):
    """A masked autoregressive affine transform (Papamakarios et al. 2017), three implementations.

    ``backend="made"`` (default): :class:`BlockMADE`, ``passes`` blocks of genes, memory linear in D.
    ``backend="zuko"``: zuko's ``MaskedAutoregressiveTransform`` with the same block structure
    (inversion in ``passes`` evaluations; builds a transient D x D boolean adjacency).
    ``backend="nflows"``: nflows' fully autoregressive ``MaskedAffineAutoregressiveTransform`` (the
    paper's code; inversion in D evaluations).
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        *,
        backend: Literal["made", "zuko", "nflows"] = "made",
        hidden: int = 256,
        passes: int = 2,
        reverse: bool = False,
        identity_init: bool = True,
    ):
        super().__init__()
        self.backend = backend
        if backend == "made":
            self.net = BlockMADE(
                features, context_features, hidden=hidden, passes=passes, reverse=reverse, identity_init=identity_init
            )
        elif backend == "zuko":
            from zuko.flows import MaskedAutoregressiveTransform

            order = torch.arange(features)
            if reverse:
                order = order.flip(0)
            self.net = MaskedAutoregressiveTransform(
                features, context_features, passes=passes, order=order, hidden_features=(hidden, hidden)
            )
        elif backend == "nflows":
            from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform

            self.net = MaskedAffineAutoregressiveTransform(
                features=features, hidden_features=hidden, context_features=context_features or None
            )
        else:
            raise ValueError(f"unknown MAF backend {backend!r}")

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backend == "zuko":
            return self.net(context).call_and_ladj(x)
        return self.net(x, context)

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.backend == "zuko":
            return self.net(context).inv(z)
        if self.backend == "nflows":
            return self.net.inverse(z, context)[0]
        return self.net.inverse(z, context)


class MOEFlow(nn.Module):
    """The MOE-FB density: optional input mask, then ``n_blocks`` x [ActNorm, coupling, ActNorm, MAF].

    ``forward``/``inverse`` are the exact bijection (without the input mask); ``log_prob`` applies the
    input mask first when ``mask_mode == "input"`` and returns ``(log p, mean mask)``.
    """

    def __init__(self, features: int, context_features: int, params: MOEParams):
        super().__init__()
        if features < 2:
            raise GeneratorError("moe: needs at least 2 genes (a coupling splits the genes in two)")
        p = params
        self.features = features
        self.context_features = context_features
        self.input_mask = FeatureMask(features, p.mask_hidden) if p.mask_mode == "input" else None
        steps: list[nn.Module] = []
        if p.type_actnorm and context_features:
            steps.append(ActNorm(features, context_features))
        for block in range(p.n_blocks):
            if p.actnorm:
                steps.append(ActNorm(features, data_init=p.actnorm_init == "data"))
            steps.append(
                MoEAttentionCoupling(
                    features,
                    torch.arange(block % 2, features, 2),
                    context_features,
                    tokens=p.tokens,
                    n_tokens=p.n_tokens,
                    d_model=p.d_model,
                    n_experts=p.n_experts,
                    n_heads=p.n_heads,
                    gate_hidden=p.gate_hidden,
                    coupling_hidden=p.coupling_hidden,
                    mask=p.mask_mode == "conditioner",
                    mask_hidden=p.mask_hidden,
                    identity_init=p.identity_init,
                )
            )
            if p.actnorm:
                steps.append(ActNorm(features, data_init=p.actnorm_init == "data"))
            steps.append(
                MAFStep(
                    features,
                    context_features,
                    backend=p.maf_backend,
                    hidden=p.maf_hidden,
                    passes=p.passes,
                    reverse=block % 2 == 1,
                    identity_init=p.identity_init,
                )
            )
        self.steps = nn.ModuleList(steps)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for step in self.steps:
            x, ld = step(x, context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for step in reversed(self.steps):
            z = step.inverse(z, context)
        return z

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        masks = []
        if self.input_mask is not None:
            x, m = self.input_mask(x)
            masks.append(m.mean())
        z, logdet = self(x, context)
        masks += [s.mask_mean for s in self.steps if isinstance(s, MoEAttentionCoupling) and s.mask is not None]
        base = -0.5 * (z.pow(2).sum(dim=1) + self.features * math.log(2 * math.pi))
        mask_mean = torch.stack(masks).mean() if masks else x.new_zeros(())
        return base + logdet, mask_mean

    @torch.no_grad()
    def sample(
        self, n: int, context: torch.Tensor | None, generator: torch.Generator, chunk: int = SAMPLE_CHUNK
    ) -> torch.Tensor:
        """``n`` cells: base draws from ``generator`` (all at once), inverted in chunks of ``chunk`` cells.

        The chunking does not change the cells (the base draws are made first), only the speed. The
        inverse uses the fused attention kernel and the one-pass-per-block MADE inversion
        (:meth:`BlockMADE.inverse`); with the nflows MAF (``paper`` preset) each chunk costs D
        sequential network passes whatever its size, so large chunks amortise them.
        """
        device = next(self.parameters()).device
        z = torch.randn(n, self.features, generator=generator)
        out = []
        for start in range(0, n, chunk):
            zc = z[start : start + chunk].to(device)
            cc = None if context is None else context[start : start + chunk].to(device)
            out.append(self.inverse(zc, cc).cpu())
        return torch.cat(out) if out else z


# ---------------------------------------------------------------------------------------------------
# Generator


@dataclasses.dataclass(frozen=True)
class MOEParams:
    """Hyperparameters of :class:`MOEGenerator` (defaults: the preset that learns; see :data:`PRESETS`)."""

    #: Blocks of [ActNorm, MoE coupling, ActNorm, MAF].
    n_blocks: int = 2
    #: ``"gene_groups"``: ``n_tokens`` gene-group tokens (linear in genes). ``"cell"``: the paper's one
    #: token of width D (quadratic in genes).
    tokens: Literal["gene_groups", "cell"] = "gene_groups"
    n_tokens: int = 32
    #: Token width (gene-group tokens; must be divisible by ``n_heads``).
    d_model: int = 40
    n_experts: int = 4
    n_heads: int = 10
    #: Hidden width of the gate (eq 14).
    gate_hidden: int = 64
    #: Hidden width of the scale/shift networks (eqs 16-17).
    coupling_hidden: int = 64
    #: ``"made"``: :class:`BlockMADE`; ``"zuko"``: zuko's MAF transform; ``"nflows"``: the paper's
    #: fully autoregressive nflows transform.
    maf_backend: Literal["made", "zuko", "nflows"] = "made"
    maf_hidden: int = 256
    #: Blocks of genes of the made/zuko MAF = network passes per inversion (ignored by nflows).
    passes: int = 2
    actnorm: bool = True
    #: ``"data"``: the block ActNorms start from the first training batch's statistics.
    actnorm_init: Literal["identity", "data"] = "identity"
    #: Conditional models: a first ActNorm per cell type, initialised to the per-type z-scores.
    type_actnorm: bool = True
    #: Where the contextual feature mask (eqs 8-10) acts: see the module docstring.
    mask_mode: Literal["conditioner", "input", "off"] = "conditioner"
    mask_hidden: int = 64
    #: Weight of ``mean(mask)`` in the loss (the paper's 0.01).
    mask_penalty: float = 0.01
    #: Std of the Gaussian noise added to the z-scored training cells (0 = none).
    noise_std: float = 0.5
    #: Set sampled values below a gene's smallest non-zero training value to 0 (non-negative input).
    snap_zeros: bool = True
    #: Couplings and MADEs start as the identity (zero output layers).
    identity_init: bool = True
    #: Condition on the one-hot cell type; ``False`` = the base class labels samples by k-NN.
    conditional: bool = True
    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 5.0
    #: Stratified fraction of the training cells held out for early stopping (0 = none).
    validation_fraction: float = 0.1
    #: Epochs without validation improvement before stopping (``None`` = all epochs).
    patience: int | None = 8
    #: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    device: str = "cpu"

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            choices = typing.get_args(hints[field.name])
            if typing.get_origin(hints[field.name]) is Literal and getattr(self, field.name) not in choices:
                raise ValueError(f"moe: {field.name} must be one of {choices}, got {getattr(self, field.name)!r}")
        for name in ("n_blocks", "n_tokens", "d_model", "n_experts", "n_heads", "gate_hidden",
                     "coupling_hidden", "maf_hidden", "passes", "mask_hidden", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"moe: {name} must be >= 1, got {getattr(self, name)}")
        if self.tokens == "gene_groups" and self.d_model % self.n_heads:
            raise ValueError(f"moe: d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"moe: device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if not (self.noise_std >= 0 and self.mask_penalty >= 0 and self.weight_decay >= 0 and self.learning_rate > 0):
            raise ValueError("moe: noise_std, mask_penalty and weight_decay must be >= 0, learning_rate > 0")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"moe: validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.patience is not None and (self.patience < 1 or self.validation_fraction == 0):
            raise ValueError("moe: patience needs validation_fraction > 0 and must be >= 1 (or None)")


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {
        "n_blocks": 1,
        "tokens": "cell",
        "n_experts": 4,
        "n_heads": 20,
        "gate_hidden": 1024,
        "coupling_hidden": 1024,
        "maf_backend": "nflows",
        "maf_hidden": 1024,
        "actnorm": False,
        "type_actnorm": False,
        "mask_mode": "input",
        "mask_hidden": 1024,
        "mask_penalty": 0.01,
        "noise_std": 0.0,
        "snap_zeros": False,
        "identity_init": False,
        "conditional": False,
        "epochs": 100,
        "batch_size": 128,
        "learning_rate": 1e-6,
        "weight_decay": 0.0,
        "grad_clip": None,
        "validation_fraction": 0.0,
        "patience": None,
    },
}
"""Named hyperparameter sets: ``"default"`` (learns in minutes) and ``"paper"`` (the paper's code)."""


class MOEGenerator(Generator):
    """MOE-FB (Turgut Ögme et al., PLOS Comput Biol 21(10): e1013525, 2025, eqs 8-19).

    A normalizing flow (Papamakarios et al. 2017 MAF steps interleaved with mixture-of-attention-
    experts affine couplings) on the z-scored log-normalised HVG matrix. See the module docstring for
    the token design (gene groups, linear memory in genes) and how the non-invertible feature mask is
    handled (``mask_mode``).

    Parameters
    ----------
    label_key
        ``obs`` column with the cell type; read by ``fit`` (always, for the k-NN labeller of
        unconditional instances) and used as the flow's context when ``conditional=True``.
    **hyperparameters
        Fields of :class:`MOEParams`; see :data:`PRESETS` and :meth:`from_preset`.

    Notes
    -----
    ``fit`` reads ``adata.X`` and ``adata.obs[label_key]``; ``sample`` writes a new AnnData (``X``,
    ``obs[label_key]``, ``obs["synthetic"]``, ``obs["generator"]``, ``obs["label_source"]``). The
    training loss (``TrainingHistory.train_loss``/``val_loss``) is the mean negative log-likelihood
    per cell in z-scored space plus ``mask_penalty * mean(mask)``.
    """

    name: ClassVar[str] = "moe"
    Params: ClassVar[type] = MOEParams

    def __init__(self, label_key: str = "cell_type", **hyperparameters: Any):
        super().__init__(label_key=label_key, **hyperparameters)
        self.conditional = bool(self.params.conditional)
        self._flow: MOEFlow | None = None
        self._standardizer: Standardizer | None = None
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None
        self._zero_below: np.ndarray | None = None

    @classmethod
    def from_preset(cls, preset: str = "default", label_key: str = "cell_type", **overrides: Any) -> MOEGenerator:
        """A generator with the ``preset``'s hyperparameters, updated by ``overrides``."""
        if preset not in PRESETS:
            raise ValueError(f"moe: unknown preset {preset!r}; known: {sorted(PRESETS)}")
        return cls(label_key=label_key, **{**PRESETS[preset], **overrides})

    # ------------------------------------------------------------------ internals
    def _device(self) -> torch.device:
        return resolve_device(self.params.device, self.name)

    def _build(self, n_genes: int) -> MOEFlow:
        n_ctx = len(self.cell_types_) if self.conditional else 0
        return MOEFlow(n_genes, n_ctx, self.params).to(self._device())

    def _context(self, labels: np.ndarray) -> torch.Tensor | None:
        return one_hot(labels, len(self.cell_types_)) if self.conditional else None

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
        self.conditional = bool(p.conditional)
        self._zero_below = smallest_nonzero(X)  # the support's gap (0, min) per gene
        self._standardizer = Standardizer().fit(X)
        Z = self._standardizer.transform(X, inplace=True)  # the fit's one dense copy (X is ours)
        self._bounds = (Z.min(axis=0) - 1.0, Z.max(axis=0) + 1.0)
        torch.manual_seed(seed)
        flow = self._build(X.shape[1])
        self._flow = flow
        device = self._device()
        context = self._context(labels)
        def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
            """Gaussian noise of ``noise_std`` on every z-scored value (training objective)."""
            if p.noise_std > 0:
                x = x + p.noise_std * torch.randn(x.shape, generator=generator).to(device)
            return x

        first = flow.steps[0] if len(flow.steps) else None
        if isinstance(first, ActNorm) and first.context_features:
            # the per-type ActNorm starts at the per-type z-scores of the (noisy) training part, not
            # of the validation slice
            fit_idx, _ = validation_split(len(Z), p.validation_fraction, seed, labels)
            moments, noise = GroupMoments(Z.shape[1], first.context_features), seeded_generator(seed + 2)
            for rows in row_blocks(len(fit_idx)):  # blocks, not a copy of the training part
                block = fit_idx[rows]
                moments.add(augment(torch.from_numpy(Z[block]), noise).cpu(), context[block])
            first.initialize_from(moments)

        def loss_fn(x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
            x = x.to(device)
            c = None if c is None else c.to(device)
            if flow.training:  # validation cells are scored as they are
                x = augment(x)
            log_p, mask_mean = flow.log_prob(x, c)
            return -log_p.mean() + p.mask_penalty * mask_mean

        settings = LoopSettings(
            epochs=p.epochs,
            batch_size=p.batch_size,
            learning_rate=p.learning_rate,
            weight_decay=p.weight_decay,
            grad_clip=p.grad_clip,
            patience=p.patience,
            validation_fraction=p.validation_fraction,
            description="moe",
        )
        return train_likelihood_model(
            flow,
            loss_fn,
            Z,
            None if context is None else context.numpy(),
            settings,
            seed=seed,
            progress=progress,
            on_epoch=on_epoch,
            stratify=labels,
        )

    def _sample(self, labels: np.ndarray, *, seed: int) -> np.ndarray:
        self._flow.eval()
        context = self._context(labels)
        Z = self._flow.sample(len(labels), context, seeded_generator(seed)).numpy().astype(np.float32, copy=False)
        low, high = self._bounds
        # in place: the sampled matrix is the only copy
        np.clip(np.nan_to_num(Z, copy=False, nan=0.0, posinf=np.inf, neginf=-np.inf), low, high, out=Z)
        X = self._standardizer.inverse_transform(Z, inplace=True)
        if self.params.snap_zeros and self.nonnegative_:
            # the training data has no value in (0, smallest non-zero value of the gene): mass the
            # (noise-smoothed) flow puts there is the zero atom
            snap_to_zero(X, self._zero_below)
        return X

    def _save_state(self, directory: Path) -> None:
        torch.save(self._flow.state_dict(), directory / "moe_flow.pt")
        np.savez(
            directory / "moe_state.npz",
            mean=self._standardizer.mean,
            scale=self._standardizer.scale,
            low=self._bounds[0],
            high=self._bounds[1],
            zero_below=self._zero_below,
        )

    def _load_state(self, directory: Path) -> None:
        state = np.load(directory / "moe_state.npz")
        self._standardizer = Standardizer(state["mean"], state["scale"])
        self._bounds = (state["low"], state["high"])
        self._zero_below = state["zero_below"]
        self.conditional = bool(self.params.conditional)
        self._flow = self._build(len(self.var_names_))
        self._flow.load_state_dict(torch.load(directory / "moe_flow.pt", map_location=self._device()))
        self._flow.eval()
