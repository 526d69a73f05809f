"""Read and write images and masks in the formats hospitals use.

NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) go through
SimpleITK so that spacing, origin and direction are kept; PNG / JPG / BMP / TIFF
photographs go through Pillow with unit spacing and RGB kept as three channels.

Every reader checks the size in the header against `MAX_VOXELS` before reading pixels,
and every damaged file (truncated, bad gzip stream, not an image) becomes a ValueError
that names it, so that one bad file fails one case, not the batch.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np

from segqc.data.case import Geometry
from segqc.data.nifti_scan import scan_nifti

__all__ = ["MAX_VOXELS", "MEDICAL_SUFFIXES", "PHOTO_SUFFIXES", "is_photo", "read_image", "read_mask", "write_image",
           "write_mask"]

MEDICAL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# A label map has few distinct values; more means a probability map or a lossy JPEG mask.
MAX_LABELS = 64


# Peak memory of `segqc predict` (features) grows by ~70-85 bytes per voxel above ~0.7 GiB
# (benchmarks/memory.py); 100 bytes per voxel leaves a margin for the other methods' buffers.
BYTES_PER_VOXEL = 100


def _default_limit() -> int:
    """512 × 512 × 1024 voxels, or less on a machine whose memory could not hold that case."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: keep the fixed limit
        return 512 * 512 * 1024
    return int(min(512 * 512 * 1024, max(2**24, (total - 2**30) // BYTES_PER_VOXEL)))


def _limit_from_env(env=os.environ) -> int:
    value = env.get("SEGQC_MAX_VOXELS", "").strip()
    if not value:
        return _default_limit()
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"SEGQC_MAX_VOXELS must be a positive whole number of voxels, got {value!r}")
    return limit


# Largest image read, in voxels per channel, checked from the header before any pixel is read:
# a corrupt header or a whole-slide picture would otherwise exhaust memory mid-batch.
MAX_VOXELS = _limit_from_env()


def suffix_of(path: str | Path) -> str:
    name = str(path).lower()
    for s in MEDICAL_SUFFIXES + PHOTO_SUFFIXES:
        if name.endswith(s):
            return s
    return Path(name).suffix


def is_photo(path: str | Path) -> bool:
    return suffix_of(path) in PHOTO_SUFFIXES


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if suffix_of(path) not in MEDICAL_SUFFIXES + PHOTO_SUFFIXES:
        raise ValueError(f"unsupported file type {suffix_of(path)!r} for {path}; "
                         f"expected one of {', '.join(MEDICAL_SUFFIXES + PHOTO_SUFFIXES)}")


def _too_large(path: Path, size: str) -> ValueError:
    return ValueError(f"{path} is too large to read: {size}, above the limit of {MAX_VOXELS:,} voxels per channel; "
                      "set the environment variable SEGQC_MAX_VOXELS to raise it")


def _check_voxels(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse an image whose header gives more than `MAX_VOXELS` voxels per channel."""
    n = math.prod(shape)
    if n > MAX_VOXELS:
        raise _too_large(path, f"{' x '.join(map(str, shape))} = {n:,} voxels")


def _count_nonfinite(arr: np.ndarray) -> int:
    return 0 if arr.dtype.kind != "f" else int(arr.size - np.count_nonzero(np.isfinite(arr)))


def _sitk_error(path: Path, e: RuntimeError) -> ValueError:
    """A one-line reason from SimpleITK's multi-line message (source locations, object addresses)."""
    lines = [line.strip() for line in str(e).strip().splitlines()] or [""]
    # MetaImage ends with a bare errno line ("Reason: No such file or directory") that means nothing alone
    why = " ".join(lines[-2:]) if lines[-1].startswith("Reason:") else lines[-1]
    why = re.sub(r"^ITK ERROR: \w+\(0x[0-9a-fA-F]+\): ", "", why)
    return ValueError(f"cannot read {path}: the file is damaged, truncated or not a valid image ({why})")


def _read_sitk(path: Path) -> tuple[np.ndarray, Geometry, int, int]:
    """Array in (Z, Y, X) order, geometry, number of components (vector pixels) and of NaN / inf voxels.

    The header is read first, so an oversized image is refused before its pixels are.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:  # SimpleITK raises RuntimeError for corrupt files
        reader.ReadImageInformation()
        _check_voxels(path, reader.GetSize()[:3][::-1])  # a 4D NIfTI's fourth axis holds channels
        nonfinite = scan_nifti(path) if suffix_of(path) in NIFTI_SUFFIXES else None
        img = reader.Execute()
    except RuntimeError as e:
        raise _sitk_error(path, e) from None
    arr = sitk.GetArrayFromImage(img)
    if nonfinite is None:
        nonfinite = _count_nonfinite(arr)
    dim = img.GetDimension()
    spacing = tuple(float(s) for s in img.GetSpacing())[::-1]
    origin = tuple(float(o) for o in img.GetOrigin())[::-1]
    # SimpleITK direction is row-major in (x, y, z); reverse both axes for array order.
    d = np.asarray(img.GetDirection(), dtype=float).reshape(dim, dim)[::-1, ::-1]
    if dim == 4:  # 4D NIfTI (MSD multi-modal): last physical axis is the channel axis
        return arr, Geometry(spacing[1:], origin[1:], tuple(d[1:, 1:].ravel().tolist())), arr.shape[0], nonfinite
    geometry = Geometry(spacing, origin, tuple(d.ravel().tolist()))
    return arr, geometry, img.GetNumberOfComponentsPerPixel(), nonfinite



# Pillow modes read as stored; the others become RGB
_PHOTO_MODES = ("L", "RGB", "I", "I;16", "F", "1")


def _open_photo(path: Path):
    """Open a photograph lazily, refusing it from its size before any pixel is decoded."""
    from PIL import Image

    # Pillow's own bomb guard warns above MAX_IMAGE_PIXELS and fails above twice that; tie it to
    # MAX_VOXELS so that one limit decides, and the refusal says how to raise it.
    Image.MAX_IMAGE_PIXELS = MAX_VOXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below
        try:
            im = Image.open(path)
        except Image.DecompressionBombError:
            raise _too_large(path, f"more than {2 * MAX_VOXELS:,} pixels") from None
    try:
        _check_voxels(path, im.size[::-1])
    except ValueError:
        im.close()
        raise
    return im


def _read_photo(path: Path, *, labels: bool = False) -> np.ndarray:
    """Pixels of a photograph; a palette picture gives its colours, or its indices when it holds labels."""
    try:
        with _open_photo(path) as im:
            im.load()
            if im.mode not in _PHOTO_MODES and not (labels and im.mode == "P"):
                im = im.convert("RGB")
            return np.asarray(im)
    except OSError as e:  # also UnidentifiedImageError (not an image) and truncated files
        raise ValueError(f"cannot read {path}: {e}") from None


def read_image(path: str | Path | list) -> tuple[np.ndarray, Geometry]:
    """Read an image as float32 ``(C, Z, Y, X)`` / ``(C, Y, X)`` plus its geometry.

    A list of paths (nnU-Net ``_0000``, ``_0001``... files) is stacked as channels after
    checking that they share one grid.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsupported, damaged or truncated file, more than `MAX_VOXELS` voxels, NaN / inf voxels.
    """
    if isinstance(path, (list, tuple)):
        parts = [read_image(p) for p in path]
        arrays, geos = zip(*parts)
        for p, a, g in zip(path[1:], arrays[1:], geos[1:]):
            if a.shape[1:] != arrays[0].shape[1:]:
                raise ValueError(f"channel file {p} has shape {a.shape[1:]}, expected {arrays[0].shape[1:]}")
            why = geos[0].mismatch(g)
            if why:
                raise ValueError(f"channel file {p} is on another grid: {why}")
        return np.concatenate(arrays, axis=0), geos[0]
    path = Path(path)
    _check_exists(path)
    if is_photo(path):
        arr = _read_photo(path)
        arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
        geometry, bad = Geometry.identity(2), _count_nonfinite(arr)
    else:
        arr, geometry, ncomp, bad = _read_sitk(path)
        if ncomp > 1 and arr.ndim == geometry.ndim + 1 and arr.shape[-1] == ncomp:
            arr = np.moveaxis(arr, -1, 0)  # vector pixels (e.g. RGB NRRD) → channels first
        elif arr.ndim == geometry.ndim:
            arr = arr[None]
    if bad:
        raise ValueError(f"image {path} contains {bad} NaN or infinite values")
    arr = arr.astype(np.float32, copy=False)
    return arr, geometry


def read_mask(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a label mask as uint8/uint16 ``(Z, Y, X)`` / ``(Y, X)`` plus its geometry.

    0/255 photographs are mapped to 0/1; a palette picture gives its indices. A mask with
    non-integer, negative or non-finite values, labels above 65535 or more than 64 distinct
    values is refused: it is a probability map or a lossy JPEG, not labels.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsupported, damaged or truncated file, too large, or not a label map.
    """
    path = Path(path)
    _check_exists(path)
    if is_photo(path):
        arr = _read_photo(path, labels=True)
        if arr.ndim == 3:  # an RGB-saved mask: accept only if grey (all channels equal)
            if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                raise ValueError(f"mask {path} is a colour image; expected a single-channel label image")
            arr = arr[..., 0]
        geometry, bad = Geometry.identity(2), _count_nonfinite(arr)
    else:
        arr, geometry, ncomp, bad = _read_sitk(path)
        if ncomp > 1 or arr.ndim != geometry.ndim:
            raise ValueError(f"mask {path} has {max(ncomp, arr.shape[0])} components; expected one label per voxel")
    if bad:
        raise ValueError(f"mask {path} contains {bad} NaN or infinite values")
    if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise ValueError(f"mask {path} has non-integer values (a probability map?); expected integer labels")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.size and arr.min() < 0:
        raise ValueError(f"mask {path} has negative values (min {arr.min()}); expected labels ≥ 0")
    if arr.max(initial=0) > np.iinfo(np.uint16).max:  # would wrap around in the uint16 result
        raise ValueError(f"mask {path} has label {arr.max()}; expected labels below 65536")
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 255} and is_photo(path):
        arr = (arr > 0).astype(np.uint8)
    elif len(values) > MAX_LABELS:
        raise ValueError(f"mask {path} has {len(values)} distinct values; expected a label map "
                         "(0 = background, 1..L) — is it a probability map or a JPEG-compressed mask?")
    dtype = np.uint8 if arr.max(initial=0) < 256 else np.uint16
    return arr.astype(dtype, copy=False), geometry


def _to_sitk(arr: np.ndarray, geometry: Geometry, is_vector: bool = False):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr, isVector=is_vector)
    n = geometry.ndim
    img.SetSpacing(tuple(float(s) for s in geometry.spacing[::-1]))
    img.SetOrigin(tuple(float(o) for o in geometry.origin[::-1]))
    d = np.asarray(geometry.direction, dtype=float).reshape(n, n)[::-1, ::-1]
    img.SetDirection(tuple(d.ravel().tolist()))
    return img


def write_mask(path: str | Path, mask: np.ndarray, geometry: Geometry) -> Path:
    """Write a label (or uint8 map) array with the given geometry; PNG masks of 0/1 are saved as 0/255."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_photo(path):
        from PIL import Image

        arr = np.asarray(mask)
        if arr.dtype != np.uint8:
            arr = arr.astype(np.uint8)
        if arr.max(initial=0) <= 1:
            arr = arr * 255
        Image.fromarray(arr).save(path)
    else:
        import SimpleITK as sitk

        sitk.WriteImage(_to_sitk(np.asarray(mask), geometry), str(path), useCompression=True)
    return path


def write_image(path: str | Path, image: np.ndarray, geometry: Geometry) -> Path:
    """Write a ``(C, ...)`` image; photographs are written as 8-bit grey or RGB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_photo(path):
        from PIL import Image

        arr = np.clip(image, 0, 255).astype(np.uint8)
        Image.fromarray(arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)).save(path)
    else:
        import SimpleITK as sitk

        arr = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        sitk.WriteImage(_to_sitk(arr, geometry, is_vector=image.shape[0] > 1), str(path), useCompression=True)
    return path
