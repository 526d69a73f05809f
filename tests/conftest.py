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
    from segqc.io import load_dataset

    return [r.load() for r in load_dataset(SAMPLE / "kvasir" / "reference")[:8]]


@pytest.fixture(scope="session")
def hippo_cases():
    from segqc.io import load_dataset

    return [r.load() for r in load_dataset(SAMPLE / "hippocampus" / "reference")[:6]]


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
