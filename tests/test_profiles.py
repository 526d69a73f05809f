"""Fit profiles: settings sized for the hardware, laid beneath the user's own."""

import json

import pytest

from segqc.pipeline.profiles import PROFILES, resolve_profile, with_profile


def test_auto_profile_follows_the_device_and_a_named_one_is_kept():
    assert resolve_profile("auto", "cuda") == resolve_profile("auto", "cuda:1") == "gpu"
    assert resolve_profile("auto", "cpu") == resolve_profile("auto", "mps") == "cpu"
    assert resolve_profile("gpu", "cpu") == "gpu"
    with pytest.raises(ValueError, match="unknown profile 'tpu'"):
        resolve_profile("tpu", "cpu")


def test_user_settings_win_over_the_profile_parameter_by_parameter():
    params = with_profile("gpu", {"segmenter": {"epochs": 3}, "cnn": {"epochs": 2}})
    assert params["segmenter"]["epochs"] == 3
    assert params["segmenter"]["channels"] == PROFILES["gpu"]["segmenter"]["channels"]
    assert params["cnn"] == {"epochs": 2}
    assert with_profile("cpu", None) == {}
    assert PROFILES["gpu"]["segmenter"]["epochs"] == 150 and "cnn" not in PROFILES["gpu"]  # the profile is unchanged


def test_bundle_records_its_profile_and_the_segmenters_training(tiny_bundle):
    info = json.loads((tiny_bundle("kvasir") / "bundle.json").read_text())["info"]
    assert info["profile"] == "cpu" and info["device"] == "cpu"
    training = info["segmenter"]["training"]
    assert training and all(t["epochs"] >= 1 and t["steps"] >= 1 for t in training)
