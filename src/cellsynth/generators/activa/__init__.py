"""ACTIVA (``activa``): the networks in :mod:`.modules`, the generator in :mod:`.model`."""

from cellsynth.generators.activa.model import ActivaGenerator, ActivaParams

__all__ = ["ActivaGenerator", "ActivaParams"]
