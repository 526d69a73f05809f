"""A QC method's parameters, declared once: default, type and check (validated by `QCMethod`).

    params = {"epochs": Param(60, check=positive), "mode": Param("auto", check=one_of("auto", "cpu"))}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Param", "fraction", "non_negative", "one_of", "positive"]


@dataclass(frozen=True)
class Param:
    """One declared parameter: its default, its type (the default's unless given) and a check.

    ``check(value)`` returns what is wrong with a value (a short phrase) or None.
    """

    default: Any
    kind: type | tuple[type, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    doc: str = ""

    def validate(self, method: str, name: str, value: Any) -> Any:
        kind = self.kind or (type(self.default) if self.default is not None else None)
        if value is not None and kind is not None:
            value = _coerce(value, kind, f"{method}: parameter {name!r}")
        if value is not None and self.check is not None:
            problem = self.check(value)
            if problem:
                raise ValueError(f"{method}: parameter {name!r} = {value!r} {problem}")
        return value


def _coerce(value: Any, kind, what: str) -> Any:
    """``value`` as ``kind``: ints are floats where a float is declared, lists tuples where a tuple is (JSON)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, list) and tuple in kinds:
        value = tuple(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and float in kinds and int not in kinds:
        value = float(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"{what} must be {_names(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise ValueError(f"{what} must be {_names(kinds)}, got {type(value).__name__} {value!r}")
    return value


def _names(kinds) -> str:
    return " or ".join(k.__name__ for k in kinds)


def positive(v) -> str | None:
    values = v if isinstance(v, tuple) else (v,)
    return None if all(x > 0 for x in values) else "must be > 0"


def non_negative(v) -> str | None:
    values = v if isinstance(v, tuple) else (v,)
    return None if all(x >= 0 for x in values) else "must be ≥ 0"


def fraction(v) -> str | None:
    return None if 0.0 <= v <= 1.0 else "must be in [0, 1]"


def one_of(*choices) -> Callable[[Any], str | None]:
    def check(v):
        return None if v in choices else f"must be one of {list(choices)}"
    return check
