"""What every benchmark script shares: where the data lies, the splits, and the common options.

The benchmarks run from the repository root with the shared folder beside it
(``../shared``: ``data/<dataset>`` the images and expert masks, ``benchmarks/<dataset>``
the ``cases.csv`` of candidate masks with their true Dice, ``split.json`` and the shipped
networks under ``models/``). Scripts import this module as ``common`` (Python puts the
script's folder first on its path):

    from common import DATASETS, add_set_option, add_threads_option, data_dir, read_split
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segqc.calibration.pool import is_network_made
from segqc.cli_options import method_params, parse_param

__all__ = ["REPO", "SHARED", "DATA", "DATASETS", "data_dir", "bench_dir", "cases_csv", "read_split",
           "benchmark_rows", "rows_by_image", "shipped_weights", "sample_data_dir", "bench_image_id",
           "add_set_option", "add_threads_option", "set_threads", "method_params", "parse_param", "parse_fit_args",
           "intervals_holding_truth", "calibration_pairs"]

REPO = Path(__file__).resolve().parents[1]
#: the shared folder beside the repository
SHARED = REPO.parent / "shared"
#: each benchmark dataset's reference data (images + expert masks), relative to `SHARED`
DATA = {"kvasir": "data/kvasir-seg", "hippocampus": "data/hippocampus"}
DATASETS: tuple[str, ...] = tuple(sorted(DATA))


def data_dir(dataset: str) -> Path:
    """Images and expert masks of ``dataset`` (what `segqc.api.fit` takes as ``reference``)."""
    return SHARED / DATA[dataset]


def bench_dir(dataset: str) -> Path:
    """The benchmark of ``dataset``: ``cases.csv``, ``split.json``, ``models/``, ``predictions/``."""
    return SHARED / "benchmarks" / dataset


def cases_csv(dataset: str) -> Path:
    """One row per (test image, checkpoint): paths relative to `SHARED`, true Dice, ``is_deployed``."""
    return bench_dir(dataset) / "cases.csv"


def read_split(dataset: str) -> dict[str, list[str]]:
    """``split.json``: the ``reference`` ids (to fit and calibrate on) and the ``test`` ids (rows of cases.csv)."""
    return json.loads((bench_dir(dataset) / "split.json").read_text())


def benchmark_rows(dataset: str, **columns) -> list:
    """The rows of `cases_csv` as `segqc.data.CaseRef`: a trained network's mask (``prediction``) as the candidate,
    its expert mask (``ground_truth``) as the truth; ``columns`` override `segqc.data.read_manifest`'s."""
    from segqc.data import read_manifest

    return read_manifest(cases_csv(dataset), root=SHARED, **{"mask_col": "prediction", "truth_col": "ground_truth",
                                                               **columns})


def rows_by_image(dataset: str, ids=None) -> dict[str, dict[str, object]]:
    """`benchmark_rows` as ``{image id: {checkpoint: row}}``, for the images in ``ids`` (default: all)."""
    by_image: dict[str, dict[str, object]] = {}
    for row in benchmark_rows(dataset):
        image_id = row.extra.get("source_id")
        if ids is None or image_id in ids:
            by_image.setdefault(image_id, {})[row.extra.get("checkpoint")] = row
    return by_image


def shipped_weights(checkpoint: str, dataset: str = "kvasir") -> Path:
    """The weights of a shipped network, ``unet_s0_ep100`` → ``models/unet_s0/ep100.pt``."""
    model, ep = checkpoint.rsplit("_ep", 1)
    return bench_dir(dataset) / "models" / model / f"ep{int(ep):02d}.pt"


def bench_image_id(row: dict) -> str:
    """The benchmark image of a `segqc bench` row: ``source_id`` (ids repeated in cases.csv are made unique
    by bench), or for files written before ``source_id`` existed, the id before '#'."""
    return row.get("source_id") or row["case_id"].split("#")[0]


def sample_data_dir() -> Path:
    """The sample data shipped inside segqc (`segqc.api.sample_data_dir`)."""
    from segqc.api import sample_data_dir as sample

    return sample()


def add_set_option(ap: argparse.ArgumentParser) -> None:
    """``--set METHOD.PARAM=VALUE`` (repeatable) into ``args.params``; `method_params` turns it into a dict."""
    ap.add_argument("--set", dest="params", action="append", type=parse_param, default=[], metavar="METHOD.PARAM=VALUE",
                    help="override a method parameter, as in `segqc fit --set` (repeatable)")


