"""Shared fixtures: the real sample data shipped inside segqc (tests never need ../shared)."""

from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "segqc" / "sample_data"


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def kvasir_cases():
    from segqc.data import load_dataset

    return [r.load() for r in load_dataset(SAMPLE / "kvasir" / "reference")[:8]]


@pytest.fixture(scope="session")
def hippo_cases():
    from segqc.data import load_dataset

    return [r.load() for r in load_dataset(SAMPLE / "hippocampus" / "reference")[:6]]


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# A `features` bundle in seconds: 8 reference cases (6 to fit, 2 to calibrate), a 2-epoch reference
# segmenter, 30 trees. n_jobs=1: LightGBM's OpenMP threads spin badly on a busy 2-core machine.
TINY_FIT = {"features": {"pairs_per_case": 2, "n_estimators": 30, "n_jobs": 1},
            "segmenter": {"epochs": 2, "snapshot_epochs": [1], "channels": [8, 16], "n_folds": 2}}


def fit_tiny(reference, out: Path, ids=None, **kwargs) -> Path:
    """`api.fit` of a tiny `features` bundle (one torch thread: faster than two fighting over a busy CPU)."""
    import copy

    from segqc import api
    from segqc.utils import torch_threads

    with torch_threads(1):
        api.fit(reference=reference, out=out, methods=["features"], ids=ids, method_params=copy.deepcopy(TINY_FIT),
                calibration_pairs=5, max_slice_size=32, device="cpu", **kwargs)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """``tiny_bundle("kvasir" | "hippocampus")``: fitted once per session on 8 embedded cases; read only."""
    from segqc.data import load_dataset

    fitted: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in fitted:
            ref = SAMPLE / name / "reference"
            fitted[name] = fit_tiny(ref, tmp_path_factory.mktemp(name) / "bundle",
                                    ids=[r.case_id for r in load_dataset(ref)][:8])
        return fitted[name]

    return get


def candidates_manifest(name: str, path: Path, n: int | None = None, bad: bool = False) -> Path:
    """A CSV manifest of the first ``n`` embedded candidates of ``name`` (absolute paths) at ``path``.

    ``bad`` adds two cases that cannot be read: ``missing_file`` (no such mask) and ``corrupt_file``.
    """
    import csv

    with open(SAMPLE / name / "candidates.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    for r in rows:
        for k in ("image", "mask", "truth"):
            r[k] = str(SAMPLE / name / r[k])
    if bad:
        corrupt = path.parent / "corrupt.png"
        corrupt.write_bytes(b"\x89PNG broken")
        rows += [dict(rows[0], case_id="missing_file", mask=str(path.parent / "nope.png")),
                 dict(rows[1], case_id="corrupt_file", mask=str(corrupt))]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
