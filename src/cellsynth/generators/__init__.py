"""Generative models of single-cell expression behind one interface (no Kedro imports).

``GENERATORS`` maps the names used in parameter files to generator classes; every class implements
:class:`~cellsynth.generators.base.Generator` (``fit``, ``sample``, ``save``, ``load``).
"""

from cellsynth.generators.base import Generator, GeneratorError, TrainingHistory

GENERATORS: dict[str, type[Generator]] = {}

__all__ = ["GENERATORS", "Generator", "GeneratorError", "TrainingHistory"]
