"""Read and write images and masks in the formats hospitals use.

NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) go through
SimpleITK so that spacing, origin and direction are kept; PNG / JPG / BMP / TIFF
photographs go through Pillow with unit spacing and RGB kept as three channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segqc.case import Geometry

__all__ = ["read_image", "read_mask", "write_mask", "write_image", "is_photo", "MEDICAL_SUFFIXES", "PHOTO_SUFFIXES"]

MEDICAL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# A label map has few distinct values; more means a probability map or a lossy JPEG mask.
MAX_LABELS = 64


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


def _read_sitk(path: Path) -> tuple[np.ndarray, Geometry, int]:
    """Array in (Z, Y, X) order, geometry, and the number of components (vector pixels)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:  # SimpleITK raises RuntimeError for corrupt files
        raise ValueError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from None
    arr = sitk.GetArrayFromImage(img)
    dim = img.GetDimension()
    spacing = tuple(float(s) for s in img.GetSpacing())[::-1]
    origin = tuple(float(o) for o in img.GetOrigin())[::-1]
    # SimpleITK direction is row-major in (x, y, z); reverse both axes for array order.
    d = np.asarray(img.GetDirection(), dtype=float).reshape(dim, dim)[::-1, ::-1]
    if dim == 4:  # 4D NIfTI (MSD multi-modal): last physical axis is the channel axis
        return arr, Geometry(spacing[1:], origin[1:], tuple(d[1:, 1:].ravel().tolist())), arr.shape[0]
    geometry = Geometry(spacing, origin, tuple(d.ravel().tolist()))
    return arr, geometry, img.GetNumberOfComponentsPerPixel()


# NIfTI datatype codes of floating-point voxels → numpy dtype names
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_nonfinite(path: Path) -> int:
    """Count NaN / inf voxels in a float NIfTI file by reading its raw data.

    SimpleITK's NIfTI reader silently replaces NaN with 0, so a corrupt float volume
    would pass unnoticed; this reads the voxels as stored (NIfTI-1 and NIfTI-2).
    """
    import gzip

    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(540)
        for order in "<>":
            size = np.frombuffer(head[:4], order + "i4")[0]
            if size in (348, 540):
                break
        else:
            return 0  # not a header we know: leave it to SimpleITK
        if size == 348:
            datatype = int(np.frombuffer(head[70:72], order + "i2")[0])
            offset = int(np.frombuffer(head[108:112], order + "f4")[0])
        else:
            datatype = int(np.frombuffer(head[12:14], order + "i2")[0])
            offset = int(np.frombuffer(head[168:176], order + "i8")[0])
        if datatype not in _NIFTI_FLOATS:
            return 0
        f.seek(max(offset, size))
        data = np.frombuffer(f.read(), order + _NIFTI_FLOATS[datatype])
    return int(np.sum(~np.isfinite(data)))


def _read_photo(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA"):
                im = im.convert("RGB")
            elif im.mode not in ("L", "RGB", "I", "I;16", "F", "1"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def read_image(path: str | Path | list) -> tuple[np.ndarray, Geometry]:
    """Read an image as float32 ``(C, Z, Y, X)`` / ``(C, Y, X)`` plus its geometry.

    A list of paths (nnU-Net ``_0000``, ``_0001``... files) is stacked as channels after
    checking that they share one grid.
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
        geometry = Geometry.identity(2)
    else:
        arr, geometry, ncomp = _read_sitk(path)
        if ncomp > 1 and arr.ndim == geometry.ndim + 1 and arr.shape[-1] == ncomp:
            arr = np.moveaxis(arr, -1, 0)  # vector pixels (e.g. RGB NRRD) → channels first
        elif arr.ndim == geometry.ndim:
            arr = arr[None]
    bad = 0 if np.all(np.isfinite(arr)) else int(np.sum(~np.isfinite(arr)))
    if not bad and arr.dtype.kind == "f" and suffix_of(path) in (".nii", ".nii.gz"):
        bad = _nifti_nonfinite(path)
    if bad:
        raise ValueError(f"image {path} contains {bad} NaN or infinite values")
    arr = arr.astype(np.float32, copy=False)
    return arr, geometry


def read_mask(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a label mask as uint8/uint16 ``(Z, Y, X)`` / ``(Y, X)`` plus its geometry.

    0/255 photographs are mapped to 0/1. A mask with non-integer values, NaNs or more
    than 64 distinct values is refused: it is a probability map or a lossy JPEG, not
    labels.
    """
    path = Path(path)
    _check_exists(path)
    if is_photo(path):
        arr = _read_photo(path)
        if arr.ndim == 3:  # an RGB-saved mask: accept only if grey (all channels equal)
            if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                raise ValueError(f"mask {path} is a colour image; expected a single-channel label image")
            arr = arr[..., 0]
        geometry = Geometry.identity(2)
    else:
        arr, geometry, ncomp = _read_sitk(path)
        if ncomp > 1 or arr.ndim != geometry.ndim:
            raise ValueError(f"mask {path} has {max(ncomp, arr.shape[0])} components; expected one label per voxel")
    if arr.dtype.kind == "f":
        if np.isnan(arr).any() or (suffix_of(path) in (".nii", ".nii.gz") and _nifti_nonfinite(path)):
            raise ValueError(f"mask {path} contains NaN values")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"mask {path} has non-integer values (a probability map?); expected integer labels")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.size and arr.min() < 0:
        raise ValueError(f"mask {path} has negative values (min {arr.min()}); expected labels ≥ 0")
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
