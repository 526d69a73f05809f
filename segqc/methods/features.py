"""Hand-crafted quality features + gradient boosting (Sunoqrot et al. 2020; Robinson et al. 2018).

For each foreground label of the candidate mask we measure, in physical units:

* shape: volume relative to the reference masks' typical volume, connected components,
  holes, compactness, convexity (solidity), boundary roughness, extent, position,
  contact with the image border, and in 3D slice continuity (gaps, area jumps);
* image–mask agreement: intensity inside vs a ring just outside, the same against the
  reference masks' foreground intensities, boundary gradient strength relative to the
  image's, histogram overlap inside vs ring;
* agreement with segqc's own reference segmenter (`segqc.components.segmenter`, cross-fitted so a
  training case is never judged by a network that saw it): Dice and soft Dice with its
  probability map, probability inside / just outside the candidate, missed and extra
  volume, HD95 in mm. Its argmax is also returned as a pseudo ground truth, and
  |candidate − probability| as an error map.

A LightGBM regressor maps them to the label's Dice. It is trained on realistic bad
masks (`segqc.data.corrupt`) of the reference cases, plus any user-supplied predictions.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from segqc.components.booster import booster_from_text
from segqc.data.case import Case
from segqc.data.labels import to_index, to_labels
from segqc.methods.base import (
    FitContext,
    Param,
    QCMethod,
    RawScore,
    TrainingPair,
    make_training_pairs,
    non_negative,
    positive,
)
from segqc.metrics import binary_dice

__all__ = ["FeatureRegressor", "mask_features"]


def _ring(m: np.ndarray, width: int) -> np.ndarray:
    return ndimage.binary_dilation(m, iterations=width) & ~m


def _solidity_2d(m: np.ndarray) -> float:
    from skimage.morphology import convex_hull_image

    if m.sum() < 3:
        return 1.0
    try:
        return float(m.sum() / max(convex_hull_image(m).sum(), 1))
    except (ValueError, RuntimeError):  # degenerate (collinear) shapes
        return 1.0


def _boundary_count(m: np.ndarray) -> int:
    return int((m ^ ndimage.binary_erosion(m)).sum())


def _shape_features(m: np.ndarray, spacing: tuple[float, ...], ref_volume: float) -> dict[str, float]:
    ndim = m.ndim
    voxel = float(np.prod(spacing))
    n = int(m.sum())
    f: dict[str, float] = {"empty": float(n == 0)}
    vol = n * voxel
    f["log_volume_ratio"] = float(np.log((vol + voxel) / (ref_volume + voxel)))
    f["volume_fraction"] = n / m.size
    if n == 0:
        return f
    lab, ncomp = ndimage.label(m)
    sizes = np.bincount(lab.ravel())[1:]
    f["n_components"] = float(ncomp)
    f["largest_component_fraction"] = float(sizes.max() / n)
    filled = ndimage.binary_fill_holes(m) if ndim == 2 else np.stack([ndimage.binary_fill_holes(s) for s in m])
    f["hole_fraction"] = float((filled.sum() - n) / max(filled.sum(), 1))
    boundary = _boundary_count(m)
    mean_sp = float(np.mean(spacing))
    if ndim == 2:
        perim = boundary * mean_sp
        f["compactness"] = float(4 * np.pi * vol / max(perim**2, 1e-6))
        f["solidity"] = _solidity_2d(m)
    else:
        area = boundary * mean_sp**2
        f["compactness"] = float(36 * np.pi * vol**2 / max(area**3, 1e-6))
        zs = [z for z in range(m.shape[0]) if m[z].any()]
        sol = [_solidity_2d(m[z]) for z in zs[:: max(1, len(zs) // 8)]]
        f["solidity"] = float(np.mean(sol))
        areas = m.sum(axis=(1, 2)).astype(float)
        span = areas[zs[0]: zs[-1] + 1]
        f["slice_gap_fraction"] = float(np.mean(span == 0))
        f["slice_area_jump"] = float(np.mean(np.abs(np.diff(span))) / max(span.mean(), 1)) if len(span) > 1 else 0.0
        f["z_extent_fraction"] = len(span) / m.shape[0]
    smooth = ndimage.gaussian_filter(m.astype(np.float32), sigma=2.0) > 0.5
    f["roughness"] = float(boundary / max(_boundary_count(smooth), 1))
    idx = np.argwhere(m)
    lo, hi = idx.min(0), idx.max(0)
    f["extent"] = float(n / np.prod(hi - lo + 1))
    centre = idx.mean(0) / np.array(m.shape)
    for i, c in enumerate(centre):
        f[f"centroid_{i}"] = float(c)
    border = np.zeros_like(m)
    for ax in range(ndim):
        sl = [slice(None)] * ndim
        sl[ax] = 0
        border[tuple(sl)] = True
        sl[ax] = -1
        border[tuple(sl)] = True
    f["border_contact"] = float((m & border).sum() / max(boundary, 1))
    return f


def _image_features(img: np.ndarray, m: np.ndarray, spacing, ref_stats: dict) -> dict[str, float]:
    """img (C, ...) float; m bool; ref_stats per channel: mean/std of reference foreground and image."""
    f: dict[str, float] = {}
    n = int(m.sum())
    if n == 0:
        return f
    # ring width ~15 % of the structure's equivalent radius, in voxels, at least 2
    radius = (n / np.pi) ** 0.5 if m.ndim == 2 else (3 * n / (4 * np.pi)) ** (1 / 3)
    ring = _ring(m, max(2, int(round(0.15 * radius))))
    edge = m ^ ndimage.binary_erosion(m)
    channels = list(range(img.shape[0]))
    if img.shape[0] > 1:
        channels.append(-1)  # grey (channel mean) too
    for c in channels:
        x = img.mean(0) if c == -1 else img[c]
        name = "grey" if c == -1 else f"c{c}"
        st = ref_stats[str(c)]
        scale = st["img_std"] + 1e-6
        inside, outside = x[m], x[ring] if ring.any() else x[~m]
        mi, mo = float(inside.mean()), float(outside.mean()) if outside.size else float(x.mean())
        si, so = float(inside.std()), float(outside.std()) if outside.size else 0.0
        f[f"{name}_in_mean"] = (mi - st["img_mean"]) / scale
        f[f"{name}_ring_mean"] = (mo - st["img_mean"]) / scale
        f[f"{name}_contrast"] = (mi - mo) / (0.5 * (si + so) + 1e-3 * scale)
        f[f"{name}_in_std"] = si / scale
        f[f"{name}_ring_std"] = so / scale
        f[f"{name}_in_vs_ref_fg"] = (mi - st["fg_mean"]) / (st["fg_std"] + 1e-6)
        f[f"{name}_ring_vs_ref_fg"] = (mo - st["fg_mean"]) / (st["fg_std"] + 1e-6)
        f[f"{name}_ring_vs_ref_bg"] = (mo - st["ring_mean"]) / (st["ring_std"] + 1e-6)
        # histogram overlap of inside vs ring: well separated = a real edge was followed
        if outside.size:
            lo, hi = np.percentile(x, [1, 99])
            bins = np.linspace(lo, hi + 1e-6, 17)
            hi_, _ = np.histogram(inside, bins)
            ho_, _ = np.histogram(outside, bins)
            f[f"{name}_hist_overlap"] = float(np.minimum(hi_ / max(hi_.sum(), 1), ho_ / max(ho_.sum(), 1)).sum())
    grey = img.mean(0)
    grad = ndimage.gaussian_gradient_magnitude(grey, sigma=1.0)
    ref_grad = ref_stats["grad_mean"] + 1e-6
    f["edge_gradient"] = float(grad[edge].mean() / ref_grad)
    f["edge_gradient_vs_image"] = float(grad[edge].mean() / (grad.mean() + 1e-6))
    f["edge_gradient_vs_ref_edges"] = float(grad[edge].mean() / (ref_stats["edge_grad_mean"] + 1e-6))
    return f


def _agreement_features(m: np.ndarray, proba: np.ndarray, channel: int, spacing) -> dict[str, float]:
    """Candidate label mask ``m`` vs the segmenter's probabilities ``proba`` (L+1, ...) of its ``channel``."""
    from segqc.metrics import binary_hd95

    p = proba[channel]
    seg = proba.argmax(0) == channel
    n, ps = int(m.sum()), float(p.sum())
    f = {"seg_dice": binary_dice(m, seg),
         "seg_soft_dice": float(2 * (p * m).sum() / max(n + ps, 1e-6)) if n + ps > 0 else 1.0,
         "seg_log_volume_ratio": float(np.log((ps + 1) / (n + 1))),
         "seg_empty": float(not seg.any())}
    if n:
        ring = _ring(m, 3)
        f["seg_p_inside"] = float(p[m].mean())
        f["seg_p_ring"] = float(p[ring].mean()) if ring.any() else 0.0
        f["seg_frac_inside_low"] = float((p[m] < 0.5).mean())
    if seg.any():
        f["seg_frac_missed"] = float((seg & ~m).sum() / seg.sum())
        f["seg_confidence"] = float(p[seg].mean())
    if n and seg.any():
        f["seg_hd95"] = binary_hd95(m, seg, spacing)
    union = m | seg
    if union.any():
        # how unsure the segmenter itself is where the two opinions could differ
        f["seg_uncertainty"] = float((4 * p[union] * (1 - p[union])).mean())
    return f