def add_threads_option(ap: argparse.ArgumentParser, default: int | None = None,
                       help: str = "torch CPU threads (1 is fastest when other jobs share the cores)") -> None:
    """``--threads N`` into ``args.threads``; `set_threads` applies it."""
    ap.add_argument("--threads", type=int, default=default, help=help)


def set_threads(n: int | None) -> None:
    """Use ``n`` torch CPU threads from now on (None or 0: leave torch's setting)."""
    if n:
        import torch

        torch.set_num_threads(int(n))


def parse_fit_args(ap: argparse.ArgumentParser) -> tuple[argparse.Namespace, dict]:
    """Add ``--set`` and ``--threads``, parse, apply ``--threads``: the arguments and the ``--set`` parameters."""
    add_set_option(ap)
    add_threads_option(ap)
    args = ap.parse_args()
    set_threads(args.threads)
    return args, method_params(args.params)


def intervals_holding_truth(groups: dict, key: str = "mean_dice_ci", widen: float = 0.0) -> int:
    """How many groups of a bench's ``dataset_level`` have the true mean Dice inside their interval ``key``
    (``mean_dice_ci`` when a bundle fitted before the systematic error term has no ``key``), widened by
    ``widen`` on both sides."""
    def inside(g: dict) -> bool:
        lo, hi = g.get(key, g["mean_dice_ci"])
        return lo - widen <= g["true_mean_dice"] <= hi + widen

    return sum(inside(g) for g in groups.values())


def noise_floor(case_errors: dict[str, list[float]], within: float = 0.03) -> str:
    """How close groups' means can come to the truth from their cases' own noise alone: with each group's
    per-case errors (estimate − truth) spread as they are and no bias, how many groups would land within
    ``within`` (a group's mean carries its cases' noise as a standard error of SD / √n). One sentence."""
    from scipy.special import ndtr

    sd = np.array([np.std(e, ddof=1) for e in case_errors.values()])
    se = sd / np.sqrt([len(e) for e in case_errors.values()])
    return (f"noise floor: per-case errors spread {sd.mean():.3f} (mean SD within a group), so a group's mean "
            f"carries ±{np.median(se):.3f} (median standard error) of its cases' noise; unbiased, "
            f"{float(np.sum(2 * ndtr(within / se) - 1)):.1f} of {len(se)} groups would be expected within {within:g}")


def calibration_pairs(bundle: Path, method: str = "features") -> tuple[np.ndarray, np.ndarray, list]:
    """The held-out pairs a bundle's calibrator of ``method`` was fitted on (``info["calibration_pairs"]``,
    those its ``calibrated`` mask keeps — every pair in bundles from before `segqc.calibration.pool`):
    raw scores, true Dice, and each pair's group as `segqc fit` forms them (its source; ``None`` for a
    corruption of the expert mask, which is no model's)."""
    pairs = json.loads((Path(bundle) / "bundle.json").read_text())["info"]["calibration_pairs"]
    keep = calibrated_mask(pairs, method)
    groups = [s if is_network_made(s) else None for s, k in zip(pairs["source"], keep) if k]
    return np.asarray(pairs["raw"][method], float)[keep], np.asarray(pairs["true_dice"], float)[keep], groups


def kept_pairs(bundle: Path, method: str = "features") -> dict[str, np.ndarray]:
    """The pairs ``method``'s calibrator kept, in the order of its batch correction's descriptors: those of
    `calibration_pairs` with a finite score and truth (the calibrator's own filter). ``raw``, ``true``,
    ``group`` (as `calibration_pairs`), ``source`` and ``image`` (the reference case's id), one entry per pair."""
    pairs = json.loads((Path(bundle) / "bundle.json").read_text())["info"]["calibration_pairs"]
    keep = calibrated_mask(pairs, method)
    raw, true = np.asarray(pairs["raw"][method], float)[keep], np.asarray(pairs["true_dice"], float)[keep]
    ok = np.isfinite(raw) & np.isfinite(true)
    source = np.asarray(pairs["source"], object)[keep][ok]
    return {"raw": raw[ok], "true": true[ok], "source": source,
            "group": np.array([s if is_network_made(s) else None for s in source], dtype=object),
            "image": np.asarray(pairs["reference_id"], object)[keep][ok]}


def calibrated_mask(pairs: dict, method: str) -> np.ndarray:
    """Which stored calibration pairs (``info["calibration_pairs"]``) ``method``'s calibrator was fitted on:
    its ``calibrated`` mask, or every pair in bundles from before `segqc.calibration.pool`."""
    return np.asarray(pairs.get("calibrated", {}).get(method, [True] * len(pairs["source"])), bool)
