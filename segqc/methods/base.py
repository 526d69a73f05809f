"""The one interface every QC method implements.

A method learns, from reference cases with expert masks, to score a candidate mask
without its ground truth. It never reads files and never knows about the CLI:
``fit(cases, plan, rng)`` → ``score(case)`` → ``state()`` / ``from_state()``.

Supervised methods learn from *training pairs*: a case whose ``mask`` is a (possibly
bad) candidate and whose ``truth`` is the expert mask. `make_training_pairs` builds
them from reference cases with `segqc.data.corrupt`, and users may add their own model's
predictions on reference cases.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from segqc.data.case import Case
from segqc.data.labels import unknown_labels

__all__ = ["QCMethod", "RawScore", "NotFittedError", "check_is_fitted", "check_labels", "make_training_pairs"]


class NotFittedError(RuntimeError):
    """Raised when ``score`` is called before ``fit`` (or loading)."""


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


class QCMethod:
    """Base class: constructor stores keyword parameters only; learned state ends in ``_``.

    A method implements ``fit`` (setting ``labels_``, the plan's labels), ``_score_case``
    — or ``_score_cases``, to score a batch at once — ``state`` and ``from_state``.
    """

    name: str = "base"
    needs_model: bool = False

    def get_params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    @classmethod
    def param_names(cls) -> set[str]:
        """The constructor's keyword parameters: the names `get_params` returns, and all a bundle may set."""
        return {p.name for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"}

    def fit(self, cases: list[Case], plan, rng: np.random.Generator) -> "QCMethod":
        raise NotImplementedError

    def score(self, case: Case) -> RawScore:
        """The raw score of ``case.mask``.

        Every method's scoring starts here, so a candidate is checked once: an unfitted
        method, or a label the method never learned (a wrong answer otherwise), is an error.
        """
        check_is_fitted(self)
        check_labels(case.mask, self.labels_)
        return self._score_cases([case])[0]

    def _score_case(self, case: Case) -> RawScore:
        """The method's own scoring of a candidate that `score` has checked (or override `_score_cases`)."""
        raise NotImplementedError

    def score_batch(self, cases: list[Case]) -> list[RawScore | Exception]:
        """`score` of several cases at once (network methods batch their forward passes on a GPU).

        A case that cannot be scored gets its exception in its place, so one bad case of a
        batch never fails the others; the answers are those of `score`, case by case.
        """
        check_is_fitted(self)
        out: list[RawScore | Exception] = []
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

    def _score_cases(self, cases: list[Case]) -> list[RawScore]:
        """The method's own scoring of checked candidates; override to batch (default: one by one).

        `score` goes through here too, so a method that batches implements only this.
        """
        return [self._score_case(c) for c in cases]

    def _try_score(self, case: Case) -> RawScore | Exception:
        try:
            return self._score_cases([case])[0]
        except Exception as e:  # noqa: BLE001 — returned in the case's place
            return e

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays (saved as safetensors) and a JSON-able dict (parameters + small state)."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict) -> "QCMethod":
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def make_training_pairs(cases: list[Case], rng: np.random.Generator, per_case: int,
                        extra_pairs: list[Case] | None = None, progress=None) -> list[Case]:
    """Bad masks from expert masks: each returned case has ``mask`` = corrupted, ``truth`` = expert.

    ``extra_pairs`` (cases that already carry a candidate ``mask`` and an expert ``truth``,
    e.g. the user's own model on reference cases) are appended as they are.
    """
    from segqc.data.corrupt import sample_corruptions

    pairs = []
    for case in cases:
        for bad, _ in sample_corruptions(case.mask, case.spacing, rng, per_case):
            pairs.append(Case(case.case_id, case.image, bad, case.geometry, truth=case.mask, meta=case.meta))
        if progress is not None:
            progress()
    return pairs + list(extra_pairs or [])
