"""Which held-out pairs a calibrator is fitted on: every pair, or the masks that models made.

The held-out pairs are of two kinds: synthetic corruptions of the expert mask
(`segqc.data.corrupt`), and masks that networks made — segqc's reference segmenter's
snapshots and simulated sites, the outsider networks, the user's model, a manifest's
candidates. The regressors learn from both: corruptions cover failure modes the networks
rarely show. A calibrator says what a raw score means for the masks it will judge, and those
are a model's; at one raw score a corruption is a better mask than a network's (on Kvasir
raw 0.8–1.0 meant a true Dice of 0.92 for corruptions, 0.83–0.87 for network-made pairs;
`benchmarks/calibration_sources.py`), so counting them makes the calibration optimistic.

``networks`` fits on the network-made pairs, and keeps two guards: the corruptions whose raw
score lies beyond every network-made pair's (there no network says what the score means, an
empty or swapped mask must still map low, and isotonic regression clips beyond its data),
and every pair when the networks made fewer than `MIN_MODEL_PAIRS`. ``all`` fits on every pair.
On the reference split ``networks`` removes the calibration's bias on a left-out network (+0.01
on Kvasir), and a batch's corrected mean gains much on Kvasir (30 → 35 of 38 left-out groups
within 0.03) but nothing on the hippocampus, where network-made pairs are thin in some range of
scores (39 calibration cases) and the pool loses there what the corruptions gave: README,
"Calibrated on the masks models make".

So which pool suits a dataset is measured, not set: ``auto`` (the default) chooses on the fit's
own held-out pairs (`choose_pool`). Each group of network-made pairs (a snapshot, a simulated
site, an outsider network) is left out in turn and judged as a batch — its mean calibrated Dice,
batch-corrected, as a user reads it — by a calibrator fitted on the rest with either pool.
``networks`` is chosen when it makes those errors smaller beyond chance (a one-sided paired t-test
over the groups at 5 %), ``all`` otherwise: every pair unless this dataset's reference cases say
that a new model's batch is better answered without the corruptions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CALIBRATE_ON", "MIN_MODEL_PAIRS", "POOLS", "SYNTHETIC", "calibration_pool", "choose_pool",
           "is_network_made", "left_out_batch_errors"]

POOLS = ("all", "networks")
# what `segqc fit --calibrate-on` takes: a pool, or ``auto`` to let the held-out pairs choose one
CALIBRATE_ON = POOLS + ("auto",)
# the one-sided level at which the held-out groups must favour ``networks`` for ``auto`` to leave ``all``
CHOICE_LEVEL = 0.05
SYNTHETIC = "corruption"
# an isotonic map, a 90 % conformal radius and a bound over groups from fewer pairs are mostly noise
MIN_MODEL_PAIRS = 50


def is_network_made(source: str) -> bool:
    """Whether a pair's candidate was made by a model (anything but a synthetic corruption)."""
    return source != SYNTHETIC


def calibration_pool(sources: Sequence[str], raw: np.ndarray, pool: str = "networks") -> tuple[np.ndarray, str]:
    """Which pairs calibrate (a boolean mask over ``sources``) and, in words, what they are.

    ``pool="networks"``: the network-made pairs, and the corruptions whose raw score lies beyond
    every network-made pair's; every pair when there are fewer than `MIN_MODEL_PAIRS` network-made
    ones. ``pool="all"``: every pair."""
    if pool not in POOLS:
        raise ValueError(f"calibration pool must be one of {list(POOLS)}, got {pool!r}")
    made = np.array([is_network_made(s) for s in sources], bool)
    if pool == "all":
        return np.ones(len(made), bool), "all pairs"
    raw = np.asarray(raw, float)
    seen = made & np.isfinite(raw)
    if seen.sum() >= MIN_MODEL_PAIRS:
        beyond = (raw < raw[seen].min()) | (raw > raw[seen].max())
        return made | beyond, f"network-made pairs, and {int((beyond & ~made).sum())} corruptions beyond their scores"
    return np.ones(len(made), bool), (f"all pairs (only {int(made.sum())} network-made, fewer than "
                                      f"{MIN_MODEL_PAIRS}: corruptions kept)")


