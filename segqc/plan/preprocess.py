"""Forward transform to model space and its exact inverse back to the original grid.

Model space is a stack of square axial slices: every case becomes an image
``(C, Z, S, S)`` and a mask ``(Z, S, S)`` (``Z = 1`` for a 2D case), ``S`` being
``plan.slice_size``. The forward steps are, in order:

1. in-plane resampling of each slice (the slice axis is never touched): to the plan's
   target spacing (``resize_mode="spacing"``) or so that the whole image fits ``S × S``
   with its aspect kept (``"fit"``, for photographs). Images are resampled linearly,
   masks by linear interpolation of their one-hot encoding followed by argmax, which
   keeps thin structures better than nearest neighbour on a round trip;
2. intensity normalisation by the plan's scheme (``rgb``, ``ct``, ``zscore``);
3. centred crop and/or zero pad to ``S × S`` (0 after normalisation = background).

`preprocess` returns a JSON-able ``props`` dict recording each step; `invert_mask` and
`invert_map` undo them in reverse order and land exactly on the original shape.
"""

from __future__ import annotations

import numpy as np

from segqc.data.case import Case, Geometry
from segqc.plan.plan import Plan
from segqc.utils import look_up_option

__all__ = ["preprocess", "invert_mask", "invert_map", "original_geometry", "normalize_intensity",
           "resize_inplane", "resize_labels"]

# Slices × channels × pixels handled by one interpolate call (~256 MB of float32).
_CHUNK_VOXELS = 64 * 1024 * 1024


# --------------------------------------------------------------------------- resampling


