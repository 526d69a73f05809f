"""Copy the small real sample that ships inside segqc from ../shared (run once by a maintainer).

Reference cases come from the benchmarks' `reference` ids only; the demo's candidate
masks are real predictions of the shipped benchmark networks on `test` ids, one
checkpoint per case drawn at random so that quality is mixed.
"""

import csv
import json
import random
import shutil
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OUT = Path(__file__).resolve().parents[1] / "segqc" / "sample_data"


def _rows(dataset: str) -> list[dict]:
    with open(SHARED / "benchmarks" / dataset / "cases.csv") as f:
        return list(csv.DictReader(f))


def kvasir(n_ref: int = 40, n_cand: int = 20, seed: int = 0) -> None:
    rng = random.Random(seed)
    split = json.loads((SHARED / "benchmarks/kvasir/split.json").read_text())
    out = OUT / "kvasir"
    for sub in ("reference/images", "reference/masks", "candidates/images", "candidates/masks", "candidates/truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for cid in rng.sample(sorted(split["reference"]), n_ref):
        shutil.copy(SHARED / f"data/kvasir-seg/images/{cid}.jpg", out / "reference/images")
        shutil.copy(SHARED / f"data/kvasir-seg/masks/{cid}.png", out / "reference/masks")
    rows = _rows("kvasir")
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["case_id"], []).append(r)
    manifest = []
    for cid in rng.sample(sorted(by_id), n_cand):
        r = rng.choice(by_id[cid])
        shutil.copy(SHARED / r["image"], out / "candidates/images")
        shutil.copy(SHARED / r["prediction"], out / "candidates/masks")
        shutil.copy(SHARED / r["ground_truth"], out / "candidates/truth")
        manifest.append({"case_id": cid, "image": f"candidates/images/{cid}.jpg", "mask": f"candidates/masks/{cid}.png",
                         "truth": f"candidates/truth/{cid}.png", "group": r["checkpoint"], "dice": r["dice"]})
    _write_manifest(out / "candidates.csv", manifest)


def hippocampus(n_ref: int = 20, n_cand: int = 10, seed: int = 1) -> None:
    rng = random.Random(seed)
    split = json.loads((SHARED / "benchmarks/hippocampus/split.json").read_text())
    out = OUT / "hippocampus"
    for sub in ("reference/imagesTr", "reference/labelsTr", "candidates/images", "candidates/masks",
                "candidates/truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for cid in rng.sample(sorted(split["reference"]), n_ref):
        shutil.copy(SHARED / f"data/hippocampus/imagesTr/{cid}.nii.gz", out / "reference/imagesTr")
        shutil.copy(SHARED / f"data/hippocampus/labelsTr/{cid}.nii.gz", out / "reference/labelsTr")
    (out / "reference/dataset.json").write_text(json.dumps({
        "name": "Hippocampus (sample)", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}, indent=1))
    rows = _rows("hippocampus")
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["case_id"], []).append(r)
    manifest = []
    for cid in rng.sample(sorted(by_id), n_cand):
        r = rng.choice(by_id[cid])
        shutil.copy(SHARED / r["image"], out / "candidates/images")
        shutil.copy(SHARED / r["prediction"], out / "candidates/masks")
        shutil.copy(SHARED / r["ground_truth"], out / "candidates/truth")
        manifest.append({"case_id": cid, "image": f"candidates/images/{cid}.nii.gz",
                         "mask": f"candidates/masks/{cid}.nii.gz", "truth": f"candidates/truth/{cid}.nii.gz",
                         "group": r["checkpoint"], "dice": r["dice"]})
    _write_manifest(out / "candidates.csv", manifest)


def _write_manifest(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    kvasir()
    hippocampus()
    print(f"wrote {OUT}")
