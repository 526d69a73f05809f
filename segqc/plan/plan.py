"""The plan: the decisions every QC method shares, made from a dataset fingerprint (nnU-Net's way).

`plan_from_fingerprint` turns the measurements of `segqc.plan.fingerprint` into the
in-plane model-space spacing, the square slice size, the intensity normalisation (a
name plus its kwargs, never a pickled object) and the labels. QC models work on 2D
axial slices, so only the in-plane axes ``(Y, X)`` are resampled.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from segqc.utils import look_up_option

__all__ = ["Plan", "plan_from_fingerprint", "SCHEMA_VERSION", "NORMALIZATIONS", "RESIZE_MODES", "CROP_TO",
           "MODALITIES"]

SCHEMA_VERSION = 1
NORMALIZATIONS = ("rgb", "ct", "zscore")
RESIZE_MODES = ("spacing", "fit")
CROP_TO = ("image",)
MODALITIES = ("RGB", "CT", "MR", "other")
IMAGE_RESAMPLERS = ("linear", "nearest")
MASK_RESAMPLERS = ("onehot_linear", "nearest")

# Extra room around the 95th-percentile foreground box, in model-space voxels.
_BBOX_MARGIN_FRACTION = 0.1
_BBOX_MARGIN_VOXELS = 4
_MULTIPLE = 16


def _default_resampling() -> dict:
    return {"image": {"name": "linear", "kwargs": {"antialias": True}},
            "mask": {"name": "onehot_linear", "kwargs": {"antialias": True}}}


@dataclass(frozen=True)
class Plan:
    """Decisions shared by preprocessing and every QC method; the only reader of ``plan.json``.

    Attributes:
        ndim: 2 or 3 (spatial dimensions of the original cases).
        n_channels: image channels the plan expects.
        modality: ``RGB``, ``CT``, ``MR`` or ``other``.
        labels: foreground labels (ints > 0) the dataset uses.
        target_spacing: in-plane model-space spacing ``(Y, X)`` in mm; the slice axis of 3D
            cases is never resampled. Used when ``resize_mode == "spacing"``.
        slice_size: side S of the square ``S × S`` model-space slice, in voxels.
        normalization: ``rgb`` (x / scale), ``ct`` (clip, then z-score with dataset
            foreground stats) or ``zscore`` (per-case z-score).
        normalization_kwargs: its parameters (``scale``; ``clip``/``mean``/``std`` per
            channel; ``use_nonzero_mask``).
        resize_mode: ``spacing`` (resample to ``target_spacing``, then centred pad/crop to
            S) or ``fit`` (photos: each image resized, aspect kept, to fit S × S, then padded).
        crop_to: field of view; only ``image`` (the whole image) for now.
        resampling: ``{"image": {"name", "kwargs"}, "mask": {"name", "kwargs"}}``.
        intensity_properties: foreground intensity statistics per channel (from the fingerprint).
        schema_version: version of this file format (1).
    """

    ndim: int
    n_channels: int
    modality: str
    labels: tuple[int, ...]
    target_spacing: tuple[float, float]
    slice_size: int
    normalization: str
    normalization_kwargs: dict = field(default_factory=dict)
    resize_mode: str = "spacing"
    crop_to: str = "image"
    resampling: dict = field(default_factory=_default_resampling)
    intensity_properties: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"unknown plan schema_version {self.schema_version!r}; this segqc reads "
                             f"version {SCHEMA_VERSION}")
        if self.ndim not in (2, 3):
            raise ValueError(f"plan ndim must be 2 or 3, got {self.ndim}")
        if int(self.n_channels) < 1:
            raise ValueError(f"plan n_channels must be ≥ 1, got {self.n_channels}")
        ts = tuple(float(s) for s in self.target_spacing)
        if len(ts) != 2 or not all(s > 0 and math.isfinite(s) for s in ts):
            raise ValueError(f"target_spacing must be 2 positive in-plane spacings (Y, X) in mm, got "
                             f"{self.target_spacing}")
        if int(self.slice_size) != self.slice_size or self.slice_size < 1:
            raise ValueError(f"slice_size must be a positive integer, got {self.slice_size}")
        labels = tuple(int(v) for v in self.labels)
        if any(v <= 0 for v in labels):
            raise ValueError(f"labels must be ints > 0, got {list(self.labels)}")
        look_up_option(self.modality, MODALITIES, "modality")
        look_up_option(self.normalization, NORMALIZATIONS, "normalization")
        look_up_option(self.resize_mode, RESIZE_MODES, "resize_mode")
        look_up_option(self.crop_to, CROP_TO, "crop_to")
        for key, names in (("image", IMAGE_RESAMPLERS), ("mask", MASK_RESAMPLERS)):
            entry = self.resampling.get(key) if isinstance(self.resampling, dict) else None
            if not isinstance(entry, dict) or "name" not in entry:
                raise ValueError(f"plan resampling needs {key!r}: {{'name': ..., 'kwargs': {{...}}}}, "
                                 f"got {self.resampling}")
            look_up_option(self.resampling[key]["name"], names, f"{key} resampling")
        object.__setattr__(self, "target_spacing", ts)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "slice_size", int(self.slice_size))
        object.__setattr__(self, "n_channels", int(self.n_channels))

    def to_dict(self) -> dict:
        """JSON-able dict (``schema_version`` first)."""
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["target_spacing"] = list(self.target_spacing)
        return {"schema_version": d.pop("schema_version"), **copy.deepcopy(d)}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """Rebuild a plan; refuses an unknown ``schema_version`` and unknown or missing keys."""
        if not isinstance(d, dict):
            raise ValueError(f"a plan must be a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"unknown plan schema_version {version!r} (expected {SCHEMA_VERSION}); the plan was "
                             "written by another segqc version — re-run planning or upgrade segqc")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"plan has unknown key(s) {unknown}; expected {sorted(names)}")
        return cls(**copy.deepcopy(d))

    def to_json(self, path: str | Path) -> Path:
        """Write ``plan.json``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> "Plan":
        """Read ``plan.json`` written by `to_json`."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d)


def _round_up(n: float, multiple: int = _MULTIPLE) -> int:
    return max(multiple, int(math.ceil(n / multiple - 1e-9)) * multiple)


def plan_from_fingerprint(fp: dict, *, slice_size: int | None = None, max_slice_size: int = 128) -> Plan:
    """Decide model space from a fingerprint.

    In-plane target spacing starts at the dataset's median in-plane spacing. The slice
    must hold the median image (its in-plane extent in mm) and the 95th-percentile
    foreground box plus a margin (never more than the 95th-percentile image); the voxel
    count needed is rounded up to a multiple of 16. If that exceeds ``max_slice_size``
    (or the given ``slice_size``), the spacing grows by the same factor on both in-plane
    axes so that the median image fits: Kvasir 256² px at 1 px → 128 at 2 px.

    Args:
        fp: output of `compute_fingerprint`.
        slice_size: force S (voxels); the spacing is enlarged if the median image does
            not fit.
        max_slice_size: cap on the automatic S.
    """
    if slice_size is not None and (int(slice_size) != slice_size or slice_size < 1):
        raise ValueError(f"slice_size must be a positive integer, got {slice_size}")
    if max_slice_size < 1:
        raise ValueError(f"max_slice_size must be a positive integer, got {max_slice_size}")
    ndim = int(fp["ndim"])
    spacings = np.asarray(fp["spacings"], dtype=float)[:, -2:]
    shapes = np.asarray(fp["shapes"], dtype=float)[:, -2:]
    extents = spacings * shapes  # in-plane mm per case
    target = np.median(spacings, axis=0)
    need_img = np.median(extents, axis=0) / target
    boxes = [b[-2:] for b in fp.get("fg_bbox_mm", []) if b is not None]
    need = need_img
    if boxes:
        box95 = np.percentile(np.asarray(boxes, dtype=float), 95, axis=0) / target
        need_fg = np.maximum(box95 * (1 + _BBOX_MARGIN_FRACTION), box95 + _BBOX_MARGIN_VOXELS)
        need_fg = np.minimum(need_fg, np.percentile(extents, 95, axis=0) / target)
        need = np.maximum(need_img, need_fg)
    need_max = float(need.max())
    if slice_size is None:
        size = min(_round_up(need_max), int(max_slice_size))
    else:
        size = int(slice_size)
    if need_max > size + 1e-6:
        target = target * (need_max / size)

    modality = fp.get("modality_guess", "other")
    fg_props = fp.get("foreground_intensity_properties_per_channel") or fp.get("image_intensity_properties_per_channel")
    n_channels = int(fp["n_channels"])
    if modality == "RGB":
        norm, kwargs = "rgb", {"scale": 255.0}
    elif modality == "CT":
        chans = [fg_props[str(c)] for c in range(n_channels)]
        norm = "ct"
        kwargs = {"clip": [[p["percentile_00_5"], p["percentile_99_5"]] for p in chans],
                  "mean": [p["mean"] for p in chans], "std": [p["std"] for p in chans]}
    else:
        norm, kwargs = "zscore", {"use_nonzero_mask": False}
    return Plan(ndim=ndim, n_channels=n_channels, modality=modality, labels=tuple(fp.get("labels", [])),
                target_spacing=tuple(float(t) for t in target), slice_size=size, normalization=norm,
                normalization_kwargs=kwargs, resize_mode="fit" if (modality == "RGB" and ndim == 2) else "spacing",
                crop_to="image", resampling=_default_resampling(),
                intensity_properties=copy.deepcopy(fg_props) if fg_props else {})