def _antialias(kwargs: dict, in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    return bool(kwargs.get("antialias", True)) and any(o < i for i, o in zip(in_size, out_size))


def resize_inplane(x: np.ndarray, size: tuple[int, int], *, mode: str = "linear", antialias: bool = True) -> np.ndarray:
    """Resample the last two axes of ``x`` (``(..., H, W)``) to exactly ``size`` pixels.

    Pixel centres are matched (``align_corners=False``), so resizing to a shape and back
    is consistent; ``antialias`` applies only along axes that shrink. Returns float32.
    """
    import torch
    import torch.nn.functional as F

    mode = look_up_option(mode, ("linear", "nearest"), "image resampling")
    size = (int(size[0]), int(size[1]))
    x = np.asarray(x, dtype=np.float32)
    lead, in_size = x.shape[:-2], x.shape[-2:]
    if tuple(in_size) == size:
        return x.copy()
    flat = x.reshape(-1, 1, *in_size)
    out = np.empty((flat.shape[0], 1, *size), dtype=np.float32)
    step = max(1, _CHUNK_VOXELS // max(1, in_size[0] * in_size[1], size[0] * size[1]))
    aa = antialias and mode == "linear" and any(o < i for i, o in zip(in_size, size))
    with torch.no_grad():
        for s in range(0, flat.shape[0], step):
            t = torch.from_numpy(np.ascontiguousarray(flat[s:s + step]))
            if mode == "linear":
                r = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=aa)
            else:
                r = F.interpolate(t, size=size, mode="nearest-exact")
            out[s:s + step] = r.numpy()
    return out.reshape(*lead, *size)


def resize_labels(mask: np.ndarray, size: tuple[int, int], *, mode: str = "onehot_linear",
                  antialias: bool = True) -> np.ndarray:
    """Resample a label array ``(..., H, W)`` in-plane to ``size``, keeping its dtype.

    ``onehot_linear`` interpolates each label's indicator linearly and takes the argmax
    (ties go to the lower label, i.e. background); ``nearest`` copies the nearest pixel.
    """
    import torch
    import torch.nn.functional as F

    mode = look_up_option(mode, ("onehot_linear", "nearest"), "mask resampling")
    size = (int(size[0]), int(size[1]))
    mask = np.asarray(mask)
    lead, in_size = mask.shape[:-2], mask.shape[-2:]
    if tuple(in_size) == size:
        return mask.copy()
    labels = np.unique(mask)
    if labels.size == 1:
        return np.full((*lead, *size), labels[0], dtype=mask.dtype)
    flat = mask.reshape(-1, *in_size)
    if mode == "nearest":
        return resize_inplane(flat, size, mode="nearest").round().astype(mask.dtype).reshape(*lead, *size)
    out = np.empty((flat.shape[0], *size), dtype=mask.dtype)
    aa = antialias and any(o < i for i, o in zip(in_size, size))
    per_slice = labels.size * max(in_size[0] * in_size[1], size[0] * size[1])
    step = max(1, _CHUNK_VOXELS // per_slice)
    lab_t = torch.from_numpy(labels.astype(np.int64))
    with torch.no_grad():
        for s in range(0, flat.shape[0], step):
            chunk = torch.from_numpy(flat[s:s + step].astype(np.int64))
            onehot = (chunk[:, None] == lab_t[None, :, None, None]).float()
            r = F.interpolate(onehot, size=size, mode="bilinear", align_corners=False, antialias=aa)
            # numpy's argmax: torch's over dim 1 is several times slower on CPU; both take the first maximum
            out[s:s + step] = labels[r.numpy().argmax(axis=1)]
    return out.reshape(*lead, *size)


# --------------------------------------------------------------------------- intensity


def normalize_intensity(image: np.ndarray, name: str, kwargs: dict) -> tuple[np.ndarray, dict]:
    """Normalise ``(C, ...)`` intensities by a named scheme; also return what was applied.

    ``rgb``: ``x / scale``. ``ct``: clip to the dataset's foreground 0.5–99.5 percentiles,
    then ``(x - mean) / std`` with the dataset foreground stats (per channel). ``zscore``:
    per-case, per-channel ``(x - mean) / std`` over all voxels, or over non-zero voxels
    (zeros stay 0) when ``use_nonzero_mask``. The returned dict holds the per-channel
    ``mean``/``std`` (and ``clip``) used, so intensities can be mapped back.
    """
    name = look_up_option(name, ("rgb", "ct", "zscore"), "normalization")
    image = np.asarray(image, dtype=np.float32)
    out = np.empty_like(image)
    n_ch = image.shape[0]
    applied: dict = {"name": name}
    if name == "rgb":
        scale = float(kwargs.get("scale", 255.0))
        np.divide(image, scale, out=out)
        applied.update(mean=[0.0] * n_ch, std=[scale] * n_ch)
        return out, applied
    means, stds = [], []
    if name == "ct":
        clip, mean, std = kwargs["clip"], kwargs["mean"], kwargs["std"]
        if not (len(clip) == len(mean) == len(std) == n_ch):
            raise ValueError(f"ct normalisation has stats for {len(mean)} channel(s), image has {n_ch}")
        for c in range(n_ch):
            m, s = float(mean[c]), max(float(std[c]), 1e-8)
            out[c] = (np.clip(image[c], clip[c][0], clip[c][1]) - m) / s
            means.append(m)
            stds.append(s)
        applied["clip"] = [list(map(float, c)) for c in clip]
    else:
        nonzero = bool(kwargs.get("use_nonzero_mask", False))
        for c in range(n_ch):
            chan = image[c]
            sel = chan != 0 if nonzero else None
            vals = chan[sel] if sel is not None else chan
            if vals.size == 0:
                m, s = 0.0, 1.0
            else:
                m, s = float(vals.mean(dtype=np.float64)), max(float(vals.std(dtype=np.float64)), 1e-8)
            out[c] = (chan - m) / s
            if sel is not None:
                out[c][~sel] = 0.0
            means.append(m)
            stds.append(s)
        applied["use_nonzero_mask"] = nonzero
    applied.update(mean=means, std=stds)
    return out, applied


# --------------------------------------------------------------------------- forward


def _centre(n: int, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Crop ``[start, stop)`` of an axis of length ``n``, then pad ``(before, after)`` to ``size``."""
    if n >= size:
        start = (n - size) // 2
        return (start, start + size), (0, 0)
    before = (size - n) // 2
    return (0, n), (before, size - n - before)


def _inplane_target(shape: tuple[int, int], spacing: tuple[float, float], plan: Plan) -> list[int]:
    extent = np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)
    if plan.resize_mode == "fit":
        s = float(extent.max()) / plan.slice_size
        new = np.clip(np.round(extent / s), 1, plan.slice_size)
    else:
        new = np.maximum(1, np.round(extent / np.asarray(plan.target_spacing)))
    return [int(v) for v in new]


def _crop_pad(x: np.ndarray, crop: list, pad: list) -> np.ndarray:
    """Crop then zero-pad the last two axes."""
    x = x[..., crop[0][0]:crop[0][1], crop[1][0]:crop[1][1]]
    if any(p for pp in pad for p in pp):
        x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [tuple(p) for p in pad])
    return x


def preprocess(case: Case, plan: Plan) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Send a case to model space.

    Args:
        case: image ``(C, Z, Y, X)`` / ``(C, Y, X)``, optional integer mask of the spatial shape.
        plan: the dataset's `Plan`.

    Returns:
        ``image_ms`` float32 ``(C, Z, S, S)``, ``mask_ms`` ``(Z, S, S)`` (mask dtype) or
        None, and ``props``: a JSON-able dict with ``case_id``, ``ndim``, ``n_channels``,
        ``original_shape`` (spatial), ``original_spacing`` (mm), ``geometry``
        (``spacing``/``origin``/``direction`` of the original grid), ``n_slices``,
        ``resampled_shape`` (in-plane ``[h, w]`` before crop/pad), ``model_spacing``
        (spacing of the ``(Z, S, S)`` axes in mm; Z = 1.0 for 2D), ``crop`` (``[[start,
        stop], [start, stop]]`` in resampled in-plane coordinates), ``pad`` (``[[before,
        after], [before, after]]``), ``slice_size``, ``resize_mode`` and ``normalization``
        (scheme and per-channel ``mean``/``std`` applied).

    Raises:
        ValueError: the case does not match the plan (dimension, channels) or its mask
            is not on the image grid.
    """
    if case.ndim != plan.ndim:
        raise ValueError(f"case {case.case_id} is {case.ndim}D but the plan is for {plan.ndim}D cases")
    if case.n_channels != plan.n_channels:
        raise ValueError(f"case {case.case_id} has {case.n_channels} channel(s), the plan expects {plan.n_channels}")
    if case.mask is not None and case.mask.shape != case.shape:
        raise ValueError(f"case {case.case_id}: mask shape {case.mask.shape} differs from image shape {case.shape}")
    image = np.asarray(case.image, dtype=np.float32)
    mask = case.mask
    if case.ndim == 2:  # one slice
        image = image[:, None]
        mask = None if mask is None else mask[None]
    in_size = tuple(int(v) for v in image.shape[-2:])
    spacing = tuple(float(s) for s in case.spacing)
    size = _inplane_target(in_size, spacing[-2:], plan)

    img_rs = plan.resampling["image"]
    image = resize_inplane(image, size, mode=img_rs["name"],
                           antialias=_antialias(img_rs.get("kwargs", {}), in_size, size))
    image, applied = normalize_intensity(image, plan.normalization, plan.normalization_kwargs)
    crop_pad = [_centre(n, plan.slice_size) for n in size]
    crop, pad = [list(c) for c, _ in crop_pad], [list(p) for _, p in crop_pad]
    image = np.ascontiguousarray(_crop_pad(image, crop, pad), dtype=np.float32)
    if mask is not None:
        mask = _mask_along(mask, in_size, size, crop, pad, plan)

    z_spacing = spacing[0] if case.ndim == 3 else 1.0
    g = case.geometry
    props = {
        "case_id": case.case_id,
        "ndim": case.ndim,
        "n_channels": case.n_channels,
        "original_shape": [int(v) for v in case.shape],
        "original_spacing": list(spacing),
        "geometry": {"spacing": list(g.spacing), "origin": [float(v) for v in g.origin],
                     "direction": [float(v) for v in g.direction]},
        "n_slices": int(image.shape[1]),
        "resampled_shape": size,
        "model_spacing": [z_spacing] + [float(n * s / m) for n, s, m in zip(in_size, spacing[-2:], size)],
        "crop": crop,
        "pad": pad,
        "slice_size": plan.slice_size,
        "resize_mode": plan.resize_mode,
        "normalization": applied,
    }
    return image, mask, props


def _mask_along(mask: np.ndarray, in_size, size, crop, pad, plan: Plan) -> np.ndarray:
    """A ``(Z, H, W)`` label array through the plan's mask resampling, crop and pad."""
    mk_rs = plan.resampling["mask"]
    mask = resize_labels(mask, size, mode=mk_rs["name"], antialias=_antialias(mk_rs.get("kwargs", {}), in_size, size))
    return np.ascontiguousarray(_crop_pad(mask, crop, pad))


def mask_to_model_space(mask: np.ndarray, props: dict, plan: Plan) -> np.ndarray:
    """A label mask on the original grid → model space ``(Z, S, S)``, along a case's ``props``.

    What `preprocess` does to a case's mask, for another mask of the same image (a
    candidate scored against an image already sent to model space).
    """
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[None]
    size = [int(v) for v in props["resampled_shape"]]
    return _mask_along(m, tuple(m.shape[-2:]), size, props["crop"], props["pad"], plan)


def soft_mask_to_model_space(mask: np.ndarray, props: dict, labels, plan: Plan) -> np.ndarray:
    """Soft one-hot of a label mask in model space: float32 ``(L, Z, S, S)`` in [0, 1].

    Follows `mask_to_model_space` but keeps each label's linearly interpolated indicator
    instead of hard labels: a network then sees partial-volume boundaries rather than a
    staircase.
    """
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[None]
    onehot = np.stack([m == k for k in labels]).astype(np.float32)  # (L, Z, H, W)
    size = tuple(int(v) for v in props["resampled_shape"])
    in_size = onehot.shape[-2:]
    aa = _antialias(plan.resampling.get("mask", {}).get("kwargs", {}), in_size, size)
    x = _crop_pad(resize_inplane(onehot, size, mode="linear", antialias=aa), props["crop"], props["pad"])
    return np.ascontiguousarray(np.clip(x, 0.0, 1.0), dtype=np.float32)


# --------------------------------------------------------------------------- inverse


def original_geometry(props: dict) -> Geometry:
    """The `Geometry` of the original grid recorded by `preprocess`."""
    g = props["geometry"]
    return Geometry(tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))


def _uncrop_unpad(x: np.ndarray, props: dict, fill: float | int) -> np.ndarray:
    """Undo pad then crop on the last two axes: ``(..., S, S)`` → ``(..., h, w)`` resampled shape."""
    S = props["slice_size"]
    (pb0, pa0), (pb1, pa1) = props["pad"]
    x = x[..., pb0:S - pa0, pb1:S - pa1]
    h, w = props["resampled_shape"]
    (c0, c1), (d0, d1) = props["crop"]
    if (c0, c1, d0, d1) == (0, h, 0, w):
        return x
    out = np.full((*x.shape[:-2], h, w), fill, dtype=x.dtype)
    out[..., c0:c1, d0:d1] = x
    return out


def _check_ms(arr: np.ndarray, props: dict, what: str) -> np.ndarray:
    """Accept ``(..., Z, S, S)`` (and ``(S, S)`` for 2D cases); return with the Z axis."""
    S, Z = props["slice_size"], props["n_slices"]
    if props["ndim"] == 2 and arr.ndim == 2 and arr.shape == (S, S):
        arr = arr[None]
    if arr.ndim < 3 or arr.shape[-3:] != (Z, S, S):
        raise ValueError(f"{what} must have shape (..., {Z}, {S}, {S}) for case {props.get('case_id')}, "
                         f"got {arr.shape}")
    return arr


def invert_mask(mask_ms: np.ndarray, props: dict, *, mode: str = "onehot_linear") -> np.ndarray:
    """Bring a model-space label array ``(Z, S, S)`` back to the original grid.

    Undoes pad, crop (cropped-away parts become background 0) and the in-plane
    resampling (one-hot linear + argmax by default, or ``nearest``); 2D cases lose their
    Z axis. Returns an array of ``props["original_shape"]`` with the input's dtype
    (int64 for a non-integer input, which is rounded first).
    """
    mask_ms = np.asarray(mask_ms)
    if _check_ms(mask_ms, props, "mask_ms").ndim != 3:
        raise ValueError(f"mask_ms must be (Z, S, S), got {mask_ms.shape}")
    return invert_masks(mask_ms, props, mode=mode)


def invert_masks(masks_ms: np.ndarray, props: dict, *, mode: str = "onehot_linear") -> np.ndarray:
    """`invert_mask` of a stack ``(..., Z, S, S)`` of label arrays of one case → ``(..., *original_shape)``.

    One resampling call for the whole stack (e.g. RCA's warped atlases); every mask gets
    exactly the answer `invert_mask` gives it alone (each slice is resampled on its own).
    """
    masks_ms = np.asarray(masks_ms)
    if masks_ms.dtype.kind not in "iub":
        masks_ms = np.rint(masks_ms).astype(np.int64)
    elif masks_ms.dtype.kind == "b":
        masks_ms = masks_ms.astype(np.uint8)
    x = _uncrop_unpad(_check_ms(masks_ms, props, "mask_ms"), props, 0)
    orig = props["original_shape"]
    x = resize_labels(x, tuple(orig[-2:]), mode=mode, antialias=True)
    out = x[..., 0, :, :] if props["ndim"] == 2 else x
    assert list(out.shape[out.ndim - len(orig):]) == list(orig), (out.shape, orig)
    return out


def invert_map(map_ms: np.ndarray, props: dict, *, fill: float = 0.0) -> np.ndarray:
    """Bring a continuous model-space map ``(..., Z, S, S)`` back to the original grid.

    Linear in-plane resampling (antialiased where the original grid is coarser); voxels
    cropped away in the forward step get ``fill``. Leading axes (e.g. classes) are kept:
    the result is ``(..., *original_shape)``, float32; 2D cases lose their Z axis.
    """
    map_ms = _check_ms(np.asarray(map_ms, dtype=np.float32), props, "map_ms")
    x = _uncrop_unpad(map_ms, props, fill)
    orig = props["original_shape"]
    x = resize_inplane(x, tuple(orig[-2:]), mode="linear", antialias=True)
    if props["ndim"] == 2:
        x = x[..., 0, :, :]
    assert list(x.shape[x.ndim - len(orig):]) == list(orig), (x.shape, orig)
    return x
