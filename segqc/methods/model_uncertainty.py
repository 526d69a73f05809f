"""QC from the segmentation model's own uncertainty: MC dropout, TTA, deep ensembles (`segqc.components.uncertainty`).

The method samples the user's model(s) on the case's image, aggregates the samples per label
(entropies, patch confidence, mutual information, pairwise Dice of the samples, Dice of the
candidate with the samples' mean) and either reports one aggregation as the raw score or
(``aggregation="learned"``, the default) maps all of them, from every available source, to
Dice with gradient boosting, trained on reference cases: the model's own prediction on each
reference case plus realistic bad masks (`segqc.data.corrupt`), against the expert masks.

The model is never saved in the bundle: it is referred to by path, kind and sha256
(`segqc.user_models.model_ref`), reopened when the bundle is used, and can be replaced at predict
time (``segqc predict --model``). Caveat: a model's predictions on the cases it was trained on
are better than on new cases; if the reference cases are its training cases, the learned map
sees few failures of the model itself (the bad masks make up for part of that).
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from segqc.components.uncertainty import AGGREGATIONS, SOURCES, aggregate, sample_probabilities_many, uncertainty_maps
from segqc.data.case import Case
from segqc.data.labels import to_index
from segqc.methods.base import (
    FitContext,
    Param,
    QCMethod,
    RawScore,
    TrainingPair,
    check_labels,
    make_training_pairs,
    non_negative,
    positive,
)
from segqc.utils import look_up_option, torch_threads

__all__ = ["ModelUncertainty"]


class ModelUncertainty(QCMethod):
    """Uncertainty of the segmentation model → Dice per label.

    Parameters:
        sources: ``auto`` (every usable one: MC dropout if the first model has dropout layers,
            TTA, an ensemble if two or more models are given) or a comma-separated subset of
            ``mc_dropout,tta,ensemble``.
        aggregation: ``learned`` (gradient boosting on every source × aggregation) or
            ``<source>:<aggregation>``, e.g. ``ensemble:pairwise_dice``, used as the raw score.
        n_samples: passes per case for MC dropout and TTA.
        pairs_per_case: bad masks per reference case for the learned map.
        n_estimators, learning_rate, num_leaves, n_jobs: LightGBM parameters.
        n_threads: torch CPU threads while sampling.
        seed: TTA parameters and dropout masks (the same for every case, so scores are repeatable).

    The models reopened from a bundle run on the loader's device (``device_``).
    """

    name = "model_uncertainty"
    needs_model = True
    params = {
        "sources": Param("auto"),
        "aggregation": Param("learned"),
        "n_samples": Param(8, check=positive),
        "pairs_per_case": Param(4, check=non_negative),
        "n_estimators": Param(300, check=positive),
        "learning_rate": Param(0.05, check=positive),
        "num_leaves": Param(15, check=positive),
        "n_jobs": Param(1, doc="LightGBM threads"),
        "n_threads": Param(1, check=positive, doc="torch CPU threads while sampling (None: leave as is)"),
        "seed": Param(0, check=non_negative),
    }
    custom_state = ("model_",)  # the LightGBM model, as its own text format (data, not code)

    def _validate_params(self) -> None:
        if self.sources != "auto":
            for s in str(self.sources).split(","):
                look_up_option(s.strip(), SOURCES, "sampling source")
        self._single()

    # -- models ------------------------------------------------------------------------
    def use_models(self, models) -> None:
        """Use these `SegModel` s (first = the one that made the candidates; others = ensemble partners)."""
        if not models:
            raise ValueError(f"{self.name} needs the segmentation model: pass --model PATH (repeat for an ensemble)")
        self._models = list(models)
        self._cache = None

    def _get_models(self) -> list:
        if getattr(self, "_models", None) is None:
            from segqc.user_models import models_from_refs

            if not getattr(self, "model_refs_", None):
                raise ValueError(f"{self.name} has no segmentation model; pass it with --model")
            self._models = models_from_refs(self.model_refs_, device=self.device_)
        return self._models

    def _resolve_sources(self, models) -> list[str]:
        if self.sources == "auto":
            out = (["mc_dropout"] if models[0].supports_dropout else []) + ["tta"]
            return out + (["ensemble"] if len(models) > 1 else [])
        out = [look_up_option(s.strip(), SOURCES, "sampling source") for s in str(self.sources).split(",")]
        if "ensemble" in out and len(models) < 2:
            raise ValueError(f"source 'ensemble' needs at least 2 models, got {len(models)}")
        return out

    def _single(self) -> tuple[str, str] | None:
        if self.aggregation == "learned":
            return None
        if ":" not in str(self.aggregation):
            raise ValueError(f"aggregation must be 'learned' or '<source>:<aggregation>', got {self.aggregation!r}")
        src, agg = str(self.aggregation).split(":", 1)
        return look_up_option(src, SOURCES, "sampling source"), look_up_option(agg, AGGREGATIONS, "aggregation")

    # -- sampling + features -----------------------------------------------------------
    def samples(self, case: Case) -> dict[str, np.ndarray]:
        """``{source: (S, L + 1, *spatial) probabilities}`` for the case's image (cached for its last image)."""
        return self._samples_many([case])[0]

    def _samples_many(self, cases: list[Case]) -> list[dict[str, np.ndarray]]:
        """`samples` of several cases: each image once, all of them in the same network calls per source."""
        # keyed on the pixels, not the id: every candidate of one image shares its samples
        keys = [(c.image.shape, hashlib.blake2b(np.ascontiguousarray(c.image).tobytes(), digest_size=16).digest())
                for c in cases]
        known = dict([self._cache]) if getattr(self, "_cache", None) is not None else {}
        todo = {k: c.image for k, c in zip(keys, cases) if k not in known}
        if todo:
            known |= self._sample_images(todo)
        self._cache = (keys[-1], known[keys[-1]])
        return [known[k] for k in keys]

    def _sample_images(self, images: dict) -> dict:
        """``{key: {source: samples}}`` of ``{key: image}``; every image with the same seeded rng (repeatable)."""
        models = self._get_models()
        out: dict = {k: {} for k in images}
        seconds = {}
        with torch_threads(self.n_threads):
            for src in self.sources_:
                t0 = time.perf_counter()
                probs = sample_probabilities_many(models, list(images.values()), source=src, n_samples=self.n_samples,
                                                  rngs=[np.random.default_rng(self.seed) for _ in images])
                for k, p in zip(images, probs):
                    out[k][src] = p
                seconds[src] = (time.perf_counter() - t0) / len(images)
        self._last_seconds = seconds
        return out

    @property
    def last_seconds(self) -> dict[str, float]:
        """Sampling time per source and image, in seconds, of the last images sampled together (benchmarks)."""
        return dict(getattr(self, "_last_seconds", {}))

    def case_features(self, case: Case, samples: dict[str, np.ndarray] | None = None) -> dict[int, dict[str, float]]:
        """``{label: {"<source>.<aggregation>": quality}}`` for the case's candidate mask."""
        samples = samples if samples is not None else self.samples(case)
        feats: dict[int, dict[str, float]] = {k: {} for k in self.labels_}
        for src, s in samples.items():
            ch = self._get_models()[0].output_labels(s.shape[1])
            for agg, per_label in aggregate(s, case.mask, ch).items():
                for k in self.labels_:
                    feats[k][f"{src}.{agg}"] = per_label.get(k, float("nan"))
        return feats

    def _row(self, feats: dict[str, float], label: int) -> list[float]:
        return [float(label)] + [feats.get(n, np.nan) for n in self.feature_names_[1:]]

    # -- fitting -----------------------------------------------------------------------
    def _fit(self, reference: list[Case], ctx: FitContext) -> None:
        """Learn Dice from the model's uncertainty on ``reference`` (expert masks) and ``ctx.pairs``."""
        self.use_models(ctx.models)
        models = self._models
        self.sources_ = self._resolve_sources(models)
        single = self._single()
        if single and single[0] not in self.sources_:
            raise ValueError(f"aggregation {self.aggregation!r} needs source {single[0]!r}; "
                             f"available: {self.sources_}")
        if single:
            self.sources_ = [single[0]]  # sample only what the score uses
        from segqc.user_models import model_ref

        # in-memory models cannot be saved; `state` then refuses with a clear error
        self.model_refs_ = [model_ref(m) for m in models] if all(m.path for m in models) else []
        self.feature_names_ = ["label"] + [f"{s}.{a}" for s in self.sources_ for a in AGGREGATIONS]
        if single is None:
            self._fit_booster(reference, ctx)
        else:
            self.n_train_ = 0

    def _fit_booster(self, reference: list[Case], ctx: FitContext) -> None:
        import lightgbm as lgb

        model, rng = self._models[0], ctx.rng
        X, y = [], []
        by_id: dict[str, list[TrainingPair]] = {}
        for case in reference:
            own = TrainingPair(case, model.predict_mask(case.image), "user_model")
            by_id.setdefault(case.case_id, []).append(own)
            by_id[case.case_id] += make_training_pairs([case], rng, self.pairs_per_case)
        for p in ctx.pairs:  # grouped by image: a simulated site's copy of a case is sampled on its own pixels
            if p.source == "user_model" and p.image_id in by_id:
                continue  # the model's own prediction on a fit case: already in
            by_id.setdefault(p.image_id, []).append(p)
        for i, pairs in enumerate(by_id.values()):
            s = self.samples(pairs[0].reference)  # one sampling per image, shared by all its candidates
            for p in pairs:
                check_labels(p.candidate, self.labels_)
                feats = self.case_features(p.case, s)
                X += [self._row(feats[k], k) for k in self.labels_]
                y += p.true_dice(self.labels_).tolist()
            if (i + 1) % 10 == 0:
                ctx.progress(f"{self.name}: sampled {i + 1}/{len(by_id)} reference images")
        A, y = np.asarray(X, float), np.asarray(y, float)
        self.model_ = lgb.LGBMRegressor(n_estimators=self.n_estimators, learning_rate=self.learning_rate,
                                        num_leaves=self.num_leaves, min_child_samples=max(2, min(10, len(y) // 8)),
                                        subsample=0.8, subsample_freq=1, n_jobs=self.n_jobs,
                                        random_state=int(rng.integers(1 << 31)), verbose=-1)
        self.model_.fit(A, y)
        self.n_train_ = len(y)

    # -- scoring -----------------------------------------------------------------------
    def _score_cases(self, cases: list[Case]) -> list[RawScore]:
        return [self._score_samples(c, s) for c, s in zip(cases, self._samples_many(cases))]

    def _score_samples(self, case: Case, s: dict[str, np.ndarray]) -> RawScore:
        feats = self.case_features(case, s)
        single = self._single()
        if single is None:
            pred = np.clip(self.model_.predict(np.asarray([self._row(feats[k], k) for k in self.labels_])), 0, 1)
            dice = {k: float(v) for k, v in zip(self.labels_, pred)}
        else:
            name = f"{single[0]}.{single[1]}"
            dice = {k: float(np.nan_to_num(feats[k][name], nan=0.0)) for k in self.labels_}
        # voxel-wise maps from every sample of every source, on the case's own grid
        allsamp = np.concatenate(list(s.values()))
        ch = self._get_models()[0].output_labels(allsamp.shape[1])
        maps = uncertainty_maps(allsamp, ch)
        mean = allsamp.mean(0)
        # a label the model has no channel for counts as background: its error is 1 − p(background)
        cand = to_index(case.mask, ch[1:], strict=False)
        maps["error"] = (1.0 - np.take_along_axis(mean, cand[None].astype(np.int64), 0)[0]).astype(np.float32)
        flat = {f"{n}.{k}": v for k, f in feats.items() for n, v in f.items()}
        return RawScore(dice=dice, maps=maps, features=flat)

    # -- persistence: the model is referred to (model_refs_), never saved -------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The base's state, refused for a model that has no file to refer to."""
        if getattr(self, "model_refs_", None) == []:
            raise ValueError(f"{self.name} was fitted with an in-memory model; save it as a monai / torchscript / "
                             "onnx file and fit with segqc.user_models.load_model(...) to keep it in a bundle")
        return super().state()

    def _dump_custom(self, key: str) -> tuple[dict[str, np.ndarray], str]:
        return {}, self.model_.booster_.model_to_string()

    def _load_custom(self, key: str, arrays: dict[str, np.ndarray], doc) -> None:
        from segqc.components.booster import booster_from_text

        if key != "model_":
            super()._load_custom(key, arrays, doc)
        self.model_ = booster_from_text(doc)
        if self.model_.booster_.num_feature() != len(self.feature_names_):
            raise ValueError(f"{self.name}: the booster takes {self.model_.booster_.num_feature()} features, the "
                             f"state names {len(self.feature_names_)}")

    def _after_load(self) -> None:
        if self._single() is None and not hasattr(self, "model_"):
            raise ValueError(f"{self.name}: aggregation 'learned' but no booster was saved")
