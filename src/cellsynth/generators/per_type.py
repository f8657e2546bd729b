"""One model per cell type (the seed paper's strategy for up-sampling) behind the :class:`Generator`
interface: :class:`PerTypeGenerator` wraps any registered generator."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from cellsynth.generators.base import EpochCallback, Generator, GeneratorError, TrainingHistory, derive_seed
from cellsynth.generators.params import Check
from cellsynth.schema import LABEL_KEY

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PerTypeParams:
    """Hyperparameters of :class:`PerTypeGenerator`."""

    #: Name of the wrapped generator (a name of ``GENERATORS``; required). A generator class is
    #: accepted and stored by its name.
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
        if isinstance(self.generator, type):
            object.__setattr__(self, "generator", getattr(self.generator, "name", None))
        check = Check("per_type", self)
        check.require(
            _generator_class(self.generator) is not None,
            f"unknown generator {self.generator!r}; registered: {sorted(_models())}",
        )
        check.require(
            not _generator_class(self.generator).models_counts,
            f"{self.generator} models raw counts and is conditioned on cell type already: "
            "use it directly (generation.strategy: conditional), not one model per type",
        )
        # Validates the sub-model hyperparameters now, not after the first type has been trained.
        _generator_class(self.generator)(**dict(self.params))
        object.__setattr__(self, "params", dict(self.params))
        if self.types is not None:
            object.__setattr__(self, "types", tuple(str(t) for t in self.types))
        check.integer("min_cells", minimum=2)


_INDEX_FILE = "per_type.json"


def _models() -> dict[str, type[Generator]]:
    """The registered generators a per-type model can wrap (not wrappers themselves)."""
    return {name: cls for name, cls in Generator.registry.items() if not issubclass(cls, PerTypeGenerator)}


def _generator_class(generator: Any) -> type[Generator] | None:
    """The registered class of ``generator`` (a name or a class), ``None`` if it is neither."""
    if isinstance(generator, type) and issubclass(generator, Generator):
        return generator
    return _models().get(generator) if isinstance(generator, str) else None


class PerTypeGenerator(Generator):
    """One model per cell type: the seed paper's strategy for up-sampling minority types.

    ``fit`` trains a separate instance of ``generator`` (a name in ``GENERATORS``) on the
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
        label_key: str = LABEL_KEY,
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
        cls = _generator_class(self.params.generator)
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

            sub_history = model.fit(sub, seed=derive_seed(seed, code), progress=progress, on_epoch=callback)
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
                len(positions), cell_types={cell_type: len(positions)}, seed=derive_seed(seed, int(code))
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
