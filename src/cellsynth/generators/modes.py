"""Generation modes: how many synthetic cells of which type, and one model per type.

* :func:`q3_upsample_counts`: the seed paper's up-sampling rule (every minority type is filled up to
  the third quartile of the class sizes).
* :func:`matched_counts`: ``n`` cells in the training proportions (e.g. synthetic n = test n).
* :class:`PerTypeGenerator`: the paper's per-type strategy for up-sampling, one instance of any
  registered generator per cell type behind the ordinary :class:`Generator` interface.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from cellsynth.generators.base import EpochCallback, Generator, GeneratorError, TrainingHistory

LOGGER = logging.getLogger(__name__)


def _validated_counts(type_counts: Mapping[str, int]) -> dict[str, int]:
    if not type_counts:
        raise ValueError("type_counts is empty")
    counts: dict[str, int] = {}
    for cell_type, count in type_counts.items():
        if isinstance(count, bool) or int(count) != count or count < 0:
            raise ValueError(f"count of {cell_type!r} must be a non-negative integer, got {count!r}")
        counts[str(cell_type)] = int(count)
    return counts


def q3_upsample_counts(type_counts: Mapping[str, int]) -> dict[str, int]:
    """Synthetic cells per type under the seed paper's Q3 rule.

    ``q3 = np.quantile(counts, 0.75, method="nearest")`` over the class sizes; every type with
    fewer than ``q3`` cells gets ``q3 - count`` synthetic cells. Types at or above ``q3`` get none
    and are **omitted** from the result, so it can be passed straight to
    ``Generator.sample(sum(result.values()), cell_types=result)``. Keys keep the input order.

    >>> q3_upsample_counts({"a": 10, "b": 20, "c": 30, "d": 40, "e": 100})
    {'a': 30, 'b': 20, 'c': 10}
    """
    counts = _validated_counts(type_counts)
    q3 = int(np.quantile(np.asarray(list(counts.values())), 0.75, method="nearest"))
    return {cell_type: q3 - count for cell_type, count in counts.items() if count < q3}


def matched_counts(type_counts: Mapping[str, int], n_cells: int, seed: int = 0) -> dict[str, int]:
    """``n_cells`` split over the types in their training proportions.

    Largest-remainder (Hamilton) rounding: each type first gets ``floor(n * p_t)``; the cells left
    over go one each to the types with the largest fractional parts ``n * p_t - floor(n * p_t)``.
    Ties between equal fractional parts are broken by a random order drawn from ``seed``, so the
    result is deterministic for a given seed and no type is favoured by its position. The result
    has every input type (zero counts included), in input order, and sums to ``n_cells``.
    """
    counts = _validated_counts(type_counts)
    n_cells = int(n_cells)
    if n_cells < 0:
        raise ValueError(f"n_cells must be >= 0, got {n_cells}")
    values = np.asarray(list(counts.values()), dtype=np.int64)
    total = int(values.sum())
    if total == 0:
        raise ValueError("type_counts sum to 0: no proportions to match")
    # Exact integer arithmetic: quota_t = n * c_t / total = floor + remainder_t / total.
    floors = (n_cells * values) // total
    remainders = (n_cells * values) % total
    left = n_cells - int(floors.sum())
    tie_break = np.random.default_rng(seed).permutation(len(values))
    # Sort by remainder descending, then by the seeded tie-break order.
    order = np.lexsort((tie_break, -remainders))
    result = floors.copy()
    result[order[:left]] += 1
    return {cell_type: int(c) for cell_type, c in zip(counts, result, strict=True)}


def _derived_seed(seed: int, index: int) -> int:
    """A seed for sub-model ``index`` that differs between sub-models and between base seeds."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(index)]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class PerTypeParams:
    """Hyperparameters of :class:`PerTypeGenerator`."""

    #: Name of the wrapped generator in ``GENERATORS`` (required; a generator class is accepted and
    #: stored by its name).
    generator: str
    #: Hyperparameters of every sub-model (fields of the wrapped generator's ``Params``).
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Model only these types (e.g. the minority types of a Q3 up-sampling). ``None``: every type.
    #: Requesting a type without a model is a :class:`GeneratorError` (so is ``cell_types=None``,
    #: which draws every training type: pass explicit counts, e.g. from ``q3_upsample_counts``).
    types: tuple[str, ...] | None = None
    #: Types with fewer training cells than this (at least 2, the minimum any generator fits):
    #: ``"error"`` stops ``fit`` with a message naming them; ``"skip"`` leaves them without a model
    #: (requesting them later is a :class:`GeneratorError`).
    min_cells: int = 2
    small_types: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        generator = self.generator
        if isinstance(generator, type):
            generator = getattr(generator, "name", None)
            object.__setattr__(self, "generator", generator)
        from cellsynth.generators import GENERATORS

        if generator not in GENERATORS:
            raise ValueError(f"per_type: unknown generator {generator!r}; registered: {sorted(GENERATORS)}")
        # Validates the sub-model hyperparameters now, not after the first type has been trained.
        GENERATORS[generator](**dict(self.params))
        object.__setattr__(self, "params", dict(self.params))
        if self.types is not None:
            object.__setattr__(self, "types", tuple(str(t) for t in self.types))
        if isinstance(self.min_cells, bool) or not isinstance(self.min_cells, int) or self.min_cells < 2:
            raise ValueError(f"per_type: min_cells must be an integer >= 2, got {self.min_cells!r}")
        if self.small_types not in ("error", "skip"):
            raise ValueError(f"per_type: small_types must be 'error' or 'skip', got {self.small_types!r}")


