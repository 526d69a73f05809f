"""How much memory and time does `segqc predict` need for one volume of a given size?

Fits a small hippocampus bundle on the embedded sample (or uses ``--bundle``), then,
for each size, writes one synthetic CT-like volume (a hippocampus volume resampled to
that grid, so intensities and the mask are realistic) with its mask, and runs
``segqc predict`` on it in a fresh process, reading the peak resident memory of that
process (``ru_maxrss``) and its wall time. One process per size, so the peaks do not
mix. The table it prints is the README's memory table.

    .venv/bin/python benchmarks/memory.py --sizes 128x128x64 256x256x128 512x512x128 512x512x256
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import sample_data_dir

SAMPLE = sample_data_dir() / "hippocampus"


def _fit(out: Path, methods: list[str]) -> Path:
    from segqc import api
    from segqc.data import load_dataset

    ref = SAMPLE / "reference"
    api.fit(reference=ref, out=out, methods=methods, ids=[r.case_id for r in load_dataset(ref)][:12], device="cpu",
            method_params={"segmenter": {"epochs": 3, "snapshot_epochs": [1, 2]}})
    return out


def _volume(size: tuple[int, int, int], out: Path) -> Path:
    """One hippocampus case resampled to ``size`` (X, Y, Z) voxels, written with its mask; returns a manifest."""
    import SimpleITK as sitk

    row = next(csv.DictReader(open(SAMPLE / "candidates.csv")))
    image, mask = sitk.ReadImage(str(SAMPLE / row["image"])), sitk.ReadImage(str(SAMPLE / row["mask"]))
    spacing = [s * n / m for s, n, m in zip(image.GetSpacing(), image.GetSize(), size)]

    def resample(img, interp):
        return sitk.Resample(img, list(size), sitk.Transform(), interp, img.GetOrigin(), spacing,
                             img.GetDirection(), 0, img.GetPixelID())

    tag = "x".join(map(str, size))
    sitk.WriteImage(resample(sitk.Cast(image, sitk.sitkInt16), sitk.sitkLinear), str(out / f"{tag}_img.nii.gz"))
    sitk.WriteImage(resample(mask, sitk.sitkNearestNeighbor), str(out / f"{tag}_mask.nii.gz"))
    manifest = out / f"{tag}.csv"
    manifest.write_text(f"case_id,image,mask\n{tag},{tag}_img.nii.gz,{tag}_mask.nii.gz\n")
    return manifest


def _peak_of_child(cmd: list[str], env: dict) -> tuple[int, float, float]:
    """Exit code, peak RSS (GiB) and wall seconds of one child process."""
    t0 = time.time()
    code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    # ru_maxrss of the children waited for so far: the largest, hence one size per run, smallest first
    return code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["128x128x64", "256x256x128", "512x512x128", "512x512x256"],
                    help="volume sizes X x Y x Z, measured smallest first")
    ap.add_argument("--methods", nargs="+", default=["features"])
    ap.add_argument("--bundle", type=Path, default=None, help="an existing bundle (default: fit a small one)")
    ap.add_argument("--out", type=Path, default=Path("runs/memory"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or _fit(args.out / "bundle", args.methods)
    sizes = sorted((tuple(int(v) for v in s.split("x")) for s in args.sizes), key=np.prod)
    env = dict(os.environ, SEGQC_MAX_VOXELS=str(2**40))  # measure, don't refuse
    results = []
    for size in sizes:
        manifest = _volume(size, args.out)
        cmd = [sys.executable, "-m", "segqc.cli", "predict", str(manifest), "--bundle", str(bundle),
               "--out", str(args.out / f"qc_{manifest.stem}"), "--no-resume"]
        code, peak, wall = _peak_of_child(cmd, env)
        voxels = int(np.prod(size))
        results.append({"size": "×".join(map(str, size)), "voxels": voxels, "exit": code,
                        "peak_rss_gib": round(peak, 2), "bytes_per_voxel": round(peak * 2**30 / voxels, 1),
                        "seconds": round(wall, 1)})
        print(json.dumps(results[-1]), flush=True)
    print("\n| volume (X×Y×Z) | voxels | peak memory | bytes per voxel | time |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['size']} | {r['voxels'] / 1e6:.1f} M | {r['peak_rss_gib']:.2f} GiB | {r['bytes_per_voxel']} | "
              f"{r['seconds']} s |")
    (args.out / "memory.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
