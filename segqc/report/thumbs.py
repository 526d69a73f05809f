"""Small overlay pictures of one case for the HTML report, as data URIs.

A reviewer must see at a glance *where* a mask may be wrong, so each case gets:

* an **overlay** panel: the image with the contours of the candidate mask (warm colours),
  the pseudo ground truth (cold colours) and, when known, the true mask (greens);
* an **error** panel: the image darkened, with the error / uncertainty map as a heat
  overlay (transparent where the candidate is probably right) and the candidate contour.

2D images are shown whole. 3D volumes show the axial slice (array axis 0) where the
candidate and the pseudo ground truth disagree most (or, without a pGT, where the
candidate has most foreground), plus a small mosaic of evenly spaced slices across the
structure so that missing or extra slices show up too.

Pictures are drawn at thumbnail resolution (contours are 1 pixel at that size) and
stored as WebP so that thousands of cases still make an HTML file of tens of MB at most.
"""

from __future__ import annotations

import base64
import io

import numpy as np

__all__ = ["render_case", "pick_slices", "to_data_uri", "CANDIDATE_COLOURS", "PGT_COLOURS", "TRUTH_COLOURS"]

# one colour per foreground label (cycled), chosen to stay apart from each other on grey and RGB images
CANDIDATE_COLOURS = ((255, 221, 0), (255, 128, 0), (255, 64, 160), (200, 120, 255))
PGT_COLOURS = ((0, 229, 255), (40, 110, 255), (0, 255, 190), (120, 170, 255))
TRUTH_COLOURS = ((40, 230, 60), (170, 255, 80), (0, 160, 60), (220, 255, 160))
_GAP = 2  # pixels between panels


def to_data_uri(rgb: np.ndarray, quality: int = 72) -> str:
    """``(H, W, 3)`` uint8 → ``data:image/webp;base64,...``.

    WebP (every current browser shows it) is about 40 % smaller than JPEG at the same
    look on these small, contour-laden pictures; PNG would be 5–8 times larger.
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="WEBP", quality=quality, method=4)
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _window(image: np.ndarray) -> tuple[float, float, bool]:
    """How to map an image ``(C, ...)`` to 8-bit: ``(lo, hi, is_rgb)``.

    RGB photographs are shown as they are; anything else as channel 0 in a robust
    grey window (0.5–99.5 percentiles of the whole image, so slices compare).
    """
    if image.shape[0] == 3 and image.min() >= 0 and image.max() <= 255:
        return 0.0, 255.0, True
    ch = image[0]
    step = max(1, ch.size // 2_000_000)  # percentiles of a large CT on a subsample
    lo, hi = np.percentile(ch.ravel()[::step], [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0), False


def _to_rgb(plane: np.ndarray, window: tuple[float, float, bool]) -> np.ndarray:
    """``(C, Y, X)`` float → ``(Y, X, 3)`` uint8."""
    lo, hi, is_rgb = window
    x = plane if is_rgb else np.repeat(plane[:1], 3, axis=0)
    x = np.clip((x - lo) / (hi - lo) * 255.0, 0, 255)
    return np.moveaxis(x, 0, -1).astype(np.uint8)


def _target_size(shape: tuple[int, int], spacing: tuple[float, float], size: int) -> tuple[int, int]:
    """(height, width) with the longer physical side = ``size`` pixels."""
    h_mm, w_mm = shape[0] * spacing[0], shape[1] * spacing[1]
    scale = size / max(h_mm, w_mm)
    return max(1, int(round(h_mm * scale))), max(1, int(round(w_mm * scale)))


def _resize_rgb(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.BILINEAR, reducing_gap=2.0))


def _resize_binary(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Area-weighted when shrinking (thin structures survive), nearest when enlarging."""
    from PIL import Image

    im = Image.fromarray(mask.astype(np.uint8) * 255)
    method = Image.BOX if hw[0] < mask.shape[0] else Image.NEAREST
    return np.asarray(im.resize((hw[1], hw[0]), method)) >= 128


def _resize_float(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(x.astype(np.float32), mode="F").resize((hw[1], hw[0]), Image.BILINEAR))