_INDEX_FILE = "per_type.json"


def _generator_class(generator: Any) -> type[Generator] | None:
    """The registered class of ``generator`` (a name or a class), ``None`` if it is neither."""
    from cellsynth.generators import GENERATORS

    if isinstance(generator, type) and issubclass(generator, Generator):
        return generator
    return GENERATORS.get(generator) if isinstance(generator, str) else None


class PerTypeGenerator(Generator):
    """One model per cell type: the seed paper's strategy for up-sampling minority types.

    ``fit`` trains a separate instance of ``generator`` (any name in ``GENERATORS``) on the
    training cells of each type (or of ``types`` only); sub-model *i* (in the order of the
    training categories) is fitted with a seed derived from the fit seed and *i*. ``sample`` draws
    each requested type from its own model, with a seed derived from the sample seed and the type
    index, and returns the cells in the requested order. Unconditional sub-models (e.g.
    ``conditional=False``) are fine: each sees a single type, so the wrapper labels its cells with
    that type (``label_source == "conditioned"``).

    Construction: ``PerTypeGenerator(generator, label_key=..., **hyperparameters)``, where
    ``generator`` is a name in ``GENERATORS`` or a generator class, and ``hyperparameters`` mixes
    the wrapper's own fields (``types``, ``min_cells``, ``small_types``; see
    :class:`PerTypeParams`) with the sub-models' hyperparameters, which are collected into
    ``params`` (``params={...}`` may also be given directly). For example
    ``PerTypeGenerator("ctgan", epochs=10, types=["DC"])``.

    The per-epoch losses of sub-model ``t`` are in ``history.extra[f"{t}/train_loss"]`` (and
    ``.../val_loss`` and any extra series); ``on_epoch`` receives the same prefixed keys.
    ``save`` writes each sub-model into ``directory / "types" / "<index>"``.
    """

    name = "per_type"
    Params = PerTypeParams

    def __init__(
        self,
        generator: str | type[Generator] | None = None,
        label_key: str = "cell_type",
        **hyperparameters: Any,
    ):
        own = {f.name for f in dataclasses.fields(PerTypeParams)}
        sub = {key: hyperparameters.pop(key) for key in list(hyperparameters) if key not in own}
        if generator is not None:
            if "generator" in hyperparameters:
                raise TypeError("per_type: generator given both positionally and as a keyword")
            hyperparameters["generator"] = generator
        if sub:
            params = dict(hyperparameters.get("params") or {})
            clash = sorted(set(params) & set(sub))
            if clash:
                raise TypeError(f"per_type: hyperparameters {clash} given both in params and as keywords")
            sub_cls = _generator_class(hyperparameters.get("generator"))
            valid = {f.name for f in dataclasses.fields(sub_cls.Params)} if sub_cls is not None else set()
            unknown = sorted(set(sub) - valid)
            if unknown:
                raise TypeError(
                    f"PerTypeGenerator got unknown hyperparameter(s) {unknown}; valid names: wrapper "
                    f"{sorted(own - {'generator', 'params'})}, sub-model "
                    f"{getattr(sub_cls, '__name__', None)} {sorted(valid)}"
                )
            hyperparameters["params"] = {**params, **sub}
        super().__init__(label_key=label_key, **hyperparameters)
        self.models_: dict[str, Generator] = {}

    # ------------------------------------------------------------------ hooks
    def _fit(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int,
        progress: bool,
        on_epoch: EpochCallback | None,
    ) -> TrainingHistory:
        from cellsynth.generators import GENERATORS

        wanted = self.cell_types_ if self.params.types is None else list(self.params.types)
        unknown = sorted(set(wanted) - set(self.cell_types_))
        if unknown:
            raise GeneratorError(f"per_type: types {unknown} are not in the training data (known: {self.cell_types_})")
        counts = dict(zip(self.cell_types_, self.type_counts_, strict=True))
        small = [t for t in wanted if counts[t] < self.params.min_cells]
        if small and self.params.small_types == "error":
            raise GeneratorError(
                f"per_type: types {[(t, counts[t]) for t in small]} have fewer than "
                f"min_cells={self.params.min_cells} training cells; drop them, or set "
                "small_types='skip' to leave them without a model"
            )
        cls = GENERATORS[self.params.generator]
        history = TrainingHistory()
        self.models_ = {}
        for code, cell_type in enumerate(self.cell_types_):
            if cell_type not in wanted or cell_type in small:
                continue
            rows = labels == code
            sub = AnnData(
                X=X[rows],
                obs=pd.DataFrame(
                    {self.label_key: pd.Categorical([cell_type] * int(rows.sum()))},
                    index=[str(i) for i in np.flatnonzero(rows)],
                ),
                var=pd.DataFrame(index=list(self.var_names_)),
            )
            model = cls(label_key=self.label_key, **self.params.params)
            LOGGER.info(
                "per_type: fitting %s on the %d cells of type %r (%d/%d)",
                self.params.generator,
                int(rows.sum()),
                cell_type,
                len(self.models_) + 1,
                len([t for t in wanted if t not in small]),
            )
            callback = None
            if on_epoch is not None:

                def callback(epoch: int, metrics: dict[str, float], _t: str = cell_type) -> None:
                    on_epoch(epoch, {f"{_t}/{k}": v for k, v in metrics.items()})

            sub_history = model.fit(sub, seed=_derived_seed(seed, code), progress=progress, on_epoch=callback)
            for series, values in {
                "train_loss": sub_history.train_loss,
                "val_loss": sub_history.val_loss,
                **sub_history.extra,
            }.items():
                if values:
                    history.extra[f"{cell_type}/{series}"] = list(values)
            self.models_[cell_type] = model
        if not self.models_:
            raise GeneratorError("per_type: no cell type left to model")
        return history

    def _sample(self, labels: np.ndarray, *, seed: int) -> np.ndarray:
        missing = sorted({self.cell_types_[c] for c in np.unique(labels)} - set(self.models_))
        if missing:
            raise GeneratorError(
                f"per_type: no model for types {missing} (modelled: {sorted(self.models_)})"
            )
        out = np.empty((len(labels), len(self.var_names_)), dtype=np.float32)
        for code in np.unique(labels):
            cell_type = self.cell_types_[code]
            positions = np.flatnonzero(labels == code)
            synth = self.models_[cell_type].sample(
                len(positions), cell_types={cell_type: len(positions)}, seed=_derived_seed(seed, int(code))
            )
            out[positions] = np.asarray(synth.X, dtype=np.float32)
        return out

    def _save_state(self, directory: Path) -> None:
        index = {}
        for code, cell_type in enumerate(self.cell_types_):
            if cell_type in self.models_:
                subdir = f"types/{code:03d}"
                self.models_[cell_type].save(directory / subdir)
                index[cell_type] = subdir
        (directory / _INDEX_FILE).write_text(json.dumps(index, indent=1))

    def _load_state(self, directory: Path) -> None:
        index = json.loads((directory / _INDEX_FILE).read_text())
        self.models_ = {cell_type: Generator.load(directory / subdir) for cell_type, subdir in index.items()}


WRAPPERS: dict[str, type[Generator]] = {PerTypeGenerator.name: PerTypeGenerator}
"""Generators that wrap others (not models in their own right, so not in ``GENERATORS``)."""
