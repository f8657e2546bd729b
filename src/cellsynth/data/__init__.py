"""Input validation, quality control, normalisation and fold splitting (no Kedro imports)."""

from cellsynth.data.preprocess import normalise, quality_control
from cellsynth.data.splits import assign_folds, make_fold
from cellsynth.data.validation import InputDataError, validate_counts

__all__ = [
    "InputDataError",
    "assign_folds",
    "make_fold",
    "normalise",
    "quality_control",
    "validate_counts",
]
