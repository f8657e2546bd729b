"""MOE-FB, the seed paper's mixture-of-experts flow, as a cellsynth generator (registered as ``"moe"``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from cellsynth.generators.base import (
    EpochCallback,
    Generator,
    Standardizer,
    TrainingHistory,
    rng_scope,
    row_blocks,
    smallest_nonzero,
    snap_to_zero,
)
from cellsynth.generators.moe.modules import ActNorm, GroupMoments, MOEFlow
from cellsynth.generators.params import Check
from cellsynth.generators.training import (
    NOISE_STREAM,
    LoopSettings,
    fit_likelihood,
    one_hot,
    resolve_device,
    seeded_generator,
    validation_split,
)
from cellsynth.schema import LABEL_KEY


@dataclasses.dataclass(frozen=True)
class MOEParams:
    """Hyperparameters of :class:`MOEGenerator`; the defaults learn (``generator_presets.moe`` in
    ``conf/base/parameters_generation.yml`` also holds the paper's code as ``paper``)."""

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
    #: Where the contextual feature mask (eqs 8-10) acts: see :class:`MOEGenerator`.
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
    #: ``"auto"``: CUDA when available.
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    def __post_init__(self) -> None:
        check = Check("moe", self)
        check.training()
        check.integer("n_blocks", "n_tokens", "d_model", "n_experts", "n_heads", "gate_hidden", "coupling_hidden",
                      "maf_hidden", "passes", "mask_hidden")
        check.number("noise_std", "mask_penalty", ge=0)
        check.require(
            self.tokens != "gene_groups" or self.d_model % self.n_heads == 0,
            f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}",
        )


