"""Small helpers shared across segqc."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence
from contextlib import contextmanager

__all__ = ["look_up_option", "resolve_device", "round_up", "torch_threads", "sha256_file"]


def look_up_option(value: str, options: Sequence[str], what: str = "option") -> str:
    """Return ``value`` if it is one of ``options``, else raise naming the closest valid one."""
    if value in options:
        return value
    close = difflib.get_close_matches(str(value), list(options), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(options)}.{hint}")


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``: a side or depth that a network's strides all divide."""
    return -(-int(n) // int(multiple)) * int(multiple)


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is usable, else ``cpu``; ``cuda:N`` / ``mps`` pass through if available."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        import sys

        print(f"segqc: {device} requested but no CUDA GPU is available; using cpu", file=sys.stderr)
        return "cpu"
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


@contextmanager
def torch_threads(n: int | None):
    """Use ``n`` torch CPU threads inside the block only (None: leave torch's setting)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
