"""A NIfTI file checked before it is trusted: complete payload, complete gzip stream, NaN / Inf count.

SimpleITK reads a short file as if the missing voxels were 0; this streams the file once,
in bounded memory, and refuses what is cut short.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["scan_nifti"]


# NIfTI datatype codes of floating-point voxels → numpy dtype names
_NIFTI_FLOATS = {16: "f4", 64: "f8"}
# Single-file NIfTI-1 / NIfTI-2 headers: size, magic (offset, bytes), offsets and formats of
# datatype + bitpix, dim[8] and vox_offset.
_NIFTI_HEADERS = ((348, 344, b"n+1\0", 70, 40, "8h", 108, "f"), (540, 4, b"n+2\0", 12, 16, "8q", 168, "q"))
_CHUNK = 1 << 24  # bytes read at a time when streaming a volume: memory stays bounded whatever its size


class _NiftiLayout(NamedTuple):
    """Where the voxels of a NIfTI file lie, according to its header."""

    offset: int  # first voxel byte
    end: int  # one past the last voxel byte
    float_dtype: str | None  # numpy dtype of floating-point voxels (which may be NaN / inf), else None


def _nifti_layout(head: bytes) -> _NiftiLayout | None:
    """Parse a NIfTI-1 or NIfTI-2 single-file header in either byte order; None if it is not one we can check."""
    for size, at_magic, magic, at_type, at_dim, dim_fmt, at_offset, offset_fmt in _NIFTI_HEADERS:
        if len(head) < size or head[at_magic:at_magic + 4] != magic:
            continue
        for order in "<>":
            if struct.unpack_from(order + "i", head)[0] != size:
                continue
            datatype, bitpix = struct.unpack_from(order + "2h", head, at_type)
            dim = struct.unpack_from(order + dim_fmt, head, at_dim)
            offset = struct.unpack_from(order + offset_fmt, head, at_offset)[0]
            shape = dim[1:dim[0] + 1]
            if not (1 <= dim[0] <= 7 and min(shape) >= 1 and bitpix >= 1 and 0 <= offset < 2 ** 62):
                return None  # an implausible header: SimpleITK's own reading decides
            start = max(int(offset), size + 4)  # the 4 extension-flag bytes always precede the voxels
            dtype = order + _NIFTI_FLOATS[datatype] if datatype in _NIFTI_FLOATS else None
            return _NiftiLayout(start, start + (math.prod(shape) * bitpix + 7) // 8, dtype)
    return None


class _VoxelScan:
    """Bytes of a stream seen so far, and the NaN / inf among its float voxels.

    Chunks are fed in order and need not align with voxels: a partial voxel waits for the next chunk.
    """

    def __init__(self, layout: _NiftiLayout):
        self.layout, self.got, self.nonfinite, self._tail = layout, 0, 0, b""

    def feed(self, chunk: bytes) -> None:
        start, self.got = self.got, self.got + len(chunk)
        lo, hi = max(self.layout.offset - start, 0), min(self.layout.end - start, len(chunk))
        if self.layout.float_dtype is None or lo >= hi:
            return
        data = self._tail + chunk[lo:hi]
        n = len(data) // np.dtype(self.layout.float_dtype).itemsize
        values = np.frombuffer(data, self.layout.float_dtype, count=n)
        self.nonfinite += n - int(np.count_nonzero(np.isfinite(values)))
        self._tail = data[values.nbytes:]


def _chunks(stream, first: bytes):
    chunk = first
    while chunk:
        yield chunk
        chunk = stream.read(_CHUNK)


def scan_nifti(path: Path) -> int:
    """Check that a NIfTI file holds every voxel its header promises; return how many are NaN / inf.

    SimpleITK reads a short file, or a gzip stream cut short, as if the missing voxels were 0, and
    turns NaN into 0: both would pass unnoticed. One streaming pass over the (decompressed) bytes
    checks both, without a second copy of the volume in memory.

    Raises:
        ValueError: the file is truncated or its gzip stream is damaged (bad CRC, cut short).
    """
    with open(path, "rb") as raw:
        packed = raw.read(2) == b"\x1f\x8b"  # by content: some tools gzip a .nii, or name a plain file .nii.gz
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if packed else raw
        scan = None
        try:
            head = stream.read(_NIFTI_HEADERS[-1][0])
            layout = _nifti_layout(head)
            if layout is None:
                return 0
            scan = _VoxelScan(layout)
            if packed or layout.float_dtype:
                for chunk in _chunks(stream, head):
                    scan.feed(chunk)
            else:  # nothing to inflate or scan: the file size says it all
                scan.got = os.fstat(raw.fileno()).st_size
        except (EOFError, OSError, zlib.error) as e:  # gzip: cut short, bad CRC, corrupt deflate data
            where = f" after {scan.got:,} of {scan.layout.end:,} bytes" if scan else ""
            raise ValueError(f"{path} is truncated or damaged: reading it failed{where} ({e})") from None
    if scan.got < layout.end:
        raise ValueError(f"{path} is truncated or damaged: its header promises {layout.end:,} bytes "
                         f"(voxels from byte {layout.offset:,}) but it holds {scan.got:,}"
                         + (" once decompressed" if packed else ""))
    return scan.nonfinite