def mask_features(case: Case, label: int, ref_stats: dict, proba: np.ndarray | None = None) -> dict[str, float]:
    """All features of one label of ``case.mask`` (a dict of floats; missing = NaN for the booster)."""
    m = case.mask == label
    f = {"label": float(label), "n_labels": float(len(ref_stats["labels"]))}
    lbl = ref_stats["labels"][str(label)]
    f.update(_shape_features(m, case.spacing, lbl["volume_median"]))
    f["log_volume_vs_ref_iqr"] = float(
        (np.log(m.sum() * np.prod(case.spacing) + 1) - lbl["log_volume_mean"]) / (lbl["log_volume_std"] + 1e-3))
    f.update(_image_features(case.image, m, case.spacing, ref_stats["channels"][str(label)]))
    if len(ref_stats["labels"]) > 1:
        # multi-label: how much of this label touches the other labels, relative to the references
        others = (case.mask > 0) & ~m
        f["contact_other_labels"] = float((ndimage.binary_dilation(m) & others).sum() / max(m.sum(), 1))
    if proba is not None:
        # the segmenter's channels follow the plan's label order, as ref_stats["labels"] does
        channel = 1 + list(ref_stats["labels"]).index(str(label))
        f.update(_agreement_features(m, proba, channel, case.spacing))
    return f


