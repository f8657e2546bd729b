"""``ReferenceSpaceDataset``: the evaluation's fitted reference space as arrays (``.npz``), not a pickle.

Loading a pickle runs whatever code it names; an ``.npz`` read with ``allow_pickle=False`` only
yields arrays. The space (:class:`~cellsynth.metrics.space.ReferenceSpace`) is stored as its own
attributes and those of the scikit-learn estimators it holds (the scaler and the PCA: means,
scales, components, ...), each a numpy array or a JSON value; loading rebuilds the objects from
these values, for an allowed list of classes only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io.core import AbstractDataset, DatasetError

from cellsynth.datasets.atomic import atomic_file


def _allowed_classes() -> dict[str, type]:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from cellsynth.metrics.space import ReferenceSpace

    return {f"{c.__module__}.{c.__qualname__}": c for c in (ReferenceSpace, StandardScaler, PCA)}


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def to_arrays(obj: Any) -> dict[str, np.ndarray]:
    """``obj`` and the allowed objects it holds as named arrays plus a JSON description (``__meta__``)."""
    allowed = _allowed_classes()
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}

    def describe(item: Any, name: str) -> dict[str, Any]:
        kind = f"{type(item).__module__}.{type(item).__qualname__}"
        if kind not in allowed:
            raise DatasetError(f"ReferenceSpaceDataset cannot store a {kind} ({name}); allowed: {sorted(allowed)}")
        fields: dict[str, Any] = {}
        for key, value in vars(item).items():
            where = f"{name}.{key}"
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, np.ndarray):
                fields[key] = {"array": where}
                if value.dtype == object:  # gene names: stored as text, given back as objects
                    if not all(isinstance(v, str) for v in value.flat):
                        raise DatasetError(f"ReferenceSpaceDataset: {where} is an object array of non-strings")
                    value = value.astype(str)
                    fields[key]["object_dtype"] = True
                arrays[where] = value
            elif _is_plain(value):
                fields[key] = {"value": value}
            else:
                fields[key] = {"object": describe(value, where)}
        return {"class": kind, "fields": fields}

    meta = describe(obj, "space")
    arrays["__meta__"] = np.array(json.dumps(meta))
    return arrays


def from_arrays(arrays: Any) -> Any:
    """The object :func:`to_arrays` described (only classes of the allowed list are built)."""
    allowed = _allowed_classes()

    def build(description: dict[str, Any]) -> Any:
        cls = allowed.get(description["class"])
        if cls is None:
            raise DatasetError(f"ReferenceSpaceDataset: {description['class']} is not an allowed class")
        item = cls.__new__(cls)
        for key, field in description["fields"].items():
            if "array" in field:
                value = arrays[field["array"]]
                if field.get("object_dtype"):
                    value = value.astype(object)
            elif "object" in field:
                value = build(field["object"])
            else:
                value = field["value"]
            item.__dict__[key] = value
        return item

    return build(json.loads(str(arrays["__meta__"])))


class ReferenceSpaceDataset(AbstractDataset[Any, Any]):
    """A fitted :class:`~cellsynth.metrics.space.ReferenceSpace` in one ``.npz`` file (saved atomically)."""

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def load(self) -> Any:
        with np.load(self._filepath, allow_pickle=False) as saved:
            return from_arrays({key: saved[key] for key in saved.files})

    def save(self, data: Any) -> None:
        # a file object: np.savez would append ".npz" to the partial's path
        with atomic_file(self._filepath) as partial, partial.open("wb") as handle:
            np.savez(handle, **to_arrays(data))

    def _exists(self) -> bool:
        return self._filepath.is_file() and self._filepath.stat().st_size > 0
