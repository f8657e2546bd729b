"""Generative models of single-cell expression behind one interface (no Kedro imports).

``GENERATORS`` maps the names used in parameter files to generator classes; every class implements
:class:`~cellsynth.generators.base.Generator` (``fit``, ``sample``, ``save``, ``load``).
:class:`PerTypeGenerator` fits one of them per cell type; :func:`q3_upsample_counts` and
:func:`matched_counts` say how many cells of each type to request.
"""

from cellsynth.generators.activa import ActivaGenerator
from cellsynth.generators.base import Generator, GeneratorError, TrainingHistory
from cellsynth.generators.baselines import (
    ClassGaussianPCAGenerator,
    GeneShuffleGenerator,
    TrainCopyGenerator,
)
from cellsynth.generators.counts import matched_counts, q3_upsample_counts
from cellsynth.generators.flow_matching import FlowMatchingGenerator
from cellsynth.generators.latent_flow import NBLatentFlowGenerator, NBLatentMAFGenerator, NBLatentMOEGenerator
from cellsynth.generators.maf import MAFGenerator
from cellsynth.generators.moe import MOEGenerator
from cellsynth.generators.per_type import PerTypeGenerator
from cellsynth.generators.scvi_vae import ScviGenerator
from cellsynth.generators.sdv_models import CTGANGenerator, GaussianCopulaGenerator, TVAEGenerator
from cellsynth.generators.smote import SMOTEGenerator

GENERATORS: dict[str, type[Generator]] = {
    cls.name: cls
    for cls in (
        MAFGenerator,
        MOEGenerator,
        ActivaGenerator,
        CTGANGenerator,
        TVAEGenerator,
        GaussianCopulaGenerator,
        TrainCopyGenerator,
        GeneShuffleGenerator,
        ClassGaussianPCAGenerator,
        SMOTEGenerator,
        ScviGenerator,
        NBLatentFlowGenerator,
        NBLatentMAFGenerator,
        NBLatentMOEGenerator,
        FlowMatchingGenerator,
    )
}

__all__ = [
    "GENERATORS",
    "Generator",
    "GeneratorError",
    "PerTypeGenerator",
    "TrainingHistory",
    "matched_counts",
    "q3_upsample_counts",
]