class MOEGenerator(Generator):
    """MOE-FB: a normalizing flow of mixture-of-attention-experts couplings and MAF steps.

    The seed paper (Turgut Ögme et al. 2025, section 4.3.5, eqs 8-19) proposes MOE-FB: a contextual
    feature mask (eqs 8-10), optional ActNorm (eq 11), and blocks of [binary-mask split -> mixture of
    E multi-head-attention experts over the conditioning half ``x_a`` weighted by a softmax gate (eqs
    13-15) -> affine coupling of the other half ``x_b`` with ``tanh`` scale and linear shift (eqs
    16-19)] followed by a masked autoregressive transform (MAF, Papamakarios et al. 2017). Here the
    flow models the z-scored log-normalised HVG matrix; its torch modules are in
    :mod:`cellsynth.generators.moe.modules`.

    Parameters
    ----------
    label_key
        ``obs`` column with the cell type; read by ``fit`` (always, for the k-NN labeller of
        unconditional instances) and used as the flow's context when ``conditional=True``.
    **hyperparameters
        Fields of :class:`MOEParams`. Named sets (``default``; ``paper``, the paper's code) are in
        ``conf/base/parameters_generation.yml`` under ``generator_presets.moe``.

    Notes
    -----
    AnnData fields: ``fit`` reads ``adata.X`` (cells x genes, log-normalised HVG expression, dense or
    sparse) and ``adata.obs[label_key]``, and never writes to the input. ``sample`` returns a new
    AnnData with ``X`` (float32, same ``var_names``), ``obs[label_key]``, ``obs["synthetic"]``,
    ``obs["generator"] = "moe"`` and ``obs["label_source"]`` (``"conditioned"``, or ``"knn"`` for
    unconditional instances such as the ``paper`` preset). The training loss
    (``TrainingHistory.train_loss`` / ``val_loss``) is the mean negative log-likelihood per cell in
    z-scored space plus ``mask_penalty * mean(mask)``.

    Where this implementation departs from, or pins down, the paper's code:

    Tokens (``tokens="gene_groups"``, the default)
        In the paper's code each cell is ONE token: ``MultiheadAttention(embed_dim=D, num_heads=20)``
        on a sequence of length 1, where the softmax over a single key is identically 1, so every
        expert is an affine D x D map (4 D^2 parameters per expert: 179 M at D = 3000). Here the
        conditioning half ``x_a`` (after the feature mask) is cut into ``T = min(n_tokens, |x_a|)``
        contiguous, zero-padded gene groups, each embedded by its own linear map to ``d_model`` plus a
        learned token embedding (plus a projection of the one-hot cell type when conditional). Each
        of the E experts is a multi-head self-attention over the T tokens (pre-layer-norm), computed
        together in one batched call (:class:`~cellsynth.generators.moe.modules.MultiExpertAttention`,
        equal to ``torch.nn.MultiheadAttention`` per expert); the gate (eq 14) weights the experts
        (eq 15) and the result is added to the tokens as a residual. A shared
        ``Linear(d_model, coupling_hidden)-ReLU`` and a per-token linear map give the raw scale
        (``s = tanh(.)``, eq 16) and shift (eq 17) of the genes of ``x_b`` assigned to that token.
        Parameters and activations are linear in the number of genes
        (``benchmarks/moe_scaling.py``). ``tokens="cell"`` is the paper's one-token attention; if D
        is not divisible by ``n_heads`` the largest divisor of D not above it is used (with one token
        the head count does not change the function).
    Feature mask (``mask_mode``)
        The mask ``x' = x (1 - m) + mean(x) m`` (eqs 8-10) is not invertible. ``"conditioner"``
        (default): it acts only inside each coupling's conditioner, computed from and applied to
        ``x_a``, which itself passes through unchanged, so the coupling stays triangular, its inverse
        exact and eq 19 its exact log-determinant; the loss is the exact NLL plus
        ``mask_penalty * mean(m)``. ``"input"`` (the paper's code): the mask is computed from the
        whole cell and applied before the flow, never inverted and outside the likelihood, so the
        loss is an NLL of the masked cell ``x'`` and samples are samples of ``x'``. ``"off"``: no
        mask. In every mode the flow itself is an exact bijection with an exact log-determinant
        (``tests/test_moe.py`` checks both).
    Blocks
        [per-type ActNorm] + ``n_blocks`` x [ActNorm, MoE coupling, ActNorm, MAF]; the binary mask
        alternates between even and odd genes and the MAF's gene order is reversed every other
        block. ActNorm (eq 11) starts at the identity or, with ``actnorm_init="data"``, from the first
        training batch. ``type_actnorm`` (conditional models) prepends an ActNorm per cell type
        initialised to the per-type z-scores of the training part (shrunk towards all cells with a
        weight of 5 cells): the flow starts as a per-type diagonal Gaussian.
    MAF step (``maf_backend``)
        ``"made"`` (default): a MADE with two hidden layers of ``maf_hidden`` over ``passes``
        contiguous blocks of genes, so inversion (sampling) takes ``passes`` network evaluations and
        memory is linear in genes. ``"zuko"``: the same structure with zuko's
        ``MaskedAutoregressiveTransform`` (builds a D x D adjacency). ``"nflows"`` (the paper's code):
        nflows' fully autoregressive ``MaskedAffineAutoregressiveTransform``; sampling takes D
        sequential network evaluations.
    Regularisation and zeros (``noise_std``, ``snap_zeros``)
        With about as many genes as cells the flow overfits within a few epochs (it squeezes each
        gene's point mass at zero). Gaussian noise of ``noise_std`` (z-score units) on every
        training value, not on the validation cells, bounds that; ``snap_zeros`` then sets sampled
        values below a gene's smallest non-zero training value to zero (the data have no value in
        that gap).
    Initialisation (``identity_init``)
        Couplings and MADEs start as the identity (zero output layers); the paper's code keeps
        PyTorch's and nflows' default initialisation.
    Data flow
        Cells are z-scored per gene (the paper's StandardScaler) before the flow and mapped back
        after sampling; sampled z-scores are clipped to one standard deviation beyond each gene's
        training range (non-finite values to the bound), a guard against a rare exploding inverse.

    References
    ----------
    Turgut Ögme, Aydın & Kurt, "Comparison of generative models for single-cell RNA-seq data",
    PLOS Comput Biol 21(10): e1013525, 2025 (MOE-FB: section 4.3.5, eqs 8-19).

    Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation",
    NeurIPS 2017.
    """

    name: ClassVar[str] = "moe"
    Params: ClassVar[type] = MOEParams

    def __init__(self, label_key: str = LABEL_KEY, **hyperparameters: Any):
        super().__init__(label_key=label_key, **hyperparameters)
        self.conditional = bool(self.params.conditional)
        self._flow: MOEFlow | None = None
        self._standardizer: Standardizer | None = None
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None
        self._zero_below: np.ndarray | None = None

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
        device = self._device()
        with rng_scope(seed, device):  # the initial weights depend on the seed only
            flow = self._build(X.shape[1])
        self._flow = flow
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
            moments, noise = GroupMoments(Z.shape[1], first.context_features), seeded_generator(seed, NOISE_STREAM)
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

        return fit_likelihood(
            flow,
            loss_fn,
            Z,
            None if context is None else context.numpy(),
            LoopSettings.from_params(p, "moe"),
            seed=seed,
            device=device,
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
        self._flow.load_state_dict(torch.load(directory / "moe_flow.pt", map_location=self._device(), weights_only=True))
        self._flow.eval()
