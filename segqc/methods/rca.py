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

from segqc.components.pgt_scoring import hd95_or_diagonal
from segqc.data.case import Case
from segqc.data.labels import to_index, to_labels
from segqc.methods.base import (
    FitContext,
    Param,
    QCMethod,
    RawScore,
    check_is_fitted,
    check_labels,
    non_negative,
    positive,
)
from segqc.metrics import binary_dice
from segqc.utils import look_up_option

__all__ = ["RCA", "luminance"]

AGGREGATES = ("max", "mean", "vote")
# images whose warped atlases are also kept on the original grid (consecutive candidates
# of one image, e.g. calibration pairs, then skip the inverse resampling)
_RECENT = 4
# Rec. 601 luma weights: one channel that keeps the structure of an RGB photo
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


def _to_original(warped: np.ndarray, props: dict) -> np.ndarray:
    """Label-index maps ``(k, [Z,] h, w)`` of the unpadded model space → ``(k, *original_shape)``.

    Padded back to ``(k, Z, S, S)`` (the padding is cut off again) for `invert_masks`,
    which inverts the whole stack in one resampling call.
    """
    from segqc.plan.preprocess import invert_masks

    x = warped.reshape(warped.shape[0], props["n_slices"], *warped.shape[-2:])
    return invert_masks(np.pad(x, [(0, 0), (0, 0), *props["pad"]]), props)


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


def _positive_ints(v) -> str | None:
    ok = v and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in v)
    return None if ok else "must be positive integers"


