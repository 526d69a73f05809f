"""Reverse classification accuracy, atlas version (Valindria et al. 2017; Robinson et al. 2018, 2019).

The reference cases, whose expert masks are known, serve as atlases. For a new image:

1. the ``k`` atlases whose downsampled images look most like it (Pearson correlation of
   small thumbnails) are chosen;
2. each is registered to the new image with SimpleITK (`segqc.components.registration`: rigid /
   affine, then B-spline, Mattes mutual information; 2D or 3D; RGB through its
   luminance) and its expert mask warped onto the new image;
3. the candidate is compared with every warped mask on the ORIGINAL grid: the
   predicted Dice of a label is the best agreement over the atlases (RCA's rule: if the
   candidate is good, at least one similar reference should agree with it), HD95 (mm)
   is measured against that best atlas; the majority vote of the warped masks is a
   pseudo ground truth, and the share of atlases disagreeing with the candidate at each
   voxel its error map.

The mean, spread and vote-based agreement and the registration quality (final mutual
information, correlation after warping, thumbnail similarity) are returned as features
for calibration and fusion; `segqc fit` calibrates the raw score (isotonic) on held-out
reference cases like every other method.

Design choices, and why:

* Atlases live in the plan's model space with the padding cut away (in-plane spacing
  of the plan, the slice axis untouched; photos resized to fit ``S × S``): small enough
  to store every reference case in the bundle (Kvasir ~40 kB, hippocampus ~0.2 MB per
  atlas: luminance in float16, mask as uint8 label indices), and registration at that
  resolution stays within seconds. ``max_atlases`` caps the count (a seeded random
  subset).
* Registration depends only on the image, never on the candidate: the warped masks of
  the last ``cache_size`` images are kept in memory, so judging many candidates of one
  image (several models, checkpoints, calibration pairs) registers it once.
* Atlases are registered in parallel threads (SimpleITK releases the GIL), each with one
  ITK thread: on 2 cores this was ~3× faster than one registration at a time with 2
  ITK threads.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from segqc.data.case import Case
from segqc.data.labels import to_index, to_labels
from segqc.methods.base import QCMethod, RawScore, check_is_fitted, check_labels
from segqc.metrics import binary_dice, binary_hd95
from segqc.utils import look_up_option

__all__ = ["RCA", "luminance"]

AGGREGATES = ("max", "mean", "vote")
# Rec. 601 luma weights: one channel that keeps the structure of an RGB photo
# images whose warped atlases are also kept on the original grid (consecutive candidates
# of one image, e.g. calibration pairs, then skip the inverse resampling)
_RECENT = 4
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luminance(image: np.ndarray, modality: str) -> np.ndarray:
    """One registration channel from ``(C, ...)``: luma for RGB, else the first channel."""
    if modality == "RGB" and image.shape[0] == 3:
        return np.tensordot(_LUMA, image, axes=1).astype(np.float32)
    return np.asarray(image[0], dtype=np.float32)


def _unpad(x: np.ndarray, props: dict) -> np.ndarray:
    """Cut the model-space padding off the last two axes (what is left is real image)."""
    S = props["slice_size"]
    (b0, a0), (b1, a1) = props["pad"]
    return x[..., b0:S - a0, b1:S - a1]


def _to_original(warped: np.ndarray, props: dict, n_labels: int) -> np.ndarray:
    """Label-index maps ``(k, [Z,] h, w)`` of the unpadded model space → ``(k, *original_shape)`` uint8.

    The inverse of `segqc.plan.preprocess.preprocess` for a whole stack at once (what
    `invert_mask` does for one mask: un-crop with background, each label's indicator
    resampled linearly, antialiased, then argmax with ties to the lower label), with the
    argmax done in numpy: one pass instead of k, and no slow torch channel reduction.
    """
    from segqc.plan.preprocess import resize_inplane

    k = warped.shape[0]
    x = warped.reshape(-1, *warped.shape[-2:])
    h, w = props["resampled_shape"]
    (c0, c1), (d0, d1) = props["crop"]
    if (c0, c1, d0, d1) != (0, h, 0, w):
        full = np.zeros((x.shape[0], h, w), dtype=x.dtype)
        full[:, c0:c1, d0:d1] = x
        x = full
    orig = tuple(props["original_shape"])
    if (h, w) == orig[-2:]:
        return np.ascontiguousarray(x.reshape(k, *orig).astype(np.uint8))
    best = resize_inplane((x == 0).astype(np.float32), orig[-2:], mode="linear", antialias=True)
    out = np.zeros(best.shape, dtype=np.uint8)
    for i in range(1, n_labels + 1):
        p = resize_inplane((x == i).astype(np.float32), orig[-2:], mode="linear", antialias=True)
        better = p > best
        out[better], best[better] = i, p[better]
    return out.reshape(k, *orig)


def _thumbnail(lum: np.ndarray, side: int) -> np.ndarray:
    """Fixed-size, z-scored block average of a ``(Y, X)`` / ``(Z, Y, X)`` image, flattened."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(lum, dtype=np.float32))[None, None]
    if lum.ndim == 2:
        out = F.adaptive_avg_pool2d(t, (side, side))
    else:
        out = F.adaptive_avg_pool3d(t, (max(2, side // 2),) * 3)
    v = out.numpy().ravel().astype(np.float64)
    return ((v - v.mean()) / max(v.std(), 1e-8)).astype(np.float32)


def _to_atlas_space(image_ms: np.ndarray, props: dict, modality: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """Model-space image ``(C, Z, S, S)`` → luminance ``(Y, X)`` / ``(Z, Y, X)`` without padding, spacing (mm)."""
    lum = _unpad(luminance(image_ms, modality), props)
    spacing = tuple(float(s) for s in props["model_spacing"])
    if props["ndim"] == 2:
        lum, spacing = lum[0], spacing[1:]
    return np.ascontiguousarray(lum), spacing


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


class RCA(QCMethod):
    """Atlas-based reverse classification accuracy: register references, warp their masks, compare.

    Args:
        k: atlases registered per new image (the most similar ones).
        stages: registration stages in order, from ``rigid``, ``affine``, ``bspline``.
        iterations: optimiser iterations per stage (one int for all stages).
        shrink: multi-resolution shrink factors, coarse to fine.
        bins: Mattes mutual-information histogram bins.
        samples: voxels sampled (random, seeded) by the metric at full resolution: a count,
            not a fraction, so 2D photos and 3D volumes cost alike (4000 ≈ 25 % of a
            128 × 110 photo, 6 % of a 35 × 51 × 35 hippocampus crop).
        mesh: B-spline control-grid cells per axis.
        bspline_shrink: pyramid of the B-spline stage (None: ``shrink``); ``(2,)`` stops it
            at half resolution, several times faster in 3D.
        aggregate: raw Dice per label: ``max`` over atlases (RCA), ``mean`` over atlases,
            or ``vote`` (Dice with the majority-vote pseudo ground truth).
        max_atlases: cap on stored atlases (a random subset of the reference cases).
        thumb: thumbnail side used to choose atlases (``thumb²`` in 2D, ``(thumb/2)³`` in 3D).
        n_jobs: atlases registered at once (threads).
        itk_threads: ITK threads per registration; ``n_jobs × itk_threads`` ≈ CPU cores.
        cache_size: images whose warped atlases are kept in memory (0 = no cache).
        seed: seed of the atlas subset and of the metric sampling; None draws from
            ``fit``'s rng.
    """

    name = "rca"

    def __init__(self, *, k: int = 10, stages: tuple[str, ...] = ("affine", "bspline"),
                 iterations: tuple[int, ...] | int = (50, 20), shrink: tuple[int, ...] = (2, 1), bins: int = 32,
                 samples: int = 4000, mesh: int = 4, bspline_shrink: tuple[int, ...] | None = None,
                 aggregate: str = "max", max_atlases: int = 500,
                 thumb: int = 32, n_jobs: int = 2, itk_threads: int = 1, cache_size: int = 256,
                 seed: int | None = None):
        self.k = k
        self.stages = stages
        self.iterations = iterations
        self.shrink = shrink
        self.bins = bins
        self.samples = samples
        self.mesh = mesh
        self.bspline_shrink = bspline_shrink
        self.aggregate = aggregate
        self.max_atlases = max_atlases
        self.thumb = thumb
        self.n_jobs = n_jobs
        self.itk_threads = itk_threads
        self.cache_size = cache_size
        self.seed = seed

    # -- fitting -----------------------------------------------------------------------
    def _validate_params(self) -> None:
        from segqc.components.registration import STAGES

        for name in ("k", "bins", "samples", "mesh", "max_atlases", "thumb", "n_jobs", "itk_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if int(self.cache_size) != self.cache_size or self.cache_size < 0:
            raise ValueError(f"cache_size must be an integer ≥ 0, got {self.cache_size!r}")
        stages = [self.stages] if isinstance(self.stages, str) else list(self.stages)
        if not stages:
            raise ValueError("stages must name at least one of rigid, affine, bspline, got ()")
        for s in stages:
            look_up_option(s, STAGES, "registration stage")
        its = [self.iterations] if np.isscalar(self.iterations) else list(self.iterations)
        if len(its) not in (1, len(stages)) or any(int(i) != i or i < 1 for i in its):
            raise ValueError(f"iterations must be one positive int or one per stage {stages}, got {self.iterations!r}")
        for name in ("shrink", "bspline_shrink"):
            v = getattr(self, name)
            if (v is not None or name == "shrink") and (not v or any(int(s) != s or s < 1 for s in v)):
                raise ValueError(f"{name} must be positive integers, got {v!r}")
        look_up_option(self.aggregate, AGGREGATES, "aggregate")

    def _stage_iterations(self) -> tuple[list[str], list[int]]:
        stages = [self.stages] if isinstance(self.stages, str) else [str(s) for s in self.stages]
        its = [self.iterations] if np.isscalar(self.iterations) else list(self.iterations)
        its = its * len(stages) if len(its) == 1 else its
        return stages, [int(i) for i in its]

    def fit(self, cases: list[Case], plan, rng: np.random.Generator, extra_pairs: list[Case] | None = None,
            progress=None) -> RCA:
        """Store the reference cases (image luminance + expert mask in model space) as atlases.

        ``extra_pairs`` are ignored: an atlas needs an expert mask, not a candidate.
        ``progress(msg)`` gets one summary line.
        """
        from segqc.plan.preprocess import preprocess

        self._validate_params()
        labels = sorted(int(k) for k in plan.labels)
        if not labels:
            raise ValueError("the plan has no foreground labels; RCA needs labelled atlases")
        if len(labels) >= 255:
            raise ValueError(f"RCA stores masks as uint8 label indices: at most 254 labels, got {len(labels)}")
        cases = [c.load() if not isinstance(c, Case) and hasattr(c, "load") else c for c in cases]
        cases = [c for c in cases if c.mask is not None]
        if not cases:
            raise ValueError("fit needs at least one reference case with an expert mask")
        seed = int(rng.integers(2**31)) if self.seed is None else int(self.seed)
        pick = np.arange(len(cases))
        if len(cases) > self.max_atlases:
            pick = np.sort(np.random.default_rng(seed).choice(len(cases), int(self.max_atlases), replace=False))
        images, masks, spacings, ids = [], [], [], []
        for i in pick:
            case = cases[int(i)]
            check_labels(case.mask, labels, f"expert mask of {case.case_id}")
            im, mk, props = preprocess(case, plan)
            lum, spacing = _to_atlas_space(im, props, plan.modality)
            images.append(lum.astype(np.float16))
            masks.append(to_index(_unpad(mk, props), labels).reshape(lum.shape))
            spacings.append(spacing)
            ids.append(case.case_id)
        self.labels_ = labels
        self.plan_ = plan
        self.seed_ = seed
        self._set_atlases(images, masks, spacings, ids)
        if progress is not None:
            mb = sum(a.nbytes + m.nbytes for a, m in zip(images, masks)) / 2**20
            progress(f"rca: {len(images)} atlases stored ({mb:.1f} MB)")
        return self


    def _set_atlases(self, images, masks, spacings, ids) -> None:
        self.atlas_images_ = list(images)
        self.atlas_masks_ = list(masks)
        self.atlas_spacings_ = [tuple(float(v) for v in s) for s in spacings]
        self.atlas_ids_ = list(ids)
        # thumbnails are cheap to rebuild, so the bundle does not store them
        self.thumbs_ = np.stack([_thumbnail(a.astype(np.float32), int(self.thumb)) for a in self.atlas_images_])
        self._cache: OrderedDict = OrderedDict()
        self._recent: list[dict] = []

    # -- registration ------------------------------------------------------------------
    def _register_all(self, fixed: np.ndarray, spacing: tuple[float, ...]) -> dict:
        """Register the k most similar atlases to ``fixed``; their warped masks (label indices)."""
        from segqc.components.registration import register, warp_image, warp_labels

        sims = self.thumbs_ @ _thumbnail(fixed, int(self.thumb)) / self.thumbs_.shape[1]
        order = np.argsort(-sims, kind="stable")[: min(int(self.k), len(sims))]
        stages, its = self._stage_iterations()
        n_lab = len(self.labels_)

        def one(j: int):
            mov = self.atlas_images_[j].astype(np.float32)
            sp = self.atlas_spacings_[j]
            tx, metric = register(fixed, mov, spacing, sp, stages=stages, iterations=its, shrink=self.shrink,
                                  bins=self.bins, sampling=min(1.0, self.samples / fixed.size), mesh=self.mesh,
                                  bspline_shrink=self.bspline_shrink, threads=self.itk_threads, seed=self.seed_)
            warped = warp_labels(self.atlas_masks_[j], sp, tx, fixed.shape, spacing, range(1, n_lab + 1))
            ncc = _ncc(fixed, warp_image(mov, sp, tx, fixed.shape, spacing, default=float(mov.min())))
            return warped, metric, ncc

        if int(self.n_jobs) > 1 and len(order) > 1:
            with ThreadPoolExecutor(int(self.n_jobs)) as ex:
                results = list(ex.map(one, order.tolist()))
        else:
            results = [one(j) for j in order.tolist()]
        return {"atlases": order, "similarity": sims[order], "warped": np.stack([r[0] for r in results]),
                "metric": np.array([r[1] for r in results]), "ncc": np.array([r[2] for r in results])}

    def warped_atlases(self, case: Case) -> tuple[dict, dict]:
        """The k warped atlas masks of ``case``'s image (model space, label indices) and the props.

        Results are cached by image content, so a second candidate of the same image costs
        only the comparison.
        """
        from segqc.plan.preprocess import preprocess

        check_is_fitted(self)
        im, _, props = preprocess(case.with_mask(None), self.plan_)
        fixed, spacing = _to_atlas_space(im, props, self.plan_.modality)
        # the original shape too: the cached masks are also kept on the original grid
        tag = f"{fixed.shape}{props['original_shape']}{props['crop']}".encode()
        key = hashlib.blake2b(fixed.tobytes() + np.asarray(spacing).tobytes() + tag, digest_size=16).hexdigest()
        cache = getattr(self, "_cache", None)
        if cache is None:
            cache = self._cache = OrderedDict()
        if key in cache:
            cache.move_to_end(key)
            return cache[key], props
        t0 = time.perf_counter()
        res = self._register_all(fixed, spacing)
        res["seconds"] = time.perf_counter() - t0
        if self.cache_size:
            cache[key] = res
            while len(cache) > int(self.cache_size):
                cache.popitem(last=False)
        return res, props

    # -- scoring -----------------------------------------------------------------------
    def _score_case(self, case: Case) -> RawScore:
        """Best Dice per label over the warped atlases (``aggregate``), HD95 (mm) against the best one.

        Dice follows `segqc.metrics` (both empty → 1, one empty → 0: never NaN, also for
        an empty candidate); HD95 is NaN when exactly one of the candidate and the best
        atlas is empty for that label. Maps (original grid): ``pgt`` the majority vote of
        the warped atlas masks (ties → the lower label), ``error`` float32 in [0, 1], the
        share of atlases whose label differs from the candidate's. Features:
        ``dice_max_<k>``, ``dice_mean_<k>``, ``dice_std_<k>``, ``dice_vote_<k>``,
        ``reg_metric_best`` / ``reg_metric_mean`` (Mattes MI, lower = better aligned),
        ``ncc_best`` / ``ncc_mean`` (image correlation after warping), ``similarity_top``
        (thumbnail correlation of the most similar atlas), ``n_atlases`` and
        ``register_seconds``.
        """
        res, props = self.warped_atlases(case)
        n_lab = len(self.labels_)
        if "original" not in res:  # label indices on the original grid, (k, *case.shape)
            res["original"] = _to_original(res["warped"], props, n_lab)
            self._recent.append(res)  # only the last few images keep this (large) copy
            while len(self._recent) > _RECENT:
                self._recent.pop(0).pop("original", None)
        warped = res["original"]
        counts = np.stack([(warped == i).sum(0) for i in range(n_lab + 1)])
        vote = counts.argmax(0)  # ties → lower index (background first)
        cand = case.mask
        cand_idx = to_index(cand, self.labels_)
        dice, hd, feats = {}, {}, {}
        per_atlas = np.zeros((len(warped), n_lab))
        for i, k in enumerate(self.labels_, start=1):
            c = cand_idx == i
            d = np.array([binary_dice(c, w == i) for w in warped])
            per_atlas[:, i - 1] = d
            d_vote = float(binary_dice(c, vote == i))
            best = int(np.argmax(d))
            dice[k] = {"max": float(d.max()), "mean": float(d.mean()), "vote": d_vote}[self.aggregate]
            hd[k] = float(binary_hd95(c, warped[best] == i, case.spacing))
            feats.update({f"dice_max_{k}": float(d.max()), f"dice_mean_{k}": float(d.mean()),
                          f"dice_std_{k}": float(d.std()), f"dice_vote_{k}": d_vote})
        best_atlas = int(np.argmax(per_atlas.mean(1)))
        feats.update({"reg_metric_best": float(res["metric"][best_atlas]),
                      "reg_metric_mean": float(np.nanmean(res["metric"])) if np.isfinite(res["metric"]).any()
                      else float("nan"),
                      "ncc_best": float(res["ncc"][best_atlas]), "ncc_mean": float(res["ncc"].mean()),
                      "similarity_top": float(res["similarity"][0]), "n_atlases": float(len(warped)),
                      "register_seconds": float(res["seconds"])})
        error = (warped != cand_idx[None]).mean(0).astype(np.float32)
        pgt = to_labels(vote, self.labels_).astype(cand.dtype if cand.dtype.kind in "iu" else np.int32)
        return RawScore(dice=dice, hd95=hd, maps={"pgt": pgt, "error": error}, features=feats)

    # -- persistence -------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Atlases as two flat arrays (float16 luminance, uint8 label indices) + their shapes."""
        check_is_fitted(self)
        arrays = {"atlas_images": np.concatenate([a.ravel() for a in self.atlas_images_]),
                  "atlas_masks": np.concatenate([m.ravel() for m in self.atlas_masks_])}
        params = self.get_params()
        for key in ("stages", "shrink", "bspline_shrink"):
            if params[key] is not None:
                params[key] = [params[key]] if isinstance(params[key], str) else list(params[key])
        if not np.isscalar(params["iterations"]):
            params["iterations"] = [int(i) for i in params["iterations"]]
        config = {"params": params, "labels_": self.labels_, "plan_": self.plan_.to_dict(), "seed_": self.seed_,
                  "atlas_shapes_": [list(a.shape) for a in self.atlas_images_],
                  "atlas_spacings_": [list(s) for s in self.atlas_spacings_], "atlas_ids_": self.atlas_ids_}
        return arrays, config

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict) -> RCA:
        from segqc.plan.fingerprint import Plan

        params = dict(config["params"])
        for key in ("stages", "shrink", "bspline_shrink"):
            if params.get(key) is not None:
                params[key] = tuple(params[key])
        if not np.isscalar(params["iterations"]):
            params["iterations"] = tuple(params["iterations"])
        m = cls(**params)
        m.labels_ = [int(k) for k in config["labels_"]]
        m.plan_ = Plan.from_dict(config["plan_"])
        m.seed_ = int(config["seed_"])
        shapes = [tuple(s) for s in config["atlas_shapes_"]]
        sizes = [int(np.prod(s)) for s in shapes]
        flat_i, flat_m = np.asarray(arrays["atlas_images"]), np.asarray(arrays["atlas_masks"])
        if flat_i.size != sum(sizes) or flat_m.size != sum(sizes):
            raise ValueError(f"rca state holds {flat_i.size} image / {flat_m.size} mask voxels, the atlas shapes "
                             f"need {sum(sizes)}")
        cuts = np.cumsum([0] + sizes)
        images = [flat_i[a:b].astype(np.float16).reshape(s) for a, b, s in zip(cuts[:-1], cuts[1:], shapes)]
        masks = [flat_m[a:b].astype(np.uint8).reshape(s) for a, b, s in zip(cuts[:-1], cuts[1:], shapes)]
        m._set_atlases(images, masks, config["atlas_spacings_"], config["atlas_ids_"])
        return m
