"""The segmentation model's own uncertainty: samples from one model or several, and their aggregation.

Sources of samples (each sample = class probabilities on the image's ORIGINAL grid):

* ``mc_dropout`` — N passes of the first model with its dropout layers on (Gal & Ghahramani 2016);
* ``tta`` — N test-time augmentations (flips, small rotations and scalings, intensity gain and
  offset), each applied to the network's input in model space and undone on its logits before
  they go back to the image grid (flips exactly; rotations / scalings by the inverse affine map);
* ``ensemble`` — one pass of each of several models (deep ensemble, Lakshminarayanan et al. 2017).

Aggregations of the samples to one number per label, all oriented as *quality* (higher =
better, in [0, 1], so that they calibrate monotonically to Dice):

* ``mean_entropy`` — 1 − mean normalised predictive entropy over the image;
* ``foreground_entropy`` — 1 − entropy weighted by max(mean foreground probability, candidate);
* ``boundary_excluded_entropy`` — 1 − mean entropy around the structure, leaving out a band
  along the mean mask's boundary, where every model is unsure (Jungo & Reyes 2019);
* ``patch_min_confidence`` — the least confident patch (mean of 1 − entropy over a window)
  that touches the structure: one local failure is enough to fail a case;
* ``mutual_information`` — 1 − foreground-weighted epistemic part (entropy of the mean minus
  mean entropy of the samples);
* ``pairwise_dice`` — mean Dice between the samples' masks (Zenk et al. 2024: best AURC);
* ``candidate_dice`` — Dice between the candidate and the mask of the mean probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import ndimage

from segqc.data.labels import to_labels
from segqc.metrics import binary_dice
from segqc.utils import look_up_option

__all__ = ["SOURCES", "AGGREGATIONS", "TTATransform", "tta_transforms", "sample_probabilities",
           "sample_probabilities_many", "aggregate", "uncertainty_maps", "binary_entropy"]

SOURCES = ("mc_dropout", "tta", "ensemble")
AGGREGATIONS = ("mean_entropy", "foreground_entropy", "boundary_excluded_entropy", "patch_min_confidence",
                "mutual_information", "pairwise_dice", "candidate_dice")


# ----------------------------------------------------------------------------- TTA


@dataclass(frozen=True)
class TTATransform:
    """One test-time augmentation of a (B, C, *spatial) model-space tensor, and its inverse.

    Attributes:
        flips: spatial axes (0 = first spatial axis) flipped.
        angle: in-plane rotation in degrees (the last two axes), about the centre.
        scale: in-plane zoom factor (> 1 magnifies).
        gain, bias: intensity jitter ``x · gain + bias · std(x)``; needs no inverse (it does
            not move anything).
    """

    flips: tuple[int, ...] = ()
    angle: float = 0.0
    scale: float = 1.0
    gain: float = 1.0
    bias: float = 0.0

    @property
    def is_affine(self) -> bool:
        return self.angle != 0.0 or self.scale != 1.0

    def matrix(self, shape: tuple[int, ...]):
        """(ndim, ndim + 1) theta for ``affine_grid``: output coordinates → input coordinates.

        Built in pixel units and conjugated by the normalisation, so a rotation stays a
        rotation on a non-square grid.
        """
        import torch

        nd = len(shape)
        half = np.array(shape[::-1], float) / 2.0  # (x, y[, z]) order, as affine_grid wants
        a = np.deg2rad(self.angle)
        m = np.eye(nd)
        # magnify by `scale` = sample the input on a grid shrunk by 1/scale
        m[:2, :2] = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / self.scale
        theta = np.diag(1 / half) @ m @ np.diag(half)
        return torch.tensor(np.concatenate([theta, np.zeros((nd, 1))], 1), dtype=torch.float32)

    def inverse_matrix(self, shape: tuple[int, ...]):
        import torch

        t = self.matrix(shape)[:, :-1].double()
        inv = torch.linalg.inv(t).float()
        return torch.cat([inv, torch.zeros(inv.shape[0], 1)], 1)

    @staticmethod
    def _warp(x, theta, padding: str):
        import torch.nn.functional as F

        grid = F.affine_grid(theta[None].expand(x.shape[0], -1, -1).to(x.device), list(x.shape),
                             align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)

    def forward(self, x):
        """Augment the network input (intensity, then geometry)."""
        if self.gain != 1.0 or self.bias != 0.0:
            x = x * self.gain + self.bias * x.std()
        if self.is_affine:
            x = self._warp(x, self.matrix(tuple(x.shape[2:])), "reflection")
        if self.flips:
            x = x.flip([2 + a for a in self.flips])
        return x

    def inverse(self, y):
        """Undo the geometry on the network output (logits), in reverse order."""
        if self.flips:
            y = y.flip([2 + a for a in self.flips])
        if self.is_affine:
            y = self._warp(y, self.inverse_matrix(tuple(y.shape[2:])), "border")
        return y


def tta_transforms(n: int, ndim: int, rng: np.random.Generator, *, max_angle: float = 10.0,
                   max_zoom: float = 0.1, jitter: float = 0.1) -> list[TTATransform]:
    """``n`` transforms: identity, the in-plane flips, then random flip + rotation + zoom + intensity jitter."""
    if n < 1:
        raise ValueError(f"n_samples must be >= 1, got {n}")
    inplane = (ndim - 2, ndim - 1)
    fixed = [TTATransform(), TTATransform(flips=(inplane[1],)), TTATransform(flips=(inplane[0],)),
             TTATransform(flips=inplane)]
    out = fixed[:n]
    while len(out) < n:
        flips = tuple(a for a in inplane if rng.random() < 0.5)
        out.append(TTATransform(flips=flips, angle=float(rng.uniform(-max_angle, max_angle)),
                                scale=float(np.exp(rng.uniform(np.log(1 - max_zoom), np.log(1 + max_zoom)))),
                                gain=float(rng.uniform(1 - jitter, 1 + jitter)),
                                bias=float(rng.uniform(-jitter, jitter))))
    return out


# ----------------------------------------------------------------------------- sampling


def _seeded(seed: int, device: str):
    import torch

    ctx = torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.startswith("cuda") else [])
    ctx.__enter__()
    torch.manual_seed(seed)
    return ctx


def sample_probabilities(models: list, image: np.ndarray, *, source: str, n_samples: int = 8,
                         rng: np.random.Generator | None = None, batch_size: int = 8) -> np.ndarray:
    """Samples of class probabilities, float32 ``(S, L + 1, *spatial)`` on the image's grid.

    Args:
        models: `segqc.user_models.SegModel` list; ``mc_dropout`` and ``tta`` use the first,
            ``ensemble`` one pass of each (at least two).
        image: ``(C, *spatial)`` float32, the case's image as read.
        source: ``mc_dropout``, ``tta`` or ``ensemble``.
        n_samples: passes for ``mc_dropout`` / ``tta`` (ignored for ``ensemble``).
        rng: draws the TTA parameters and the dropout seed (deterministic by default).
        batch_size: passes per network call (memory): exactly that many for ``mc_dropout``,
            at least that many otherwise (`sample_probabilities_many`).
    """
    return sample_probabilities_many(models, [image], source=source, n_samples=n_samples, rngs=[rng],
                                     batch_size=batch_size)[0]


def sample_probabilities_many(models: list, images: list[np.ndarray], *, source: str, n_samples: int = 8,
                              rngs: list[np.random.Generator | None] | None = None,
                              batch_size: int = 8) -> list[np.ndarray]:
    """`sample_probabilities` of several images, each with its own ``rng`` (None: seed 0).

    TTA and ensemble passes of all the images share network calls (inputs of one size; as many
    passes per call as `segqc.nets.batching.MAX_ELEMENTS` input values allow, at least
    ``batch_size``), and an image's samples do not depend on the others. MC dropout runs image
    by image in calls of ``batch_size`` passes: torch draws the dropout masks of a whole call
    from one generator, so an image's masks would otherwise depend on its neighbours in the call.
    """
    source = look_up_option(source, SOURCES, "sampling source")
    if not models:
        raise ValueError("sampling needs at least one segmentation model")
    rngs = [r if r is not None else np.random.default_rng(0) for r in (rngs or [None] * len(images))]
    if source == "ensemble":
        if len(models) < 2:
            raise ValueError(f"a deep ensemble needs at least 2 models, got {len(models)}")
        per_model = [_ensemble_member(m, images, batch_size) for m in models]
        return [np.concatenate(s) for s in zip(*per_model)]
    if source == "mc_dropout":
        return [_mc_dropout(models[0], im, n_samples, r, batch_size) for im, r in zip(images, rngs)]
    return _tta(models[0], images, n_samples, rngs, batch_size)


def _logits_rows(model, rows: list, batch_size: int) -> list:
    """The model's logits ``(1, K, *size)`` of each single-pass input ``(1, C, *size)``, in few calls."""
    from segqc.nets.batching import forward_grouped

    return forward_grouped(model.logits, rows, min_rows=batch_size)


