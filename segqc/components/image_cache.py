"""A small cache of per-image results, keyed by the image's content, bounded in bytes.

Scoring many candidates of one image (a batch of checkpoints, the calibration pairs of a
reference case) would otherwise run segqc's reference segmenter on the same image again
for each of them. The key is a digest of the image's bytes, shape, dtype and spacing, so
a changed image is never served an old answer; the bound is in bytes because one entry
of a large 3D volume weighs gigabytes where a 2D image weighs a megabyte.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ImageCache", "image_key"]


def image_key(image: np.ndarray, spacing, tag: str = "") -> str:
    """A digest of what an image-only computation (named ``tag``) depends on: pixels, shape, dtype, spacing."""
    a = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tag, a.shape, a.dtype.str, tuple(float(s) for s in spacing))).encode())
    h.update(a.data)
    return h.hexdigest()


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _read_only(value: Any) -> None:
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _read_only(v)


class ImageCache:
    """Least-recently-used results of ``compute(image)``, at most ``max_bytes`` of arrays in all."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    def get(self, image: np.ndarray, spacing, compute: Callable[[], Any], tag: str = "") -> Any:
        """``compute()``'s answer for this image (``tag`` names the computation), computed once."""
        key = image_key(image, spacing, tag)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = compute()
        _read_only(value)  # shared between callers: nobody may change a cached answer in place
        size = _nbytes(value)
        if size <= self.max_bytes:
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
        return value
