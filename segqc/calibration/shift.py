"""How far has a batch moved from the reference data? A shift score a person can read.

Every QC method was fitted and calibrated on the reference cases; on images from another
camera, scanner or protocol its answers can drift (segqc's benchmarks show them growing
optimistic). Before trusting a batch's estimated mean Dice, segqc asks: can the batch's
images be told apart from the reference images at all?

* `appearance` describes one image by what a new site changes: intensity / colour
  levels and contrast (percentiles per channel), sharpness (gradient and Laplacian energy
  relative to contrast), noise, vignetting (border vs centre), blockiness (JPEG 8×8
  grid), saturated highlights, grid size and spacing.
* `shift_score`: the share of the batch's images that lie further from the reference
  images (k nearest neighbours of standardised descriptors) than 95 % of the reference
  images lie from each other — about 0.05 for a batch like the reference data, 1.0 when
  every image is unlike all of them. It says how far outside the data segqc was fitted on
  the batch lies, not whether the QC answers are wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SHIFT_WARNING", "appearance", "appearance_names", "shift_score"]

# per channel, then per image
_PER_CHANNEL = ("q01", "q50", "q99", "std", "grad", "laplace", "noise", "border_ratio", "blockiness", "saturated")
_PER_IMAGE = ("log_pixels", "log_spacing")
# share of unlike images above which the report warns: most of the batch is unlike the reference
SHIFT_WARNING = 0.5
_MAX_SIDE = 256   # images are looked at on at most 256 × 256 pixels per slice
_MAX_SLICES = 16  # and at most 16 slices of a volume


def appearance_names(n_channels: int) -> list[str]:
    """Names of the descriptor's numbers: per channel ``c<i>_<name>``, then per image."""
    return [f"c{c}_{n}" for c in range(n_channels) for n in _PER_CHANNEL] + list(_PER_IMAGE)


