"""One way to validate a generator's hyperparameters (its frozen ``Params`` dataclass).

Every ``Params.__post_init__`` builds a :class:`Check`, which checks each ``Literal``-annotated field
against its annotation, and then calls the few checks below for the other fields. A failure is a
``ValueError`` that names the generator, the field, what is allowed and what was given, e.g.
``maf: learning_rate must be a number > 0, got 0``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import types
import typing
from typing import Any, Literal, NoReturn

_BOUNDS = {"gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "lt": (operator.lt, "<"), "le": (operator.le, "<=")}


def _choices(annotation: Any) -> tuple | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation, else ``None``."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [_choices(a) if a is not type(None) else (None,) for a in typing.get_args(annotation)]
        if all(m is not None for m in members):
            return tuple(v for m in members for v in m)
    return None


class Check:
    """Checks of one ``Params`` instance of the generator ``owner``."""

    def __init__(self, owner: str, params: Any):
        self.owner, self.params = owner, params
        hints = typing.get_type_hints(type(params))
        for field in dataclasses.fields(params):
            choices = _choices(hints[field.name])
            if choices is not None and getattr(params, field.name) not in choices:
                self.fail(field.name, f"one of {choices}")

    def fail(self, name: str, allowed: str) -> NoReturn:
        raise ValueError(f"{self.owner}: {name} must be {allowed}, got {getattr(self.params, name)!r}")

    def require(self, condition: bool, message: str) -> None:
        """A rule between fields (``message`` says it)."""
        if not condition:
            raise ValueError(f"{self.owner}: {message}")

    def integer(self, *names: str, minimum: int = 1, optional: bool = False) -> None:
        """Integers (not booleans) ``>= minimum``; ``None`` too with ``optional``."""
        for name in names:
            value = getattr(self.params, name)
            if optional and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                self.fail(name, f"an integer >= {minimum}" + (" or None" if optional else ""))

    def number(self, *names: str, optional: bool = False, **bounds: float) -> None:
        """Finite real numbers within ``bounds`` (``gt``, ``ge``, ``lt``, ``le``); ``None`` too with
        ``optional``."""
        allowed = " and ".join(f"{_BOUNDS[key][1]} {limit}" for key, limit in bounds.items())
        allowed = "a finite number" if not allowed else f"a number {allowed}"
        for name in names:
            value = getattr(self.params, name)
            if optional and value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(value)
                or not all(_BOUNDS[key][0](value, limit) for key, limit in bounds.items())
            ):
                self.fail(name, allowed + (" or None" if optional else ""))

    def widths(self, *names: str) -> None:
        """Layer widths: a non-empty sequence of integers >= 1, stored as a tuple (YAML and JSON give
        lists; a tuple keeps the dataclass hashable)."""
        for name in names:
            value = getattr(self.params, name)
            widths = tuple(value) if isinstance(value, (list, tuple)) else ()
            if not widths or any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 for w in widths):
                self.fail(name, "a non-empty sequence of integers >= 1")
            object.__setattr__(self.params, name, widths)

    def training(self, *, optional_epochs: bool = False) -> None:
        """The fields of the shared training loop (:mod:`cellsynth.generators.training`); a model
        trained by another loop (scvi-tools') may leave ``epochs`` to it and have no ``grad_clip``."""
        self.integer("batch_size")
        self.integer("epochs", optional=optional_epochs)
        self.integer("patience", optional=True)
        self.number("learning_rate", gt=0)
        self.number("weight_decay", ge=0)
        if hasattr(self.params, "grad_clip"):
            self.number("grad_clip", gt=0, optional=True)
        self.number("validation_fraction", ge=0, lt=1)
        self.require(
            self.params.patience is None or self.params.validation_fraction > 0,
            "patience (early stopping) needs validation_fraction > 0",
        )
