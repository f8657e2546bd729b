"""cellsynth's count-space generator: a negative-binomial autoencoder with a learned prior in its latent
space (the recipe of CFGen, Palma et al., ICLR 2025, and scLDM), with the seed paper's flows as
prior choices."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from cellsynth.generators import flow_matching, maf, moe  # noqa: F401  (registers the prior choices)
from cellsynth.generators.base import EpochCallback, Generator, TrainingHistory
from cellsynth.generators.count_space import CountGenerator
from cellsynth.generators.scvi_vae import ScviDecoder, ScviParams, fit_scvi, load_decoder, save_decoder
from cellsynth.schema import LABEL_KEY

log = logging.getLogger(__name__)

_PRIOR_FOLDER = "latent_prior"
LatentPrior = Literal["flow_matching", "maf", "moe"]

#: Hyperparameters of each prior in a ~10-dimensional latent space, under the ``prior_params`` the
#: user gives. The gene-space defaults of ``maf`` and ``moe`` are tuned for 2,000 sparse genes (50
#: principal axes, 32 gene-group tokens, heavy training noise against overfitting); a latent space
#: is small, dense and smooth: 16 midpoint steps integrate its flow as well as 64 (PBMC3K fold 0,
#: docs/generators.md) in a quarter of the time.
LATENT_PRIOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "flow_matching": {"integration_steps": 16},
    "maf": {"noise_std": 0.05, "epochs": 300, "patience": 20, "hidden_features": 128},
    "moe": {"noise_std": 0.05, "n_tokens": 5, "d_model": 16, "n_heads": 2, "epochs": 200, "patience": 20},
}


@dataclasses.dataclass(frozen=True)
class NBLatentFlowParams(ScviParams):
    """Hyperparameters of :class:`NBLatentFlowGenerator`: the autoencoder's (scVI's names), then the prior's."""

    owner: ClassVar[str] = "nb_latent_flow"
    #: Per gene and cell (the decoder outputs it): with one dispersion per gene, even the latents
    #: of real cells decode to cells a classifier tells apart (see docs/generators.md).
    dispersion: Literal["gene", "gene-batch", "gene-cell"] = "gene-cell"
    #: The learned prior over latents, conditioned on cell type: conditional flow matching, or the
    #: seed paper's MAF-FB (``maf``) or MOE-FB (``moe``) run in the latent space.
    latent_prior: LatentPrior = "flow_matching"
    #: Hyperparameters of the prior (fields of its generator's ``Params``), over
    #: :data:`LATENT_PRIOR_DEFAULTS`.
    prior_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: What the prior learns from: ``0`` the posterior means of the training cells; ``k >= 1``, ``k``
    #: draws of each cell's posterior (the aggregate posterior the decoder was trained on, which
    #: the sampled latents should follow). On PBMC3K fold 0 means, 3 and 10 draws score alike
    #: (docs/generators.md); 10 draws triple the prior's fit time.
    posterior_draws: int = 3

    def __post_init__(self) -> None:
        check = self.check(self.owner)
        check.integer("posterior_draws", minimum=0)
        object.__setattr__(self, "prior_params", dict(self.prior_params or {}))
        self.prior_class()(**self.prior_hyperparameters())  # a typo fails now, not after the autoencoder trained

    def prior_class(self) -> type[Generator]:
        return Generator.registry[self.latent_prior]

    def prior_hyperparameters(self) -> dict[str, Any]:
        return {**LATENT_PRIOR_DEFAULTS[self.latent_prior], **self.prior_params}


def latent_cells(z: np.ndarray, labels: np.ndarray, cell_types: list[str]) -> AnnData:
    """Latents as an AnnData (``X`` = z, ``obs["cell_type"]``) for a prior, which is itself a generator."""
    obs = pd.DataFrame({LABEL_KEY: pd.Categorical.from_codes(labels, categories=cell_types)},
                       index=[str(i) for i in range(len(z))])
    return AnnData(X=np.asarray(z, dtype=np.float32), obs=obs,
                   var=pd.DataFrame(index=[f"z{i}" for i in range(z.shape[1])]))