def left_out_batch_errors(raw: np.ndarray, true: np.ndarray, groups: Sequence, keep: np.ndarray,
                          descriptors: np.ndarray | None = None, names: Sequence[str] = ()) -> dict[str, float]:
    """Per group of pairs (``groups``: a name per pair, ``None`` for none) left out in turn: its estimated mean
    Dice minus its true mean, the calibrator fitted on the other pairs that ``keep`` marks. The estimate is the
    one a user reads for a batch: the mean calibrated Dice, corrected for where the batch lies among the pairs
    when ``descriptors`` (one row per pair, columns ``names``) are given (`segqc.calibration.batch_correction`).
    Groups of fewer than `segqc.calibration.calibrator.MIN_GROUP` pairs are skipped."""
    from segqc.calibration.calibrator import MIN_GROUP, DiceCalibrator

    raw, true, keep = np.asarray(raw, float), np.asarray(true, float), np.asarray(keep, bool)
    g = np.asarray([x if x is not None else "" for x in groups], dtype=object)
    out = {}
    for name in sorted(set(g.tolist()) - {""}):
        held = g == name
        rest = ~held & keep
        if held.sum() < MIN_GROUP or rest.sum() < MIN_GROUP:
            continue
        cal = DiceCalibrator().fit(raw[rest], true[rest], descriptors=None if descriptors is None
                                   else descriptors[rest], names=list(names))
        estimate = float(cal.predict_dice(raw[held]).mean())
        if cal.correction_ is not None:
            estimate += cal.correction_.correct(descriptors[held])["correction"]
        out[str(name)] = estimate - float(true[held].mean())
    return out


def choose_pool(sources: Sequence[str], raw: np.ndarray, true: np.ndarray, descriptors: np.ndarray | None = None,
                names: Sequence[str] = ()) -> tuple[str, dict]:
    """``all`` or ``networks`` for these held-out pairs (each named by its ``source``), and the evidence.

    Every group of network-made pairs is left out in turn and its batch estimate judged with either pool
    (`left_out_batch_errors`, on the same groups); ``networks`` is chosen when its |errors| are smaller than
    ``all``'s by a one-sided paired t-test at `CHOICE_LEVEL`. Pairs with a missing score or truth are left out.
    Without two groups to compare on, or with the pools the same, ``all``."""
    from scipy.stats import ttest_rel

    raw, true = np.asarray(raw, float), np.asarray(true, float)
    ok = np.isfinite(raw) & np.isfinite(true)
    sources = [s for s, k in zip(sources, ok) if k]
    raw, true = raw[ok], true[ok]
    described = None if descriptors is None else np.asarray(descriptors, float)[ok]
    groups = [s if is_network_made(s) else None for s in sources]
    keep, _ = calibration_pool(sources, raw, "networks")
    evidence: dict = {"test": f"one-sided paired t-test over left-out groups, level {CHOICE_LEVEL:g}"}
    if keep.all():
        return "all", evidence | {"reason": "the pools are the same"}
    errors = {pool: left_out_batch_errors(raw, true, groups, np.ones_like(keep) if pool == "all" else keep,
                                          described, names) for pool in POOLS}
    common = sorted(set(errors["all"]) & set(errors["networks"]))
    a, n = (np.abs([errors[p][k] for k in common]) for p in POOLS)
    for pool, e in zip(POOLS, (a, n)):
        evidence[pool] = {"mean_abs_error": float(e.mean()) if e.size else None,
                          "within_0.03": int(np.sum(e <= 0.03))}
    evidence["groups"] = len(common)
    if len(common) < 2 or np.allclose(a, n):
        return "all", evidence | {"reason": "too few groups to compare" if len(common) < 2 else "no difference"}
    p = float(ttest_rel(a, n, alternative="greater").pvalue)
    chosen = "networks" if p < CHOICE_LEVEL else "all"
    return chosen, evidence | {"p_value": p, "reason": f"network-made pairs {'' if p < CHOICE_LEVEL else 'not '}"
                                                       f"better beyond chance (p = {p:.3f})"}
