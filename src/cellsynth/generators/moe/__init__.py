"""MOE-FB (``moe``): the torch modules in :mod:`.modules`, the generator in :mod:`.model`."""

from cellsynth.generators.moe.model import MOEGenerator, MOEParams

__all__ = ["MOEGenerator", "MOEParams"]
