"""SMOTE: the up-sampling reference a practitioner would reach for before a deep generator.

Chawla et al., "SMOTE: Synthetic Minority Over-sampling Technique", JAIR 16:321 (2002), through
imbalanced-learn's :class:`~imblearn.over_sampling.SMOTE`. Each new cell of type *t* lies on the
segment between a random training cell of type *t* and one of its ``k_neighbors`` nearest
same-type neighbours (in the input space: log-normalised HVG expression).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from cellsynth.generators.baselines import _TrainingCellsBaseline
from cellsynth.generators.params import Check

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SMOTEParams:
    """Hyperparameters of :class:`SMOTEGenerator`."""

    #: Same-type neighbours to interpolate towards (imbalanced-learn's default: 5).
    k_neighbors: int = 5

    def __post_init__(self) -> None:
        Check("smote", self).integer("k_neighbors")


class SMOTEGenerator(_TrainingCellsBaseline):
    """Synthetic cells by SMOTE interpolation within each cell type.

    Reads ``adata.X`` and ``adata.obs[label_key]`` at ``fit`` (it keeps the training matrix: SMOTE
    has no parameters beyond the data). ``sample`` creates each requested type's cells by
    interpolating between that type's training cells: in ``upsample`` mode the missing cells of the
    rare types, in ``matched`` mode cells in training proportions.

    Small types: a type with at most ``k_neighbors`` cells uses ``k = n_cells − 1`` neighbours
    (logged); a type with a single training cell cannot be interpolated and gets copies of that cell
    (logged). Interpolation between non-negative cells stays non-negative.
    """

    name = "smote"
    Params = SMOTEParams

    def _draw(self, rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        from imblearn.over_sampling import SMOTE

        type_name = self.cell_types_[int(self._labels[rows[0]])]
        if len(rows) == 1:
            log.warning("smote: type %r has 1 training cell; its %d new cells are copies of it", type_name, n)
            return np.repeat(self._X[rows], n, axis=0)
        k = min(int(self.params.k_neighbors), len(rows) - 1)
        if k < self.params.k_neighbors:
            log.warning("smote: type %r has %d training cells; using k_neighbors=%d", type_name, len(rows), k)
        # imbalanced-learn resamples one class only next to another: one passenger cell (of another
        # type, or a copy when there is none) plays that part; neighbours are searched within the
        # resampled class, and the new cells are appended after the input rows.
        others = np.flatnonzero(self._labels != self._labels[rows[0]])
        subset = np.concatenate([rows, others[:1] if len(others) else rows[:1]])
        labels = np.r_[np.zeros(len(rows), dtype=int), 1]
        smote = SMOTE(sampling_strategy={0: len(rows) + n}, k_neighbors=k, random_state=int(rng.integers(2**31 - 1)))
        resampled, _ = smote.fit_resample(self._X[subset], labels)
        return resampled[len(subset) :].astype(np.float32)