class NBLatentFlowGenerator(CountGenerator):
    """Counts from a negative-binomial autoencoder whose latent prior is learned: cellsynth's own generator.

    1. **Autoencoder**: scVI's VAE (scvi-tools; Lopez et al., Nature Methods 2018) on the fold's HVG
       counts (``layers["counts"]``), cell type as the decoder's covariate: an encoder to a
       ``n_latent``-dimensional latent and a negative-binomial decoder.
    2. **Learned prior**: a generator of the latents of the training cells (their posterior means, or
       ``posterior_draws`` draws of each posterior), conditioned on cell type:
       conditional flow matching (:class:`~cellsynth.generators.flow_matching.FlowMatchingGenerator`,
       as CFGen, Palma et al., ICLR 2025, does in its autoencoder's latent space), or the seed paper's
       MAF-FB / MOE-FB in the latent space (``latent_prior="maf" | "moe"``).
    3. **Sampling** draws new latents from the prior (new points of an ODE or a flow, never stored
       latents of training cells), a library size per cell from the type's library-size model,
       negative-binomial counts from the decoder, and normalises them as the preprocessing does.

    scVI samples its latents from ``N(0, I)``, which the aggregate posterior of real cells does not
    fill: the learned prior puts the latents where real cells are. Reads ``layers["counts"]``,
    ``obs[label_key]``, ``obs["total_counts"]`` and ``uns["normalisation"]``; :meth:`sample` writes
    ``X`` (log-normalised, the fold's space) and integer ``layers["counts"]``.
    """

    name = "nb_latent_flow"
    Params = NBLatentFlowParams

    def __init__(self, label_key: str = LABEL_KEY, **hyperparameters):
        super().__init__(label_key=label_key, **hyperparameters)
        self._decoder: ScviDecoder | None = None
        self._prior: Generator | None = None

    def _fit_counts(self, counts: sp.csr_matrix, labels: np.ndarray, *, seed: int, progress: bool,
                    on_epoch: EpochCallback | None) -> TrainingHistory:
        p = self.params
        self._decoder, history = fit_scvi(counts, labels, self.cell_types_, p, seed=seed, progress=progress,
                                          description=f"{self.name} autoencoder")
        means, stds = self._decoder.posterior(counts, labels)
        if p.posterior_draws:
            rng = np.random.default_rng([seed, 3])
            z = np.concatenate([means + stds * rng.standard_normal(means.shape) for _ in range(p.posterior_draws)])
            z_labels = np.tile(labels, p.posterior_draws)
        else:
            z, z_labels = means, labels
        self._prior = p.prior_class()(label_key=LABEL_KEY, **p.prior_hyperparameters())
        prior_history = self._prior.fit(latent_cells(z, z_labels, self.cell_types_), seed=seed, progress=progress)
        history.extra["prior_train_loss"] = prior_history.train_loss
        history.extra["prior_val_loss"] = prior_history.val_loss
        return history

    def _sample_counts(self, labels: np.ndarray, hvg_library: np.ndarray, *, seed: int) -> np.ndarray:
        types = [self.cell_types_[code] for code in labels]
        z = self._prior.sample(len(labels), cell_types=types, seed=seed).X
        return self._decoder.counts(z, labels, hvg_library, np.random.default_rng([seed, 2]))

    def _save_model(self, directory: Path) -> None:
        save_decoder(self._decoder, directory)
        self._prior.save(directory / _PRIOR_FOLDER)

    def _load_model(self, directory: Path) -> None:
        self._decoder = load_decoder(self.params, len(self.var_names_), len(self.cell_types_), directory)
        self._prior = Generator.load(directory / _PRIOR_FOLDER)


@dataclasses.dataclass(frozen=True)
class NBLatentMAFParams(NBLatentFlowParams):
    """:class:`NBLatentFlowParams` with the seed paper's MAF-FB as the latent prior."""

    owner: ClassVar[str] = "nb_latent_maf"
    latent_prior: LatentPrior = "maf"


@dataclasses.dataclass(frozen=True)
class NBLatentMOEParams(NBLatentFlowParams):
    """:class:`NBLatentFlowParams` with the seed paper's MOE-FB as the latent prior."""

    owner: ClassVar[str] = "nb_latent_moe"
    latent_prior: LatentPrior = "moe"


class NBLatentMAFGenerator(NBLatentFlowGenerator):
    """:class:`NBLatentFlowGenerator` with MAF-FB (:class:`~cellsynth.generators.maf.MAFGenerator`) as the
    latent prior: the seed paper's flow, given the count model and the latent space it lacks."""

    name = "nb_latent_maf"
    Params = NBLatentMAFParams


class NBLatentMOEGenerator(NBLatentFlowGenerator):
    """:class:`NBLatentFlowGenerator` with MOE-FB (:class:`~cellsynth.generators.moe.MOEGenerator`) as the
    latent prior: the seed paper's flow, given the count model and the latent space it lacks."""

    name = "nb_latent_moe"
    Params = NBLatentMOEParams
