"""Fit settings for the hardware at hand: ``cpu`` (a laptop's budget) or ``gpu`` (larger networks, longer schedules).

segqc's defaults are sized for a 2-core laptop: `segqc fit` of the default method in
about half an hour, its reference segmenter a small UNet trained for 80 epochs, its
schedule fitted to a 15-minute budget. On a GPU the same minutes buy a wider network trained to the end of a
longer schedule, which predicts the reference cases better and so makes a better pseudo
ground truth; its snapshots then span the whole run, so the failure examples include
those of a nearly trained network, not only of early ones.

A profile is a set of method parameters laid beneath the user's own (``--set`` wins).
``auto`` (the default) is ``gpu`` when the fit runs on a CUDA device, else ``cpu``; the
bundle records the profile it was fitted with.
"""

from __future__ import annotations

__all__ = ["PROFILES", "resolve_profile", "with_profile"]

PROFILES: dict[str, dict[str, dict]] = {
    "cpu": {},
    "gpu": {
        # as measured on an H200 (README, "The reference segmenter"): the cosine shape is the one
        # that was run there; the CPU default's OneCycle was measured better on a CPU only
        "segmenter": {"channels": (32, 64, 128, 256), "epochs": 150, "batch_size": 32, "schedule": "cosine",
                      "snapshot_epochs": (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)},
        # the H200 fit spent 5.9 of its 9.7 minutes measuring training pairs on one CPU core while
        # the machine had 16: measure on every core (LightGBM's threads too)
        "features": {"n_jobs": -1},
    },
}


def resolve_profile(profile: str, device: str) -> str:
    """``auto`` → ``gpu`` on a CUDA device (``device`` as resolved), else ``cpu``; a named profile as it is."""
    if profile == "auto":
        return "gpu" if str(device).startswith("cuda") else "cpu"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use auto or one of {sorted(PROFILES)}")
    return profile


def with_profile(profile: str, method_params: dict | None) -> dict:
    """``{method: {param: value}}`` of ``profile`` with ``method_params`` laid over it (per parameter)."""
    given = method_params or {}
    out = {m: dict(p) for m, p in PROFILES[profile].items()}
    for m, p in given.items():
        out[m] = {**out.get(m, {}), **p}
    return out
