"""The torch modules of MOE-FB (:class:`~cellsynth.generators.moe.model.MOEGenerator`).

Every flow step maps ``forward(x, context) -> (z, logdet)`` and ``inverse(z, context) -> x``;
equation numbers are those of Turgut Ögme et al. (2025), section 4.3.5. :class:`MOEFlow` assembles
the steps from the fields of a :class:`~cellsynth.generators.moe.model.MOEParams`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from cellsynth.generators.base import GeneratorError

#: Cells inverted per chunk when sampling (speed only: the base draws are made for all cells first).
#: The fused attention keeps memory per chunk small (~100 MB at 2000 genes); larger chunks amortise
#: the per-pass overhead, which matters most for the D-pass nflows MAF of the ``paper`` preset.
SAMPLE_CHUNK = 1024

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
    input mask first when ``mask_mode == "input"`` and returns ``(log p, mean mask)``. ``params`` is a
    :class:`~cellsynth.generators.moe.model.MOEParams`, read by field name (the modules do not import
    the model).
    """

    def __init__(self, features: int, context_features: int, params: Any):
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
