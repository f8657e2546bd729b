"""Generative models of single-cell expression behind one interface (no Kedro imports).

``GENERATORS`` maps the names used in parameter files to generator classes; every class implements
:class:`~cellsynth.generators.base.Generator` (``fit``, ``sample``, ``save``, ``load``).
"""

from cellsynth.generators.activa import ActivaGenerator
from cellsynth.generators.base import Generator, GeneratorError, TrainingHistory
from cellsynth.generators.baselines import (
    ClassGaussianPCAGenerator,
    GeneShuffleGenerator,
    TrainCopyGenerator,
)
from cellsynth.generators.maf import MAFGenerator
from cellsynth.generators.modes import PerTypeGenerator, matched_counts, q3_upsample_counts
from cellsynth.generators.moe import MOEGenerator
from cellsynth.generators.sdv_models import CTGANGenerator, GaussianCopulaGenerator, TVAEGenerator
from cellsynth.generators.smote import SMOTEGenerator

GENERATORS: dict[str, type[Generator]] = {}
GENERATORS["maf"] = MAFGenerator
GENERATORS["moe"] = MOEGenerator
GENERATORS["activa"] = ActivaGenerator
GENERATORS["ctgan"] = CTGANGenerator
GENERATORS["tvae"] = TVAEGenerator
GENERATORS["gaussian_copula"] = GaussianCopulaGenerator
GENERATORS["train_copy"] = TrainCopyGenerator
GENERATORS["gene_shuffle"] = GeneShuffleGenerator
GENERATORS["class_gaussian_pca"] = ClassGaussianPCAGenerator
GENERATORS["smote"] = SMOTEGenerator

__all__ = ["GENERATORS", "Generator", "GeneratorError", "PerTypeGenerator", "TrainingHistory", "matched_counts",
           "q3_upsample_counts"]
