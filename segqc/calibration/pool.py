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
and every pair when the networks made fewer than `MIN_MODEL_PAIRS`. ``all`` (the default)
fits on every pair. On the reference split ``networks`` removes the calibration's bias on a
left-out network (+0.01 on Kvasir), and a batch's corrected mean gains much on Kvasir (30 → 35
of 38 left-out groups within 0.03) but nothing on the hippocampus, where network-made pairs
are thin in some range of scores (39 calibration cases) and the pool loses there what the
corruptions gave: README, "Calibrated on the masks models make". Which pool suits a dataset
is a choice the fit could make on its own held-out pairs; until it does, ``all`` stays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MIN_MODEL_PAIRS", "POOLS", "SYNTHETIC", "calibration_pool", "is_network_made"]

POOLS = ("all", "networks")
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