def _ensemble_member(model, images: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """One pass of ``model`` per image: ``(1, L + 1, *spatial)`` probabilities each."""
    logits = _logits_rows(model, [model.prepare(im) for im in images], batch_size)
    return [model.to_proba(lg, im.shape[1:]) for lg, im in zip(logits, images)]


def _mc_dropout(model, image: np.ndarray, n_samples: int, rng: np.random.Generator, batch_size: int) -> np.ndarray:
    if not model.supports_dropout:
        raise ValueError(f"MC dropout needs dropout layers; {model!r} has none (use tta or ensemble)")
    x = model.prepare(image)
    out = []
    ctx = _seeded(int(rng.integers(1 << 31)), model.device)
    try:
        for start in range(0, n_samples, batch_size):
            b = min(batch_size, n_samples - start)
            logits = model.logits(x.expand(b, *x.shape[1:]).contiguous(), dropout=True)
            out.append(model.to_proba(logits, tuple(image.shape[1:])))
    finally:
        ctx.__exit__(None, None, None)
    return np.concatenate(out)


def _tta(model, images: list[np.ndarray], n_samples: int, rngs: list[np.random.Generator],
         batch_size: int) -> list[np.ndarray]:
    import torch

    xs = [model.prepare(im) for im in images]
    transforms = [tta_transforms(n_samples, x.ndim - 2, r) for x, r in zip(xs, rngs)]
    # each image's passes are augmented alone (the intensity jitter scales by the image's own std)
    logits = iter(_logits_rows(model, [t.forward(x) for x, ts in zip(xs, transforms) for t in ts], batch_size))
    return [model.to_proba(torch.cat([t.inverse(next(logits)) for t in ts]), tuple(im.shape[1:]))
            for im, ts in zip(images, transforms)]


# ----------------------------------------------------------------------------- aggregation


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy of a Bernoulli(p) in bits, in [0, 1]."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _sizes(shape: tuple[int, ...], band: int | None, patch: int | None) -> tuple[int, int]:
    side = min(shape[-2:])  # in-plane size: 3D volumes are often thin along Z
    return (band if band is not None else max(1, int(round(0.02 * side))),
            patch if patch is not None else max(3, int(round(side / 8))))


def aggregate(samples: np.ndarray, candidate: np.ndarray, channel_labels, *, band: int | None = None,
              patch: int | None = None) -> dict[str, dict[int, float]]:
    """Every aggregation of ``samples`` (S, L + 1, *spatial) for each label of ``channel_labels[1:]``.

    ``channel_labels[j]`` is the label value of probability channel ``j`` (channel 0 = background);
    ``candidate`` is the label mask being judged. ``band`` (boundary band half-width) and ``patch``
    (window side) are in voxels, by default 2 % and 1/8 of the in-plane image side.
    Returns ``{aggregation: {label: quality in [0, 1]}}``; ``pairwise_dice`` is NaN with one sample.
    """
    samples = np.asarray(samples, np.float32)
    if samples.ndim != candidate.ndim + 2 or samples.shape[2:] != candidate.shape:
        raise ValueError(f"samples {samples.shape} do not match the candidate {candidate.shape}: "
                         "expected (S, L + 1, *candidate.shape)")
    band, patch = _sizes(candidate.shape, band, patch)
    mean = samples.mean(0)
    hard_mean = mean.argmax(0)
    hard = samples.argmax(1)
    out: dict[str, dict[int, float]] = {a: {} for a in AGGREGATIONS}
    st = ndimage.generate_binary_structure(candidate.ndim, 1)
    for j, k in enumerate(list(channel_labels)[1:], start=1):
        k = int(k)
        p = mean[j]
        h = binary_entropy(p)
        mi = np.clip(h - binary_entropy(samples[:, j]).mean(0), 0, 1)
        cand = candidate == k
        mm = hard_mean == j
        masks = hard == j
        w = np.maximum(p, cand)  # the foreground of either opinion
        any_fg = mm | cand | masks.any(0)
        roi = ndimage.binary_dilation(any_fg, st, iterations=band) if any_fg.any() else any_fg
        edge = (ndimage.binary_dilation(mm, st, iterations=band) & ~ndimage.binary_erosion(mm, st, iterations=band)
                if mm.any() else np.zeros_like(mm))
        inner = roi & ~edge
        conf_patch = ndimage.uniform_filter(1 - h, size=patch, mode="nearest")
        wsum = float(w.sum())
        out["mean_entropy"][k] = float(1 - h.mean())
        out["foreground_entropy"][k] = float(1 - (h * w).sum() / wsum) if wsum > 0 else 1.0
        out["boundary_excluded_entropy"][k] = float(1 - h[inner].mean()) if inner.any() else 1.0
        out["patch_min_confidence"][k] = float(conf_patch[roi].min() if roi.any() else conf_patch.min())
        out["mutual_information"][k] = float(1 - (mi * w).sum() / wsum) if wsum > 0 else 1.0
        pairs = list(combinations(range(len(masks)), 2))
        out["pairwise_dice"][k] = (float(np.mean([binary_dice(masks[a], masks[b]) for a, b in pairs]))
                                   if pairs else float("nan"))
        out["candidate_dice"][k] = binary_dice(cand, mm)
    return out


def uncertainty_maps(samples: np.ndarray, channel_labels) -> dict[str, np.ndarray]:
    """Voxel-wise maps on the samples' grid: ``entropy`` and ``mutual_information`` (normalised to
    [0, 1] by log(L + 1)), ``variance`` (largest over channels of the samples' variance, × 4 so a
    50/50 split of binary samples is 1) and ``pgt`` (labels of the mean probability's argmax)."""
    samples = np.asarray(samples, np.float32)
    mean = samples.mean(0)
    n_ch = samples.shape[1]

    def ent(p, axis):
        p = np.clip(p, 1e-7, 1.0)
        return -(p * np.log(p)).sum(axis) / np.log(n_ch)

    h = ent(mean, 0)
    mi = np.clip(h - ent(samples, 1).mean(0), 0, 1)
    var = np.clip(4 * samples.var(0).max(0), 0, 1)
    return {"entropy": h.astype(np.float32), "mutual_information": mi.astype(np.float32),
            "variance": var.astype(np.float32), "pgt": to_labels(mean.argmax(0), list(channel_labels)[1:])}