def reference_stats(cases: list[Case], labels: list[int], rng: np.random.Generator) -> dict:
    """Typical volumes and intensities of the expert masks: what 'normal' means for this dataset."""
    out: dict = {"labels": {}, "channels": {}}
    for k in labels:
        vols = np.array([(c.mask == k).sum() * np.prod(c.spacing) for c in cases], float)
        logs = np.log(vols + 1)
        out["labels"][str(k)] = {"volume_median": float(np.median(vols)), "log_volume_mean": float(logs.mean()),
                                 "log_volume_std": float(logs.std())}
        per_channel: dict[str, dict] = {}
        n_ch = cases[0].image.shape[0]
        chans = list(range(n_ch)) + ([-1] if n_ch > 1 else [])
        acc = {c: {"fg": [], "ring": [], "img": []} for c in chans}
        grads, edge_grads = [], []
        for case in cases:
            m = case.mask == k
            ring = _ring(m, 3) if m.any() else ~m
            for c in chans:
                x = case.image.mean(0) if c == -1 else case.image[c]
                for key, sel in (("fg", m), ("ring", ring), ("img", np.ones_like(m))):
                    v = x[sel]
                    if v.size:
                        acc[c][key].append(rng.choice(v, size=min(v.size, 2000), replace=False))
            g = ndimage.gaussian_gradient_magnitude(case.image.mean(0), sigma=1.0)
            grads.append(float(g.mean()))
            if m.any():
                edge_grads.append(float(g[m ^ ndimage.binary_erosion(m)].mean()))
        for c in chans:
            st = {}
            for key in ("fg", "ring", "img"):
                v = np.concatenate(acc[c][key]) if acc[c][key] else np.zeros(1)
                st[f"{key}_mean"], st[f"{key}_std"] = float(v.mean()), float(v.std())
            per_channel[str(c)] = st
        per_channel["grad_mean"] = float(np.mean(grads))
        per_channel["edge_grad_mean"] = float(np.mean(edge_grads)) if edge_grads else 1.0
        out["channels"][str(k)] = per_channel
    return out


