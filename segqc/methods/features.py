"""Hand-crafted quality features + gradient boosting (Sunoqrot et al. 2020; Robinson et al. 2018).

Each foreground label of the candidate mask is measured (`segqc.components.quality_features`):
its shape, how it sits on the image, and how it agrees with segqc's own reference segmenter
(`segqc.components.segmenter`, cross-fitted so a training case is never judged by a network
that saw it). A LightGBM regressor maps them to the label's Dice. It is trained on realistic
bad masks (`segqc.data.corrupt`) of the reference cases, plus model-made ones (the
segmenter's snapshots, outsider networks, the user's model).
The segmenter's argmax is also returned as a pseudo ground truth, and the probability that
the candidate's label is wrong at each voxel as an error map.
"""

from __future__ import annotations

import numpy as np

from segqc.components import segmenter as segmenter_defaults
from segqc.components.booster import booster_from_text
from segqc.components.quality_features import mask_features, measure_candidates, reference_stats
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

__all__ = ["FeatureRegressor"]


class FeatureRegressor(QCMethod):
    """Shape + image–mask features → LightGBM → Dice per label.

    Parameters: ``pairs_per_case`` bad masks per reference case; ``n_estimators``,
    ``learning_rate``, ``num_leaves``: LightGBM's; ``n_jobs``: LightGBM's threads and the processes
    that measure many candidates at once (`measure_candidates`); ``segmenter``: add
    agreement features with segqc's cross-fitted segmenter (``ctx.segmenter`` when `fit` gets
    one, else trained here with ``segmenter_epochs`` / ``segmenter_minutes``).
    """

    name = "features"
    params = {
        "pairs_per_case": Param(12, check=non_negative, doc="bad masks generated per reference case"),
        "n_estimators": Param(400, check=positive),
        "learning_rate": Param(0.03, check=positive),
        "num_leaves": Param(15, check=positive),
        "n_jobs": Param(2, doc="LightGBM threads and feature-measuring worker processes (-1: every core)"),
        "segmenter": Param(True, doc="agreement features with segqc's cross-fitted segmenter"),
        "segmenter_epochs": Param(segmenter_defaults.EPOCHS, check=positive),
        "segmenter_minutes": Param(segmenter_defaults.MAX_MINUTES, check=positive),
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

        cache = getattr(self, "_image_cache", None)
        if cache is None or cache[0] is not self.segmenter_:  # answers of this segmenter only
            cache = self._image_cache = (self.segmenter_, ImageCache())
        return cache[1].get(case.image, case.spacing, lambda: self._on_grid(case, predict), tag=what)

    def _on_grid(self, case: Case, predict) -> list[np.ndarray]:
        """``predict(image_ms)``'s probability maps of the case's image, brought back to the case's grid."""
        from segqc.plan.preprocess import invert_map, preprocess

        image_ms, _, props = preprocess(case.with_mask(None), self.plan_)
        return [invert_map(p, props) for p in predict(image_ms)]

    def _table(self, pairs: list[TrainingPair], probas: dict, progress) -> tuple[list[dict], list[float]]:
        jobs = []
        for p in pairs:
            proba = None
            if self.segmenter:
                # a reference case's out-of-fold probabilities, whichever candidate of it this is
                proba = probas.get(p.image_id)
                if proba is None:
                    proba = probas[p.image_id] = self._judge(p.reference)
            jobs.append((p.case, proba))
        step = max(100, len(pairs) // 20)
        reported = [0]

        def measured(done: int) -> None:
            if done - reported[0] >= step or done == len(pairs):
                reported[0] = done
                progress(f"{self.name}: measured {done}/{len(pairs)} training pairs")

        rows = measure_candidates(jobs, self.labels_, self.ref_stats_, self.n_jobs, measured)
        X = [r for case_rows in rows for r in case_rows]
        y = [d for p in pairs for d in p.true_dice(self.labels_).tolist()]
        return X, y

    def _judge(self, reference: Case) -> np.ndarray:
        """The segmenter's opinion of a training pair's image, from the network(s) that never saw the case:
        a simulated site's copy of a fitting case is judged by that case's out-of-fold network, on its own
        pixels; a case the segmenter never saw, by every fold. Not cached: each image is judged once per fit."""
        return self._on_grid(reference, lambda image_ms: [
            self.segmenter_.predict_proba(image_ms, case_id=reference.case_id)])[0]

    def _matrix(self, rows: list[dict]) -> np.ndarray:
        return np.array([[r.get(k, np.nan) for k in self.feature_names_] for r in rows], dtype=np.float64)

    # -- scoring -----------------------------------------------------------------------
    def _score_cases(self, cases: list[Case]) -> list[RawScore]:
        if self.segmenter and self.fold_scoring:
            return [self._score_by_folds(c) for c in cases]
        probas = [self.segmenter_proba(c) for c in cases]  # one segmenter pass per image (cached)
        rows = measure_candidates(list(zip(cases, probas)), self.labels_, self.ref_stats_, self.n_jobs)
        n = len(self.labels_)
        preds = self._predict_rows([r for case_rows in rows for r in case_rows]).reshape(len(cases), n)
        return [self._raw_score(c, p, pred, _described(r)) for c, p, pred, r in zip(cases, probas, preds, rows)]

    def score_against(self, case: Case, proba: np.ndarray) -> RawScore:
        """The candidate's raw score and descriptors against a judge given as class probabilities on the case's
        grid, in place of the segmenter's: e.g. one fold network's mask judged by the other folds
        (`benchmarks/sibling_pairs.py`)."""
        rows = [mask_features(case, k, self.ref_stats_, proba) for k in self.labels_]
        return self._raw_score(case, proba, self._predict_rows(rows), _described(rows))

    def _score_by_folds(self, case: Case) -> RawScore:
        # each fold network is, for a new case, what a training pair's out-of-fold network was for it
        members = self.segmenter_members(case)
        pred = np.mean([self._predict(case, p) for p in members], axis=0)
        return self._raw_score(case, np.mean(members, axis=0), pred)

    def _raw_score(self, case: Case, proba: np.ndarray | None, pred: np.ndarray,
                   described: dict[str, float] | None = None) -> RawScore:
        maps = {}
        if proba is not None:
            cand = to_index(case.mask, self.labels_)
            # error map: probability that the candidate's label at a voxel is wrong
            err = 1.0 - np.take_along_axis(proba, cand[None].astype(np.int64), 0)[0]
            maps = {"pgt": to_labels(proba.argmax(0), self.labels_), "error": err.astype(np.float32)}
        return RawScore(dice={k: float(v) for k, v in zip(self.labels_, pred)}, maps=maps, features=described or {})

    def _predict(self, case: Case, proba: np.ndarray | None) -> np.ndarray:
        return self._predict_rows([mask_features(case, k, self.ref_stats_, proba) for k in self.labels_])

    def _predict_rows(self, rows: list[dict]) -> np.ndarray:
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


def _described(rows: list[dict]) -> dict[str, float]:
    """A candidate's measured features, averaged over its labels: what it looks like to the regressor,
    for the batch correction (`segqc.calibration.batch_correction`) as the raw score is the labels' mean."""
    import warnings

    names = sorted({k for r in rows for k in r})
    values = np.array([[float(r[k]) if r.get(k) is not None else np.nan for k in names] for r in rows], float)
    with warnings.catch_warnings():  # a feature no label has is NaN, said so by the value itself
        warnings.simplefilter("ignore", RuntimeWarning)
        return dict(zip(names, np.nanmean(values, axis=0).tolist()))
