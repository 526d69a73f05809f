"""Throughput of `segqc predict`: cases per second for each engine and number of workers.

For each dataset (2D Kvasir photos, 3D hippocampus MRI), a bundle of ``--methods``
(default ``features cnn``) is fitted on the embedded sample's reference cases with small
settings (or ``--bundle``), and its candidate rows are repeated under new ids up to
``--cases`` rows. Each configuration then runs `segqc predict` as a user would, in fresh
processes, and is timed from the command's start to its last row:

- ``local``: one process (``--batch-size`` 1 on CPU, larger batches with ``--device cuda``);
- ``ray:N``: ``--engine ray --workers N`` on a local Ray (skipped when Ray is not installed);
- ``parts:K``: ``--num-parts K``, the K parts run at once (as K Slurm tasks would), then
  ``segqc merge``.

``wall`` includes starting Python and loading the bundle; ``cases/s`` is cases over
wall; ``s/case`` over the run alone (``run.json``'s runtime, without start-up); the
engine's overhead per case is its ``s/case`` minus the local engine's at one worker.

    .venv/bin/python benchmarks/throughput.py --cases 400 --configs local ray:1 ray:2 parts:2
    python3 benchmarks/throughput.py --device cuda --cases 4000 --configs local parts:8 parts:16 --batch-size 64
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import add_threads_option, sample_data_dir

SAMPLE = sample_data_dir()
SMALL = {  # small but real fits: the throughput of scoring does not depend on how long nets trained
    "features": {"pairs_per_case": 4, "n_estimators": 200},
    "cnn": {"epochs": 3},
    "segmenter": {"epochs": 4, "snapshot_epochs": [1, 2]},
}


def fit_bundle(dataset: str, methods: list[str], device: str, out: Path) -> Path:
    from segqc import api

    if (out / "bundle.json").exists():
        return out
    api.fit(reference=SAMPLE / dataset / "reference", out=out, methods=methods, device=device,
            method_params={k: dict(v) for k, v in SMALL.items()}, fuse=False)
    return out


def repeat_candidates(dataset: str, n: int, out: Path) -> Path:
    """The sample's candidate rows repeated under new ids up to ``n`` rows (absolute paths)."""
    rows = list(csv.DictReader(open(SAMPLE / dataset / "candidates.csv")))
    path = out / f"{dataset}_{n}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "image", "mask", "group"])
        w.writeheader()
        for i in range(n):
            r = rows[i % len(rows)]
            w.writerow({"case_id": f"{r['case_id']}_{i}", "image": str(SAMPLE / dataset / r["image"]),
                        "mask": str(SAMPLE / dataset / r["mask"]), "group": r["group"]})
    return path


def _predict(manifest: Path, bundle: Path, out: Path, extra: list[str], env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "segqc.cli", "predict", str(manifest), "--bundle", str(bundle), "--out", str(out),
           "--no-resume", "--no-maps", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode not in (0, 3):
            raise SystemExit(f"predict failed ({p.returncode}): {err[-2000:]}")


def run_config(config: str, manifest: Path, bundle: Path, out: Path, batch_size: int | None, threads: int) -> dict:
    """Time one configuration; returns its row of the table."""
    kind, _, n = config.partition(":")
    workers = int(n or 1)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    extra = ["--batch-size", str(batch_size)] if batch_size else []
    folder = out / config.replace(":", "_")
    t0 = time.time()
    if kind == "local":
        _wait([_predict(manifest, bundle, folder, extra, env)])
        runs = [folder]
    elif kind == "ray":
        _wait([_predict(manifest, bundle, folder, [*extra, "--engine", "ray", "--workers", str(workers)], env)])
        runs = [folder]
    elif kind == "parts":
        runs = [folder / f"part{i}" for i in range(workers)]
        _wait([_predict(manifest, bundle, r, [*extra, "--num-parts", str(workers), "--part-id", str(i)], env)
               for i, r in enumerate(runs)])
        subprocess.run([sys.executable, "-m", "segqc.cli", "merge", *map(str, runs), "--out", str(folder / "merged")],
                       check=True, stdout=subprocess.DEVNULL, env=env)
    else:
        raise SystemExit(f"unknown configuration {config!r} (local, ray:N, parts:K)")
    wall = time.time() - t0
    records = [json.loads((r / "run.json").read_text()) for r in runs]
    n_cases = sum(r["n_ok"] + r["n_failed"] for r in records)
    run_s = max(r["runtime_s"] for r in records)  # parts run at once: the slowest one ends the job
    return {"config": config, "workers": workers, "cases": n_cases, "wall_s": round(wall, 1),
            "cases_per_s": round(n_cases / wall, 2), "s_per_case": round(run_s / n_cases, 4),
            "s_per_case_per_worker": round(run_s * workers / n_cases, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["kvasir", "hippocampus"])
    ap.add_argument("--cases", type=int, nargs="+", default=[400, 40], help="rows per dataset (one value each)")
    ap.add_argument("--methods", nargs="+", default=["features", "cnn"])
    ap.add_argument("--configs", nargs="+", default=["local", "ray:1", "ray:2", "parts:2"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the bundle is fitted and scores")
    ap.add_argument("--batch-size", type=int, default=None, help="predict --batch-size (default: segqc's)")
    add_threads_option(ap, default=1, help="torch / OpenMP threads per process")
    ap.add_argument("--out", type=Path, default=Path("runs/throughput"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        import ray  # noqa: F401
    except ImportError:
        dropped = [c for c in args.configs if c.startswith("ray")]
        args.configs = [c for c in args.configs if not c.startswith("ray")]
        if dropped:
            print(f"Ray is not installed: skipping {dropped}", flush=True)
    results = []
    for dataset, n in zip(args.datasets, args.cases * len(args.datasets)):
        bundle = fit_bundle(dataset, args.methods, args.device, args.out / f"bundle_{dataset}_{args.device}")
        manifest = repeat_candidates(dataset, n, args.out)
        base = None
        for config in args.configs:
            row = {"dataset": dataset, "device": args.device, "methods": "+".join(args.methods),
                   **run_config(config, manifest, bundle, args.out / dataset, args.batch_size, args.threads)}
            if config == "local":
                base = row["s_per_case"]
            row["overhead_s_per_case"] = None if base is None else round(row["s_per_case_per_worker"] - base, 4)
            results.append(row)
            print(json.dumps(row), flush=True)
    (args.out / f"throughput_{args.device}.json").write_text(json.dumps(results, indent=1))
    print("\n| data | device | configuration | workers | cases | wall (s) | cases/s | s per case | "
          "s per case per worker | overhead per case vs local |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['dataset']} | {r['device']} | {r['config']} | {r['workers']} | {r['cases']} | {r['wall_s']} | "
              f"{r['cases_per_s']} | {r['s_per_case']} | {r['s_per_case_per_worker']} | "
              f"{'' if r['overhead_s_per_case'] is None else r['overhead_s_per_case']} |")


if __name__ == "__main__":
    main()
