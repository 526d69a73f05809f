"""Images as another site would acquire them: the changes a new scanner or camera makes.

segqc is calibrated on reference images from one site. A model deployed elsewhere sees
another colour balance or window, another contrast curve, softer optics, more noise, a
lower resolution — and fails in ways the reference images never show (segqc's own
opinion of the image degrades with it, so QC grows optimistic). A *simulated site* is one
fixed draw of those changes, applied the same way to every image it acquires, so that
calibration can see how QC errs on a whole batch from an unfamiliar site.

Works on any image segqc reads — ``(C, Y, X)`` photos or ``(C, Z, Y, X)`` volumes — in its
own intensities: changes are relative to each channel's range, blur and resolution act
in-plane (the axes every modality shares), and the result stays within the image's
original range, so a photo stays a photo and a CT keeps its window. Geometry is never
changed: the expert mask still fits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Site", "draw_sites"]


@dataclass(frozen=True)
class Site:
    """One simulated acquisition site: what it changes, as a fixed set of numbers."""

    name: str
    severity: float
    gains: tuple[float, ...]     # per channel: contrast × gain (colour balance / window width)
    offsets: tuple[float, ...]   # per channel: shift, in shares of the channel's range (window level)
    gamma: float                 # contrast curve on each channel's range
    blur_sigma: float            # in-plane Gaussian blur, pixels
    noise: float                 # additive Gaussian noise, share of the channel's range
    scale: float                 # in-plane resolution of the sensor (1 = as the reference), brought back

    def as_dict(self) -> dict:
        return asdict(self)

    def acquire(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``image`` as this site acquires it (float32, same shape, within the image's own range);
        ``rng`` draws the sensor noise, the only change that differs between images."""
        from scipy import ndimage as ndi

        x = np.asarray(image, np.float32)
        lo = x.min(axis=tuple(range(1, x.ndim)), keepdims=True)
        hi = x.max(axis=tuple(range(1, x.ndim)), keepdims=True)
        span = np.maximum(hi - lo, 1e-6)
        u = (x - lo) / span                                   # each channel on [0, 1]
        u = np.clip(u, 0, 1) ** self.gamma
        gains = np.resize(np.asarray(self.gains, np.float32), len(x)).reshape((-1,) + (1,) * (x.ndim - 1))
        offsets = np.resize(np.asarray(self.offsets, np.float32), len(x)).reshape(gains.shape)
        u = (u - 0.5) * gains + 0.5 + offsets
        inplane = (0,) * (x.ndim - 3) + (0, 1, 1)             # channel (and slice) axes are left alone
        if self.blur_sigma > 0:
            u = ndi.gaussian_filter(u, sigma=[self.blur_sigma * a for a in inplane])
        if self.scale < 1:
            # "nearest": the default pads with zeros, which darkens the border rows
            small = ndi.zoom(u, [self.scale if a else 1 for a in inplane], order=1, mode="nearest")
            back = ndi.zoom(small, [t / s for t, s in zip(u.shape, small.shape)], order=1, mode="nearest")
            u = _fit_to(back, u.shape)
        if self.noise > 0:
            u = u + rng.normal(0, self.noise, u.shape).astype(np.float32)
        return (np.clip(u, 0, 1) * span + lo).astype(np.float32)


def _fit_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` cropped or edge-padded to ``shape`` (a zoom's rounding can miss it by a pixel)."""
    x = x[tuple(slice(0, n) for n in shape)]
    return np.pad(x, [(0, n - m) for n, m in zip(shape, x.shape)], mode="edge")


def draw_sites(n: int, n_channels: int, rng: np.random.Generator) -> list[Site]:
    """``n`` sites of growing severity (from 1/n to 1), each change drawn within it.

    The ranges are those of real differences between acquisitions: contrast ±35 %, a
    window / colour shift of ±10 % of the range, gamma 0.6–1.7, blur up to 2 pixels, noise
    up to 6 % of the range, a sensor down to half the resolution.
    """
    sites = []
    for i in range(n):
        s = (i + 1) / n

        def up_to(limit: float) -> float:  # every site moves every way, its severity sets how far
            return float(limit * s * rng.uniform(0.5, 1.0))

        def signed(limit: float) -> float:
            return float(rng.choice([-1.0, 1.0]) * up_to(limit))

        sites.append(Site(name=f"site{i + 1}", severity=round(s, 3),
                          gains=tuple(float(np.exp(signed(0.3))) for _ in range(n_channels)),
                          offsets=tuple(signed(0.1) for _ in range(n_channels)),
                          gamma=float(np.exp(signed(0.5))), blur_sigma=up_to(2.0), noise=up_to(0.06),
                          scale=1.0 - up_to(0.5)))
    return sites
