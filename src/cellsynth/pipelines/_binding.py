"""Fix keyword arguments of a node function (e.g. the fold index) while keeping its name and docs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def bind(func: Callable[..., Any], **fixed: Any) -> Callable[..., Any]:
    """``func`` with ``fixed`` keyword arguments, as a plain function kedro-viz can show."""

    @functools.wraps(func)
    def bound(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **fixed, **kwargs)

    return bound
