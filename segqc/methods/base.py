"""The one contract every QC method implements.

A method learns, from reference cases with expert masks, to score a candidate mask
without its ground truth. It never reads files and never knows about the CLI::

    method = make_method("features", n_estimators=400)       # parameters, validated here
    method.fit(reference, plan, FitContext(rng=...))         # learned state ends in "_"
    method.score(case)                                       # → RawScore (raw Dice, HD95, maps)
    arrays, config = method.state()                          # saved and rebuilt by the base
    method = Method.from_state(arrays, config, plan)

A method declares its parameters once (``params = {"epochs": Param(60, check=positive)}``)
and implements ``_fit(reference, ctx)`` and ``_score_case`` (or ``_score_cases`` to score a
batch at once). Everything else — validation, the fitted check, the label check, one bad
case of a batch not failing the others, saving and loading — is here, the same for all.

Supervised methods learn from *training pairs* (`TrainingPair`): a candidate mask of a
reference case with that case's expert mask. `make_training_pairs` makes them from the
reference cases with `segqc.data.corrupt`; model-made ones (segqc's reference segmenter,
the user's own model, a manifest) come in ``ctx.pairs``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from segqc.calibration.pool import SYNTHETIC
from segqc.data.case import Case
from segqc.data.labels import unknown_labels
from segqc.methods.params import Param, fraction, non_negative, one_of, positive

__all__ = ["FitContext", "NotFittedError", "Param", "QCMethod", "RawScore", "TrainingPair", "check_is_fitted",
           "check_labels", "make_training_pairs", "one_of", "positive", "non_negative", "fraction"]


class NotFittedError(RuntimeError):
    """Raised when ``score`` is called before ``fit`` (or loading)."""


# ----------------------------------------------------------------------------- fitting inputs


@dataclass(frozen=True, eq=False)
class TrainingPair:
    """A candidate mask of a reference case, with that case's expert mask (its truth).

    Attributes:
        reference: the reference case: image + expert mask (``reference.mask``).
        candidate: a (possibly bad) label mask of the same image, on the same grid.
        source: where the candidate comes from: ``corruption``, ``segmenter:<snapshot>``,
            ``outsider:<architecture>_<final or site>``, ``user_model``, ``manifest``.

    A reference case as a simulated site acquired it (`segqc.data.acquisition`) keeps its
    id and expert mask but not its pixels; ``reference.meta["site"]`` names the site, and
    ``image_id`` tells such an image from the original.
    """

    reference: Case
    candidate: np.ndarray
    source: str = SYNTHETIC

    @property
    def reference_id(self) -> str:
        return self.reference.case_id

    @property
    def image_id(self) -> str:
        """Which image the candidate is of: the reference id, with the simulated site that changed it, if any.
        Pairs with one ``image_id`` share one image (and whatever is computed from its pixels alone)."""
        site = self.reference.meta.get("site")
        return self.reference_id if site is None else f"{self.reference_id}@{site}"

    @property
    def truth(self) -> np.ndarray:
        return self.reference.mask

    @cached_property
    def case(self) -> Case:
        """The candidate as a case to score (its ``truth`` is the expert mask, never shown to a method)."""
        r = self.reference
        meta = {**r.meta, "source": self.source}
        return Case(r.case_id, r.image, self.candidate, r.geometry, truth=r.mask, meta=meta)

    def true_dice(self, labels: Sequence[int]) -> np.ndarray:
        """Dice of the candidate per label (the regression targets)."""
        from segqc.metrics import binary_dice

        return np.array([binary_dice(self.candidate == k, self.truth == k) for k in labels])


def _quiet(msg: str) -> None:
    pass


@dataclass
class FitContext:
    """Everything a method may need to fit besides its own parameters.

    Attributes:
        rng: the method's random generator (its own stream: methods never share one).
        device: ``auto`` (GPU when present), ``cpu``, ``cuda``…
        progress: ``progress(message)`` reports a stage or an epoch.
        pairs: model-made training pairs of the reference cases given to ``fit`` (segqc's
            reference segmenter's snapshots, the user's model, a manifest).
        segmenter: segqc's cross-fitted reference segmenter when one was trained, its folds
            covering the reference cases (`segqc.components.segmenter`).
        models: the user's segmentation model(s) (`segqc.user_models.SegModel`), first the one
            whose masks are judged; only for methods with ``needs_model``.
    """

    rng: np.random.Generator
    device: str = "auto"
    progress: Callable[[str], None] = _quiet
    pairs: Sequence[TrainingPair] = ()
    segmenter: Any = None
    models: Sequence[Any] = ()


def make_training_pairs(cases: Sequence[Case], rng: np.random.Generator, per_case: int,
                        extra_pairs: Sequence[TrainingPair] = (), progress: Callable[[], None] | None = None,
                        ) -> list[TrainingPair]:
    """``per_case`` realistic bad masks of every reference case (`segqc.data.corrupt`), then ``extra_pairs``."""
    from segqc.data.corrupt import sample_corruptions

    pairs = []
    for case in cases:
        for bad, _ in sample_corruptions(case.mask, case.spacing, rng, per_case):
            pairs.append(TrainingPair(case, bad))
        if progress is not None:
            progress()
    return pairs + list(extra_pairs)


# ----------------------------------------------------------------------------- scoring output


@dataclass
class RawScore:
    """What a method says about one candidate before calibration.

    Attributes:
        dice: raw predicted Dice per foreground label (the method's own scale).
        hd95: predicted HD95 in mm per label, when the method can tell (pGT methods).
        maps: optional arrays on the case's ORIGINAL grid, e.g. ``pgt`` (labels) and
            ``error`` (float in [0, 1], where the candidate is likely wrong).
        features: extra numbers a fusion / calibration step may use.
        overall: the case's raw score when it is not the mean of ``dice`` (the fusion's).
    """

    dice: dict[int, float]
    hd95: dict[int, float] | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, float] = field(default_factory=dict)
    overall: float | None = None

    @property
    def mean_dice(self) -> float:
        if self.overall is not None:
            return float(self.overall)
        return float(np.mean(list(self.dice.values()))) if self.dice else float("nan")


def check_is_fitted(method: "QCMethod") -> None:
    """Fitted state ends in ``_`` (sklearn's convention): refuse to score without it."""
    if not any(k.endswith("_") and not k.startswith("__") for k in vars(method)):
        raise NotFittedError(f"{type(method).__name__} is not fitted yet; call fit() or load a bundle first")


def check_labels(mask: np.ndarray | None, labels, what: str = "candidate mask") -> None:
    """Refuse a mask with labels the fitted method has never seen, quoting them."""
    if mask is None:
        raise ValueError(f"the {what} is missing (case.mask is None)")
    unknown = unknown_labels(mask, labels)
    if unknown:
        raise ValueError(f"{what} has label(s) {unknown} unknown to the bundle (labels {list(labels)})")


# ----------------------------------------------------------------------------- the contract


class QCMethod:
    """Base of every QC method: declared parameters, ``fit`` → ``score``, state saved by the base.

    Subclasses set ``name``, ``params`` (and ``needs_model`` when they need the user's
    model) and implement ``_fit`` and ``_score_case`` or ``_score_cases``. Learned state
    ends in ``_``: numpy arrays, torch networks (rebuilt by ``_build_network``) and
    JSON-able values are saved and loaded here; anything else is named in
    ``custom_state`` and handled by ``_dump_custom`` / ``_load_custom``.
    """

    name: ClassVar[str] = "base"
    needs_model: ClassVar[bool] = False
    params: ClassVar[dict[str, Param]] = {}
    custom_state: ClassVar[tuple[str, ...]] = ()
    # runtime attributes, never saved: the plan lives in the bundle, the device is the loader's
    _runtime: ClassVar[tuple[str, ...]] = ("plan_", "device_")

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {unknown}; its parameters are {sorted(self.params)}")
        for key, p in self.params.items():
            setattr(self, key, p.validate(self.name, key, params.get(key, p.default)))
        self._validate_params()

    def _validate_params(self) -> None:
        """Checks that involve several parameters (one parameter's own check is its `Param`)."""

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in self.params}

    @classmethod
    def param_names(cls) -> set[str]:
        return set(cls.params)

    # -- fit -------------------------------------------------------------------------
    def fit(self, reference: Sequence[Case], plan, ctx: FitContext) -> "QCMethod":
        """Learn from reference cases (image + expert mask in ``case.mask``) under ``plan``."""
        from segqc.utils import resolve_device

        reference = list(reference)
        if not reference:
            raise ValueError(f"{self.name}: fit needs at least one reference case")
        if self.needs_model and not ctx.models:
            raise ValueError(f"method {self.name!r} needs the segmentation model: pass --model PATH "
                             "(repeat it for an ensemble)")
        self.plan_ = plan
        self.labels_ = [int(k) for k in plan.labels]
        self.device_ = resolve_device(ctx.device)
        self._fit(reference, ctx)
        return self

    def _fit(self, reference: list[Case], ctx: FitContext) -> None:
        raise NotImplementedError

    # -- score -----------------------------------------------------------------------
    def score(self, case: Case) -> RawScore:
        """The raw score of ``case.mask``.

        Every method's scoring starts here, so a candidate is checked once: an unfitted
        method, or a label the method never learned (a wrong answer otherwise), is an error.
        """
        check_is_fitted(self)
        check_labels(case.mask, self.labels_)
        return self._score_cases([case])[0]

    def score_batch(self, cases: Sequence[Case]) -> list[RawScore | Exception]:
        """`score` of several cases at once (network methods batch their forward passes on a GPU).

        A case that cannot be scored gets its exception in its place, so one bad case of a
        batch never fails the others; the answers are those of `score`, case by case.
        """
        check_is_fitted(self)
        out: list[RawScore | Exception | None] = []
        valid = []
        for case in cases:
            try:
                check_labels(case.mask, self.labels_)
                out.append(None)
                valid.append(case)
            except ValueError as e:
                out.append(e)
        if not valid:
            return out
        try:
            scores = iter(self._score_cases(valid))
        except Exception:  # noqa: BLE001 — find which case it was: score them one by one
            scores = iter([self._try_score(c) for c in valid])
        return [next(scores) if o is None else o for o in out]

    def _score_case(self, case: Case) -> RawScore:
        """The method's own scoring of a candidate that `score` has checked (or override `_score_cases`)."""
        raise NotImplementedError

    def _score_cases(self, cases: list[Case]) -> list[RawScore]:
        """The method's own scoring of checked candidates; override to batch (default: one by one)."""
        return [self._score_case(c) for c in cases]

    def _try_score(self, case: Case) -> RawScore | Exception:
        try:
            return self._score_cases([case])[0]
        except Exception as e:  # noqa: BLE001 — returned in the case's place
            return e

    def use_models(self, models: Sequence) -> None:
        """Give the user's segmentation model(s) to a fitted method that needs them (default: nothing)."""

    # -- state -----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays (saved as safetensors) and a JSON document: parameters and fitted state.

        Every attribute ending in ``_`` is saved: arrays as arrays, networks as their
        weights, JSON-able values as they are, ``custom_state`` by the method itself.
        """
        check_is_fitted(self)
        arrays: dict[str, np.ndarray] = {}
        doc: dict = {"params": _jsonable(self.get_params(), f"{self.name} parameters"),
                     "fitted": {}, "arrays": [], "networks": [], "custom": {}}
        for key, value in vars(self).items():
            if not key.endswith("_") or key.startswith("_") or key in self._runtime:
                continue
            if key in self.custom_state:
                sub, doc["custom"][key] = self._dump_custom(key)
                arrays.update({f"{key}.{k}": v for k, v in sub.items()})
            elif isinstance(value, np.ndarray):
                arrays[key] = value
                doc["arrays"].append(key)
            elif _is_network(value):
                from segqc.nets.weights import net_to_arrays

                arrays.update(net_to_arrays(value, f"{key}."))
                doc["networks"].append(key)
            else:
                doc["fitted"][key] = _jsonable(value, f"{self.name} fitted attribute {key!r}")
        return arrays, doc

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict, plan, device: str = "auto") -> "QCMethod":
        """The fitted method from `state`'s output and the bundle's plan (networks placed on ``device``)."""
        from segqc.nets.weights import load_net_arrays
        from segqc.utils import resolve_device

        m = cls(**config["params"])
        m.plan_, m.device_ = plan, resolve_device(device)
        for key, value in config["fitted"].items():
            setattr(m, key, value)
        for key in config["arrays"]:
            if key not in arrays:
                raise ValueError(f"{cls.name}: the state lists array {key!r} but the arrays do not hold it")
            setattr(m, key, np.asarray(arrays[key]))
        for key, doc in config["custom"].items():
            prefix = f"{key}."
            m._load_custom(key, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}, doc)
        for key in config["networks"]:
            net = load_net_arrays(m._build_network(key), arrays, f"{key}.", f"{cls.name} {key}")
            setattr(m, key, net.to(m.device_).eval())
        m._after_load()
        return m

    def _build_network(self, key: str):
        """An untrained network of attribute ``key``, built from the JSON fitted state (for loading)."""
        raise NotImplementedError(f"{self.name}: no way to rebuild network {key!r}")

    def _dump_custom(self, key: str) -> tuple[dict[str, np.ndarray], Any]:
        raise NotImplementedError(f"{self.name}: no way to save {key!r}")

    def _load_custom(self, key: str, arrays: dict[str, np.ndarray], doc: Any) -> None:
        raise NotImplementedError(f"{self.name}: no way to load {key!r}")

    def _after_load(self) -> None:
        """Derived runtime state after loading (caches, lookups); default: nothing."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _is_network(value) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover — torch is a dependency
        return False
    return isinstance(value, torch.nn.Module)


def _jsonable(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (tuples → lists, numpy scalars → numbers); anything else is an error."""
    def plain(v):
        if isinstance(v, dict):
            return {str(k) if not isinstance(k, (int, np.integer)) else int(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    out = plain(value)
    try:
        json.dumps(out, allow_nan=True)
    except TypeError as e:
        raise TypeError(f"{what} cannot be saved as JSON ({e}): make it an array, a network, or name it "
                        "in custom_state") from None
    return out