def _contour(b: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return b & ~binary_erosion(b, border_value=0)


def _draw_contours(rgb: np.ndarray, labels: np.ndarray | None, colours, hw) -> None:
    if labels is None:
        return
    for i, k in enumerate(sorted(set(np.unique(labels).tolist()) - {0})):
        edge = _contour(_resize_binary(labels == k, hw))
        rgb[edge] = colours[i % len(colours)]


def _overlay(rgb: np.ndarray, mask, pgt, truth, hw) -> np.ndarray:
    out = rgb.copy()
    if mask is not None:  # a light fill shows where the candidate is even when it is speckled
        fill = _resize_binary(mask > 0, hw)
        out[fill] = (0.7 * out[fill] + 0.3 * np.array(CANDIDATE_COLOURS[0])).astype(np.uint8)
    # truth below pGT below candidate: the candidate is what is being judged, it stays on top
    _draw_contours(out, truth, TRUTH_COLOURS, hw)
    _draw_contours(out, pgt, PGT_COLOURS, hw)
    _draw_contours(out, mask, CANDIDATE_COLOURS, hw)
    return out


def _error_panel(rgb: np.ndarray, error: np.ndarray, mask, hw) -> np.ndarray:
    e = np.clip(_resize_float(error, hw), 0.0, 1.0)[..., None]
    # transparent below 0.25 (probably right), opaque red at 0.75, turning yellow towards 1
    ramp = np.clip((e - 0.25) / 0.5, 0.0, 1.0)
    heat = np.concatenate([np.full_like(e, 255.0), 255.0 * np.clip(2 * e - 1, 0, 1), np.zeros_like(e)], -1)
    alpha = 0.9 * ramp
    out = (rgb * 0.55 * (1 - alpha) + heat * alpha).astype(np.uint8)
    _draw_contours(out, mask, ((255, 255, 255),), hw)
    return out


def _hstack(panels: list[np.ndarray]) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    parts = []
    for i, p in enumerate(panels):
        if p.shape[0] < h:
            pad = np.full((h - p.shape[0], p.shape[1], 3), 24, np.uint8)
            p = np.concatenate([p, pad], 0)
        parts.append(p)
        if i < len(panels) - 1:
            parts.append(np.full((h, _GAP, 3), 24, np.uint8))
    return np.concatenate(parts, 1)


def pick_slices(mask: np.ndarray, pgt: np.ndarray | None = None, error: np.ndarray | None = None,
                truth: np.ndarray | None = None, n: int = 8) -> tuple[int, list[int]]:
    """The most informative axial slice of a ``(Z, Y, X)`` case and ``n`` mosaic slices.

    Informative = most voxels where candidate and pGT disagree, plus the summed error
    map; without a pGT, most candidate foreground. The mosaic spans, evenly, the slices
    where any mask (candidate, pGT, truth) has foreground — so a missed or extra slab is
    visible — or the whole volume when all are empty.
    """
    z = mask.shape[0]
    score = np.zeros(z)
    if pgt is not None:
        score += (mask != pgt).reshape(z, -1).sum(1)
    if error is not None:
        score += np.asarray(error, float).reshape(z, -1).sum(1)
    fg = (mask > 0).reshape(z, -1).sum(1)
    if pgt is not None:
        fg = fg + (pgt > 0).reshape(z, -1).sum(1)
    if truth is not None:
        fg = fg + (truth > 0).reshape(z, -1).sum(1)
    # ties (e.g. no pGT and no error map) go to the slice with most foreground
    best = int(np.lexsort((-fg, -score))[0]) if z else 0
    idx = np.flatnonzero(fg > 0)
    lo, hi = (idx[0], idx[-1]) if idx.size else (0, z - 1)
    mosaic = sorted(set(np.linspace(lo, hi, min(n, hi - lo + 1)).round().astype(int).tolist()))
    return best, mosaic


def render_case(image: np.ndarray, mask: np.ndarray | None, spacing: tuple[float, ...], *,
                pgt: np.ndarray | None = None, error: np.ndarray | None = None, truth: np.ndarray | None = None,
                size: int = 112, mosaic_tiles: int = 8, mosaic_size: int = 40) -> dict:
    """Thumbnails of one case as data URIs.

    Args:
        image: ``(C, Y, X)`` or ``(C, Z, Y, X)``.
        mask, pgt, truth: label maps on the image grid (any may be None).
        error: float map in [0, 1] on the image grid (1 = candidate surely wrong).
        spacing: mm per axis in array order, for the aspect ratio.
        size: longer side of each panel in pixels.

    Returns:
        ``{"thumb": uri, "slice": z or None, "mosaic": uri or None, "mosaic_slices": [...],
        "has_pgt": bool, "has_error": bool}``;
        ``thumb`` is the overlay panel, followed by the error panel when an error map is given.
    """
    window = _window(image)
    ndim = image.ndim - 1
    if ndim == 2:
        planes = {"img": image, "mask": mask, "pgt": pgt, "error": error, "truth": truth}
        z, mosaic_idx = None, []
    else:
        ref = mask if mask is not None else np.zeros(image.shape[1:], np.uint8)
        z, mosaic_idx = pick_slices(ref, pgt, error, truth, n=mosaic_tiles)
        planes = {"img": image[:, z], **{k: (None if v is None else v[z]) for k, v in
                                          (("mask", mask), ("pgt", pgt), ("error", error), ("truth", truth))}}
    sp = tuple(spacing[-2:])
    hw = _target_size(planes["img"].shape[1:], sp, size)
    rgb = _resize_rgb(_to_rgb(planes["img"], window), hw)
    panels = [_overlay(rgb, planes["mask"], planes["pgt"], planes["truth"], hw)]
    if planes["error"] is not None:
        panels.append(_error_panel(rgb, planes["error"], planes["mask"], hw))
    out = {"thumb": to_data_uri(_hstack(panels)), "slice": z, "mosaic": None, "mosaic_slices": mosaic_idx,
           "has_pgt": pgt is not None, "has_error": error is not None}
    if ndim == 3 and mosaic_idx:
        mhw = _target_size(image.shape[2:], sp, mosaic_size)
        tiles = []
        for k in mosaic_idx:
            t_rgb = _resize_rgb(_to_rgb(image[:, k], window), mhw)
            tiles.append(_overlay(t_rgb, None if mask is None else mask[k], None if pgt is None else pgt[k],
                                  None if truth is None else truth[k], mhw))
        cols = 4
        rows = [_hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
        width = max(r.shape[1] for r in rows)
        rows = [np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), 24, np.uint8)], 1) for r in rows]
        sep = np.full((_GAP, width, 3), 24, np.uint8)
        grid = rows[0]
        for r in rows[1:]:
            grid = np.concatenate([grid, sep, r], 0)
        out["mosaic"] = to_data_uri(grid)
    return out