class RCA(QCMethod):
    """Atlas-based reverse classification accuracy: register references, warp their masks, compare.

    Fitted state: the atlases as two flat arrays (``atlas_images_`` float16 luminance,
    ``atlas_masks_`` uint8 label indices) cut by ``atlas_shapes_``, with their spacings
    and ids; thumbnails are cheap to rebuild, so the bundle does not store them.
    """

    name = "rca"
    params = {
        "k": Param(10, check=positive, doc="atlases registered per new image (the most similar ones)"),
        "stages": Param(("affine", "bspline"), kind=(tuple, str),
                        doc="registration stages in order, from rigid, affine, bspline"),
        "iterations": Param((50, 20), kind=(tuple, int), doc="optimiser iterations per stage (one int for all)"),
        "shrink": Param((2, 1), check=_positive_ints, doc="multi-resolution shrink factors, coarse to fine"),
        "bins": Param(32, check=positive, doc="Mattes mutual-information histogram bins"),
        "samples": Param(4000, check=positive,
                         doc="voxels sampled (random, seeded) by the metric at full resolution: a count, not a "
                             "fraction, so 2D photos and 3D volumes cost alike (4000 ≈ 25 % of a 128 × 110 "
                             "photo, 6 % of a 35 × 51 × 35 hippocampus crop)"),
        "mesh": Param(4, check=positive, doc="B-spline control-grid cells per axis"),
        "bspline_shrink": Param(None, kind=tuple, check=_positive_ints,
                                doc="pyramid of the B-spline stage (None: shrink); (2,) stops it at half "
                                    "resolution, several times faster in 3D"),
        "aggregate": Param("max", doc="raw Dice per label: max over atlases (RCA), mean over atlases, or vote "
                                      "(Dice with the majority-vote pseudo ground truth)"),
        "max_atlases": Param(500, check=positive, doc="cap on stored atlases (a random subset of the references)"),
        "thumb": Param(32, check=positive, doc="thumbnail side used to choose atlases (thumb² in 2D, (thumb/2)³ "
                                               "in 3D)"),
        "n_jobs": Param(2, check=positive, doc="atlases registered at once (threads)"),
        "itk_threads": Param(1, check=positive, doc="ITK threads per registration; n_jobs × itk_threads ≈ cores"),
        "cache_size": Param(256, check=non_negative, doc="images whose warped atlases are kept in memory (0: none)"),
        "seed": Param(None, kind=int, doc="seed of the atlas subset and of the metric sampling; None draws from "
                                          "fit's rng"),
    }

    # -- fitting -----------------------------------------------------------------------
    def _validate_params(self) -> None:
        from segqc.components.registration import STAGES

        stages = [self.stages] if isinstance(self.stages, str) else list(self.stages)
        if not stages:
            raise ValueError("stages must name at least one of rigid, affine, bspline, got ()")
        for s in stages:
            look_up_option(s, STAGES, "registration stage")
        its = [self.iterations] if isinstance(self.iterations, int) else list(self.iterations)
        if len(its) not in (1, len(stages)) or _positive_ints(its):
            raise ValueError(f"iterations must be one positive int or one per stage {stages}, got {self.iterations!r}")
        look_up_option(self.aggregate, AGGREGATES, "aggregate")

    def _stage_iterations(self) -> tuple[list[str], list[int]]:
        stages = [self.stages] if isinstance(self.stages, str) else [str(s) for s in self.stages]
        its = [self.iterations] if np.isscalar(self.iterations) else list(self.iterations)
        its = its * len(stages) if len(its) == 1 else its
        return stages, [int(i) for i in its]

    def _fit(self, reference: list[Case], ctx: FitContext) -> None:
        """Store the reference cases (image luminance + expert mask in model space) as atlases.

        ``ctx.pairs`` are ignored: an atlas needs an expert mask, not a candidate.
        """
        from segqc.plan.preprocess import preprocess

        # label indices follow the sorted labels, whatever the plan's order (ties in the vote go to the lower)
        labels = sorted(self.labels_)
        if not labels:
            raise ValueError("the plan has no foreground labels; RCA needs labelled atlases")
        if len(labels) >= 255:
            raise ValueError(f"RCA stores masks as uint8 label indices: at most 254 labels, got {len(labels)}")
        cases = [c for c in reference if c.mask is not None]
        if not cases:
            raise ValueError("fit needs at least one reference case with an expert mask")
        seed = int(ctx.rng.integers(2**31)) if self.seed is None else int(self.seed)
        pick = np.arange(len(cases))
        if len(cases) > self.max_atlases:
            pick = np.sort(np.random.default_rng(seed).choice(len(cases), int(self.max_atlases), replace=False))
        images, masks, spacings, ids = [], [], [], []
        for i in pick:
            case = cases[int(i)]
            check_labels(case.mask, labels, f"expert mask of {case.case_id}")
            im, mk, props = preprocess(case, self.plan_)
            lum, spacing = _to_atlas_space(im, props, self.plan_.modality)
            images.append(lum.astype(np.float16))
            masks.append(to_index(_unpad(mk, props), labels).reshape(lum.shape))
            spacings.append(list(spacing))
            ids.append(case.case_id)
        self.labels_, self.seed_ = labels, seed
        self.atlas_images_ = np.concatenate([a.ravel() for a in images])
        self.atlas_masks_ = np.concatenate([m.ravel() for m in masks]).astype(np.uint8, copy=False)
        self.atlas_shapes_ = [list(a.shape) for a in images]
        self.atlas_spacings_, self.atlas_ids_ = spacings, ids
        self._after_load()
        mb = (self.atlas_images_.nbytes + self.atlas_masks_.nbytes) / 2**20
        ctx.progress(f"rca: {len(images)} atlases stored ({mb:.1f} MB)")

    def _after_load(self) -> None:
        """Per-atlas views of the flat arrays (their sizes checked against the shapes), thumbnails, caches."""
        self.atlas_images_ = np.asarray(self.atlas_images_, dtype=np.float16)
        self.atlas_masks_ = np.asarray(self.atlas_masks_, dtype=np.uint8)
        shapes = [tuple(int(v) for v in s) for s in self.atlas_shapes_]
        sizes = [int(np.prod(s)) for s in shapes]
        if self.atlas_images_.size != sum(sizes) or self.atlas_masks_.size != sum(sizes):
            raise ValueError(f"rca state holds {self.atlas_images_.size} image / {self.atlas_masks_.size} mask "
                             f"voxels, the atlas shapes need {sum(sizes)}")
        cuts = np.cumsum([0] + sizes)
        self._images = [self.atlas_images_[a:b].reshape(s) for a, b, s in zip(cuts[:-1], cuts[1:], shapes)]
        self._masks = [self.atlas_masks_[a:b].reshape(s) for a, b, s in zip(cuts[:-1], cuts[1:], shapes)]
        self._thumbs = np.stack([_thumbnail(a.astype(np.float32), int(self.thumb)) for a in self._images])
        self._cache: OrderedDict = OrderedDict()
        self._recent: list[dict] = []

    # -- registration ------------------------------------------------------------------
    def _register_all(self, fixed: np.ndarray, spacing: tuple[float, ...]) -> dict:
        """Register the k most similar atlases to ``fixed``; their warped masks (label indices)."""
        from segqc.components.registration import register, warp_image, warp_labels

        sims = self._thumbs @ _thumbnail(fixed, int(self.thumb)) / self._thumbs.shape[1]
        order = np.argsort(-sims, kind="stable")[: min(int(self.k), len(sims))]
        stages, its = self._stage_iterations()
        n_lab = len(self.labels_)

        def one(j: int):
            mov = self._images[j].astype(np.float32)
            sp = tuple(float(v) for v in self.atlas_spacings_[j])
            tx, metric = register(fixed, mov, spacing, sp, stages=stages, iterations=its, shrink=self.shrink,
                                  bins=self.bins, sampling=min(1.0, self.samples / fixed.size), mesh=self.mesh,
                                  bspline_shrink=self.bspline_shrink, threads=self.itk_threads, seed=self.seed_)
            warped = warp_labels(self._masks[j], sp, tx, fixed.shape, spacing, range(1, n_lab + 1))
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
        cache = self._cache
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
        an empty candidate); HD95 follows `segqc.components.pgt_scoring` (the image
        diagonal when exactly one of the candidate and the best atlas is empty for that
        label). Maps (original grid): ``pgt`` the majority vote of the warped atlas masks
        (ties → the lower label), ``error`` float32 in [0, 1], the share of atlases whose
        label differs from the candidate's. Features: ``dice_max_<k>``, ``dice_mean_<k>``,
        ``dice_std_<k>``, ``dice_vote_<k>``, ``reg_metric_best`` / ``reg_metric_mean``
        (Mattes MI, lower = better aligned), ``ncc_best`` / ``ncc_mean`` (image correlation
        after warping), ``similarity_top`` (thumbnail correlation of the most similar
        atlas), ``n_atlases`` and ``register_seconds``.
        """
        res, props = self.warped_atlases(case)
        n_lab = len(self.labels_)
        if "original" not in res:  # label indices on the original grid, (k, *case.shape)
            res["original"] = _to_original(res["warped"], props)
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
            hd[k] = hd95_or_diagonal(c, warped[best] == i, case.spacing)
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
