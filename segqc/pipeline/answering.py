"""A fitted bundle answers cases: every method's raw score → its calibrator → the fusion.

`QCBundle.answer(cases)` is the whole of "how good is this mask?" for a list of cases;
`segqc.pipeline.outputs` turns the answers into table rows and map files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from segqc.calibration.fusion import FUSION
from segqc.data.case import Case
from segqc.methods.base import RawScore

__all__ = ["Answer", "MethodAnswer", "QCBundle"]


@dataclass
class MethodAnswer:
    """One method's calibrated answer for one case.

    Attributes:
        raw: the method's raw score (its own scale), with its maps.
        dice: calibrated mean Dice; ``dice_per_label`` the same per label.
        p_pass: calibrated P(Dice ≥ τ).
        interval: the calibrator's interval for the true Dice at its nominal coverage.
        hd95: predicted HD95 in mm (mean over labels) when the method can tell.
        maps_of: for the fusion, the member whose maps it shows (its first member that has maps).
    """

    raw: RawScore
    dice: float
    dice_per_label: dict[int, float]
    p_pass: float
    interval: tuple[float, float]
    hd95: float | None
    maps_of: str | None = None
    descriptor: np.ndarray | None = None  # the raw score's descriptors in the calibrator's batch-correction order


@dataclass
class Answer:
    """Every asked method's answer for one case; the first is the main answer."""

    case: Case
    methods: dict[str, MethodAnswer]
    appearance: np.ndarray | None = None   # `segqc.calibration.shift.appearance` of the image


@dataclass
class QCBundle:
    """Everything `segqc predict` needs: the plan, fitted methods, their calibrators and fusion."""

    plan: object
    methods: dict = field(default_factory=dict)        # name → fitted QCMethod
    calibrators: dict = field(default_factory=dict)    # name → DiceCalibrator
    fingerprint: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)           # fit options, timings, validation figures
    default_method: str | None = None
    fusion: object | None = None                       # segqc.calibration.fusion.Fusion over ≥ 2 methods
    appearance: np.ndarray | None = None               # reference images' appearance (n_reference, d)

    @property
    def tau(self) -> float:
        return next(iter(self.calibrators.values())).tau if self.calibrators else 0.8

    @property
    def answers(self) -> list[str]:
        """The answers the bundle can give: its methods, then their fusion when fitted."""
        return list(self.methods) + ([FUSION] if self.fusion is not None else [])

    def needed(self, methods: Sequence[str]) -> list[str]:
        """``methods`` plus the fusion's members it needs (their answers are computed anyway)."""
        extra = [m for m in self.fusion.members if m not in methods] if FUSION in methods else []
        return list(methods) + extra

    def check_methods(self, methods: Sequence[str], where: str = "the bundle") -> None:
        for m in methods:
            if m not in self.answers:
                raise ValueError(f"method {m!r} is not in {where}; it has {self.answers}")

    def use_models(self, models: Sequence) -> None:
        """Give the user's segmentation model(s) to the methods that need one (else they reopen the fitted ones)."""
        if models:
            for m in self.methods.values():
                m.use_models(list(models))

    # -- answering ---------------------------------------------------------------------
    def answer(self, cases: Sequence[Case], methods: Sequence[str] | None = None) -> list[Answer | Exception]:
        """Each case's answers by ``methods`` (default: the default method first, then the others).

        Each method scores the cases as one batch (`QCMethod.score_batch`); a case that
        cannot be answered gets its exception in its place, and the others are answered.
        """
        methods = self.needed(list(methods or [self.default_method] +
                                   [m for m in self.answers if m != self.default_method]))
        errors: list[Exception | None] = [self._mismatch(c) for c in cases]
        raws: list[dict[str, RawScore]] = [{} for _ in cases]
        for name in dict.fromkeys(m for m in methods if m != FUSION):
            live = [i for i, e in enumerate(errors) if e is None]
            for i, raw in zip(live, self.methods[name].score_batch([cases[i] for i in live])):
                if isinstance(raw, Exception):
                    errors[i] = raw
                else:
                    raws[i][name] = raw
        out: list[Answer | Exception] = []
        for case, raw, err in zip(cases, raws, errors):
            if err is not None:
                out.append(err)
                continue
            try:
                out.append(Answer(case, {name: self._calibrated(name, raw, case) for name in methods},
                                  self._appearance(case)))
            except Exception as e:  # noqa: BLE001 — this case's error, not the batch's
                out.append(e)
        return out

    def _appearance(self, case: Case) -> np.ndarray | None:
        """The image's appearance descriptor, when the bundle can compare it with its reference images."""
        if self.appearance is None:
            return None
        from segqc.calibration.shift import appearance

        return appearance(case.image, case.spacing)

    def _mismatch(self, case: Case) -> Exception | None:
        plan = self.plan
        if (case.ndim, case.n_channels) == (plan.ndim, plan.n_channels):
            return None
        return ValueError(f"case is {case.ndim}D with {case.n_channels} channel(s); the bundle expects "
                          f"{plan.ndim}D with {plan.n_channels}")

    def _calibrated(self, name: str, raws: dict[str, RawScore], case: Case) -> MethodAnswer:
        if name not in raws:
            raws[name] = self._fused_score(raws, case)
        raw, cal = raws[name], self.calibrators[name]
        lo, hi = cal.interval(raw.mean_dice)
        maps_of = next((m for m in self.fusion.members if raws[m].maps), None) if name == FUSION else None
        correction = getattr(cal, "correction_", None)
        return MethodAnswer(maps_of=maps_of, raw=raw, dice=float(cal.predict_dice(raw.mean_dice)),
                            descriptor=correction.vector(raw.features) if correction is not None else None,
                            dice_per_label={k: float(cal.predict_dice(v)) for k, v in raw.dice.items()},
                            p_pass=float(cal.predict_pass(raw.mean_dice)), interval=(float(lo), float(hi)),
                            hd95=float(np.nanmean(list(raw.hd95.values()))) if raw.hd95 else None)

    def _fused_score(self, raws: dict[str, RawScore], case: Case) -> RawScore:
        """The fusion's raw score: its members' calibrated Dice, weighted (members scored here if not yet)."""
        fusion = self.fusion
        for m in fusion.members:
            if m not in raws:
                raws[m] = self.methods[m].score(case)
        calibrated = {m: float(self.calibrators[m].predict_dice(raws[m].mean_dice)) for m in fusion.members}
        per_label = {k: fusion.fused_raw({m: float(self.calibrators[m].predict_dice(raws[m].dice[k]))
                                          for m in fusion.members}) for k in self.plan.labels}
        # the fusion was fitted on the members' calibrated *mean* Dice, not on per-label values
        return RawScore(dice=per_label, hd95=next((raws[m].hd95 for m in fusion.members if raws[m].hd95), None),
                        features={f"{m}_dice": v for m, v in calibrated.items()},
                        overall=fusion.fused_raw(calibrated))
