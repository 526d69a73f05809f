"""The one in-memory type every part of segqc passes around: a `Case`.

Arrays follow numpy / SimpleITK order: spatial axes are ``(Z, Y, X)`` in 3D and
``(Y, X)`` in 2D, and the image carries a leading channel axis ``(C, ...)`` so that
RGB photographs, multi-sequence MRI and single-channel CT share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Case", "Geometry"]


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a grid: spacing (mm), origin (mm), direction cosines.

    All three follow the array axis order, ``(Z, Y, X)`` / ``(Y, X)``; ``direction`` is
    the row-major ``ndim × ndim`` matrix whose column *i* is the world direction of
    array axis *i*.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def identity(cls, ndim: int, spacing: tuple[float, ...] | None = None) -> "Geometry":
        spacing = tuple(float(s) for s in (spacing or (1.0,) * ndim))
        return cls(spacing, (0.0,) * ndim, tuple(np.eye(ndim).ravel().tolist()))

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    def mismatch(self, other: "Geometry", tol: float = 1e-3) -> str | None:
        """Why two grids differ (spacing, origin or direction beyond ``tol``), or None."""
        if self.ndim != other.ndim:
            return f"dimension {self.ndim} vs {other.ndim}"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            # spacing is compared relatively (0.1 % of a voxel), origin in mm scaled by voxel size
            scale = np.maximum(np.abs(a), 1.0) if name != "direction" else 1.0
            if np.any(np.abs(a - b) > tol * scale):
                return f"{name} {_fmt(a)} vs {_fmt(b)}"
        return None


def _fmt(a: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in a) + ")"


@dataclass
class Case:
    """One image with its mask.

    Attributes:
        case_id: identifier used in every output row.
        image: float32 array ``(C, Z, Y, X)`` or ``(C, Y, X)``.
        mask: integer label array ``(Z, Y, X)`` / ``(Y, X)`` (0 = background), or None.
            In fitting it is the expert mask; in QC it is the candidate being judged.
        geometry: spacing / origin / direction of the spatial grid.
        truth: optional expert mask used only for evaluation (never seen by a QC method).
        meta: free-form provenance (file paths, group such as the model name, ...).
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray | None
    geometry: Geometry
    truth: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.image.ndim - 1

    @property
    def spacing(self) -> tuple[float, ...]:
        return self.geometry.spacing

    @property
    def n_channels(self) -> int:
        return self.image.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape."""
        return tuple(self.image.shape[1:])

    def with_mask(self, mask: np.ndarray | None) -> "Case":
        """A shallow copy carrying another mask (e.g. a corrupted one)."""
        return replace(self, mask=mask)
