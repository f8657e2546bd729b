"""Former home of the generation modes; kept only until the generation pipeline imports them from
:mod:`cellsynth.generators` (then delete this file)."""

from cellsynth.generators.counts import matched_counts, q3_upsample_counts
from cellsynth.generators.per_type import PerTypeGenerator

__all__ = ["PerTypeGenerator", "matched_counts", "q3_upsample_counts"]