def _names_of(width: int) -> list[str]:
    return appearance_names((width - len(_PER_IMAGE)) // len(_PER_CHANNEL))


def _slices(image: np.ndarray) -> np.ndarray:
    """``(C, [Z,] Y, X)`` → ``(C, k, y, x)``: a few evenly spaced slices, subsampled in-plane."""
    x = image if image.ndim == 4 else image[:, None]
    z = x.shape[1]
    if z > _MAX_SLICES:
        x = x[:, np.linspace(0, z - 1, _MAX_SLICES).round().astype(int)]
    step = max(1, int(np.ceil(max(x.shape[-2:]) / _MAX_SIDE)))
    return np.asarray(x[..., ::step, ::step], dtype=np.float32)


def appearance(image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Appearance descriptor of one image (``(C, [Z,] Y, X)``, its spacing in mm); see `appearance_names`."""
    from scipy import ndimage as ndi

    x = _slices(image)
    out = []
    for ch in x:
        q01, q50, q99 = np.percentile(ch, [1, 50, 99])
        contrast = max(float(q99 - q01), 1e-6)
        gy, gx = np.gradient(ch, axis=(-2, -1))
        grad = float(np.mean(np.hypot(gy, gx))) / contrast
        lap = np.stack([ndi.laplace(s) for s in ch])
        laplace = float(np.mean(np.abs(lap))) / contrast
        noise = float(np.median(np.abs(lap - np.median(lap)))) / contrast  # robust: edges are rare
        h, w = ch.shape[-2:]
        bh, bw = max(1, h // 10), max(1, w // 10)
        edges = (ch[:, :bh], ch[:, -bh:], ch[:, :, :bw], ch[:, :, -bw:])
        border = np.concatenate([e.ravel() for e in edges])
        centre = ch[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4]
        border_ratio = (float(border.mean()) - q01) / max(float(centre.mean()) - q01, 1e-6)
        # JPEG's 8 × 8 blocks: steps across block edges vs elsewhere (1 for a smooth image)
        dx = np.abs(np.diff(ch, axis=-1))
        on = dx[..., 7::8].mean() if dx.shape[-1] > 8 else 0.0
        blockiness = float(on / max(float(dx.mean()), 1e-6))
        saturated = float(np.mean(ch >= ch.max() - 1e-3 * contrast))
        out += [q01, q50, q99, float(ch.std()), grad, laplace, noise, border_ratio, blockiness, saturated]
    spatial = image.shape[1:]
    out += [float(np.log(np.prod(spatial[-2:]))), float(np.mean(np.log(np.asarray(spacing, float)[-2:])))]
    return np.nan_to_num(np.asarray(out, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _standardise(reference: np.ndarray):
    """Each descriptor as a normal score of its rank among the reference images.

    Ranks make descriptors of any scale comparable and bound what one of them can weigh
    (±3.1 for 600 reference images). A descriptor (nearly) constant on the reference (one
    resolution, one spacing) has no ranks to speak of: it is measured in units of 5 % of
    its value instead, within the same bound, so that a small change stays small.
    """
    from scipy.stats import norm

    ref = np.sort(np.asarray(reference, float), axis=0)
    n = len(ref)
    bound = float(norm.ppf(1 - 0.5 / n))
    med = np.median(ref, 0)
    flat = np.subtract(*np.percentile(ref, [75, 25], 0)) <= 1e-9 * np.maximum(np.abs(med), 1.0)
    unit = np.maximum(0.05 * np.abs(med), 1e-3)

    def z(x):
        x = np.atleast_2d(np.asarray(x, float))
        below = np.stack([np.searchsorted(ref[:, j], x[:, j], "left") for j in range(ref.shape[1])], 1)
        upto = np.stack([np.searchsorted(ref[:, j], x[:, j], "right") for j in range(ref.shape[1])], 1)
        ranked = norm.ppf(np.clip((below + upto) / (2.0 * n), 0.5 / n, 1 - 0.5 / n))
        return np.where(flat, np.clip((x - med) / unit, -bound, bound), ranked)

    return z


def shift_score(reference: np.ndarray, batch: np.ndarray, *, k: int = 5) -> dict:
    """How much of ``batch`` looks unlike the reference images, and which descriptors moved most.

    Each batch image's distance to its ``k`` nearest reference images (descriptors as
    normal scores of their reference ranks) is compared with the reference images' own (leave-one-out) distances:
    ``score`` is the share of the batch beyond the reference's 95th percentile — about 0.05
    for a batch like the reference data, 1.0 when every image is unlike all of them.
    ``distance_ratio`` is the batch's median distance over the reference's. Returns NaN
    scores when either side has fewer than ``k + 1`` cases.
    """
    from sklearn.neighbors import NearestNeighbors

    ref, bat = np.asarray(reference, float), np.asarray(batch, float)
    out = {"score": float("nan"), "expected_in_distribution": 0.05, "distance_ratio": float("nan"),
           "n_reference": int(len(ref)), "n_batch": int(len(bat)), "warning": None, "most_different": []}
    if len(ref) <= k or len(bat) <= k or ref.ndim != 2 or bat.ndim != 2 or ref.shape[1] != bat.shape[1]:
        return out
    z = _standardise(ref)
    zr, zb = z(ref), z(bat)
    d_ref = NearestNeighbors(n_neighbors=k + 1).fit(zr).kneighbors(zr)[0][:, 1:].mean(1)  # itself excluded
    d_bat = NearestNeighbors(n_neighbors=k).fit(zr).kneighbors(zb)[0].mean(1)
    out["score"] = float(np.mean(d_bat > np.quantile(d_ref, 0.95)))
    out["distance_ratio"] = float(np.median(d_bat) / max(float(np.median(d_ref)), 1e-12))
    shift = np.median(zb, 0)  # normal scores of the reference ranks: ±3 is beyond almost every reference image
    labels = _names_of(ref.shape[1])
    out["most_different"] = [{"descriptor": labels[i], "median_normal_score": float(shift[i])}
                             for i in np.argsort(-np.abs(shift))[:3]]
    if out["score"] >= SHIFT_WARNING:
        out["warning"] = (f"{out['score']:.0%} of this batch's images are unlike the reference images segqc was "
                          "fitted on (about 5 % for a batch like them): its QC answers are outside what it was "
                          "calibrated for; check a sample of cases by hand before trusting the estimated Dice")
    return out
