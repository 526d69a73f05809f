"""Options shared by the `segqc` command line and the benchmark scripts.

``--set METHOD.PARAM=VALUE`` overrides one parameter of a QC method (or of the reference
``segmenter``); the value is JSON when it parses as JSON (``4``, ``false``, ``[1, 2]``),
else the text itself.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

__all__ = ["parse_param", "method_params"]


def parse_param(text: str) -> tuple[str, str, object]:
    """``"cnn.epochs=4"`` → ``("cnn", "epochs", 4)``; an argparse ``type=`` (bad text: ArgumentTypeError)."""
    try:
        key, value = text.split("=", 1)
        method, name = key.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected METHOD.PARAM=VALUE, got {text!r}") from None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return method, name, parsed


def method_params(params: Iterable[tuple[str, str, object]]) -> dict[str, dict[str, object]]:
    """`parse_param` results → ``{method: {param: value}}``, as `segqc.api.fit(method_params=...)` takes them."""
    out: dict[str, dict[str, object]] = {}
    for method, name, value in params:
        out.setdefault(method, {})[name] = value
    return out