class FeatureRegressor(QCMethod):
    """Shape + image–mask features → LightGBM → Dice per label.

    Parameters: ``pairs_per_case`` bad masks per reference case; ``n_estimators``,
    ``learning_rate``, ``num_leaves``, ``n_jobs`` (threads): LightGBM's; ``segmenter``: add
    agreement features with segqc's cross-fitted segmenter (``ctx.segmenter`` when `fit` gets
    one, else trained here with ``segmenter_epochs`` / ``segmenter_minutes``).
    """

    name = "features"
    params = {
        "pairs_per_case": Param(12, check=non_negative, doc="bad masks generated per reference case"),
        "n_estimators": Param(400, check=positive),
        "learning_rate": Param(0.03, check=positive),
        "num_leaves": Param(15, check=positive),
        "n_jobs": Param(2, doc="LightGBM threads"),
        "segmenter": Param(True, doc="agreement features with segqc's cross-fitted segmenter"),
        "segmenter_epochs": Param(40, check=positive),
        "segmenter_minutes": Param(10.0, check=positive),
        "fold_scoring": Param(False, doc="score against each fold network alone and average the predictions, as "
                                         "training pairs are measured against their one out-of-fold network "
                                         "(off: the folds' average, a better opinion; on hippocampus fold scoring "
                                         "lost accuracy)"),
    }
    # a LightGBM model (saved as its own text format) and the segmenter (its own state)
    custom_state = ("model_", "segmenter_")

    # -- fitting -----------------------------------------------------------------------
    def _fit(self, reference: list[Case], ctx: FitContext) -> None:
        """Learn Dice from bad masks of ``reference`` plus ``ctx.pairs``."""
        import lightgbm as lgb

        plan, rng = self.plan_, ctx.rng
        self.ref_stats_ = reference_stats(reference, self.labels_, rng)
        probas: dict[str, np.ndarray] = {}
        if self.segmenter:
            from segqc.components.segmenter import CrossFittedSegmenter
            from segqc.plan.preprocess import invert_map, preprocess

            ms = [preprocess(c, plan) for c in reference]
            segmenter = ctx.segmenter
            if segmenter is None:
                segmenter = CrossFittedSegmenter(epochs=self.segmenter_epochs, max_minutes=self.segmenter_minutes,
                                                 device=self.device_)
                segmenter.fit([(im, to_index(mk, self.labels_)) for im, mk, _ in ms], len(self.labels_), rng,
                              progress=ctx.progress, case_ids=[c.case_id for c in reference])
            self.segmenter_ = segmenter
            # each reference case is judged by the network that did not see it
            for c, (im, _, props) in zip(reference, ms):
                probas[c.case_id] = invert_map(segmenter.predict_proba(im, case_id=c.case_id), props)
        pairs = make_training_pairs(reference, rng, self.pairs_per_case, ctx.pairs)
        X, y = self._table(pairs, probas, ctx.progress)
        self.feature_names_ = sorted({k for row in X for k in row})
        A = self._matrix(X)
        self.model_ = lgb.LGBMRegressor(n_estimators=self.n_estimators, learning_rate=self.learning_rate,
                                        num_leaves=self.num_leaves, min_child_samples=10, subsample=0.8,
                                        subsample_freq=1, colsample_bytree=0.8, n_jobs=self.n_jobs,
                                        random_state=int(rng.integers(1 << 31)), verbose=-1)
        self.model_.fit(A, np.asarray(y))
        self.n_train_ = len(y)

    def segmenter_proba(self, case: Case) -> np.ndarray | None:
        """segqc's reference segmenter on the case's image (all folds averaged): class probabilities."""
        if not self.segmenter:
            return None
        return self._on_image(case, "mean", lambda image_ms: [self.segmenter_.predict_proba(image_ms)])[0]

    def segmenter_members(self, case: Case) -> list[np.ndarray]:
        """Each fold network of the reference segmenter on the case's image, alone: class probabilities."""
        return self._on_image(case, "members", self.segmenter_.predict_members)

    def _on_image(self, case: Case, what: str, predict) -> list[np.ndarray]:
        """``predict(image_ms)``'s probability maps brought to the case's grid; an image already seen is not
        run again (the candidates of one image — checkpoints of a batch, pairs of a reference case — share it)."""
        from segqc.components.image_cache import ImageCache
        from segqc.plan.preprocess import invert_map, preprocess

        def compute():
            image_ms, _, props = preprocess(case.with_mask(None), self.plan_)
            return [invert_map(p, props) for p in predict(image_ms)]

        cache = getattr(self, "_image_cache", None)
        if cache is None or cache[0] is not self.segmenter_:  # answers of this segmenter only
            cache = self._image_cache = (self.segmenter_, ImageCache())
        return cache[1].get(case.image, case.spacing, compute, tag=what)

    def _table(self, pairs: list[TrainingPair], probas: dict, progress) -> tuple[list[dict], list[float]]:
        X, y = [], []
        for i, p in enumerate(pairs):
            proba = None
            if self.segmenter:
                # a reference case's out-of-fold probabilities, whichever candidate of it this is;
                # pairs of cases the segmenter never saw get every fold's average
                proba = probas.get(p.reference_id)
                if proba is None:
                    proba = probas[p.reference_id] = self.segmenter_proba(p.reference)
            X += [mask_features(p.case, k, self.ref_stats_, proba) for k in self.labels_]
            y += p.true_dice(self.labels_).tolist()
            if (i + 1) % 100 == 0 or i + 1 == len(pairs):
                progress(f"{self.name}: measured {i + 1}/{len(pairs)} training pairs")
        return X, y

    def _matrix(self, rows: list[dict]) -> np.ndarray:
        return np.array([[r.get(k, np.nan) for k in self.feature_names_] for r in rows], dtype=np.float64)

    # -- scoring -----------------------------------------------------------------------
    def _score_case(self, case: Case) -> RawScore:
        if self.segmenter and self.fold_scoring:
            # each fold network is, for a new case, what a training pair's out-of-fold network was for it
            members = self.segmenter_members(case)
            proba = np.mean(members, axis=0)
            pred = np.mean([self._predict(case, p) for p in members], axis=0)
        else:
            proba = self.segmenter_proba(case)
            pred = self._predict(case, proba)
        maps = {}
        if proba is not None:
            cand = to_index(case.mask, self.labels_)
            # error map: probability that the candidate's label at a voxel is wrong
            err = 1.0 - np.take_along_axis(proba, cand[None].astype(np.int64), 0)[0]
            maps = {"pgt": to_labels(proba.argmax(0), self.labels_), "error": err.astype(np.float32)}
        return RawScore(dice={k: float(v) for k, v in zip(self.labels_, pred)}, maps=maps)

    def _predict(self, case: Case, proba: np.ndarray | None) -> np.ndarray:
        rows = [mask_features(case, k, self.ref_stats_, proba) for k in self.labels_]
        return np.clip(self.model_.predict(self._matrix(rows)), 0.0, 1.0)

    # -- persistence: the booster as LightGBM text (plain data, never unpickled), the segmenter its own way
    def _dump_custom(self, key: str) -> tuple[dict[str, np.ndarray], object]:
        if key == "model_":
            return {}, self.model_.booster_.model_to_string()
        return self.segmenter_.state()

    def _load_custom(self, key: str, arrays: dict[str, np.ndarray], doc) -> None:
        if key == "model_":
            self.model_ = booster_from_text(doc)
        elif key == "segmenter_":
            from segqc.components.segmenter import CrossFittedSegmenter

            self.segmenter_ = CrossFittedSegmenter.from_state(arrays, doc, device=self.device_)
        else:
            super()._load_custom(key, arrays, doc)

    def _after_load(self) -> None:
        if not hasattr(self, "model_"):
            raise ValueError("features: no booster was saved")
        if self.model_.booster_.num_feature() != len(self.feature_names_):
            raise ValueError(f"features: the booster takes {self.model_.booster_.num_feature()} features, the state "
                             f"names {len(self.feature_names_)}")
        if self.segmenter and not hasattr(self, "segmenter_"):
            raise ValueError("features: 'segmenter' is on but no segmenter state was saved")
