"""nnQC on a benchmark: fit on `reference` ids, `segqc bench` on cases.csv rows, then ablations.

Usage (from the repository root, with ../shared beside it):

    .venv/bin/python benchmarks/nnqc_bench.py kvasir --limit 1000
    .venv/bin/python benchmarks/nnqc_bench.py kvasir --fit-limit 120 --limit 200 \
        --set nnqc.max_minutes=8 --set segmenter.max_minutes=3 --ablate samples steps     # a quick CPU look
    .venv/bin/python benchmarks/nnqc_bench.py kvasir --ablate samples steps image candidate
    .venv/bin/python benchmarks/nnqc_bench.py kvasir --bundle runs/bench_nnqc/kvasir/bundle --ablate samples steps

Writes <out>/<dataset>/{bundle,bench}/, <out>/<dataset>/nnqc_bench.json (bench metrics,
timings, the fit's stage-1 / stage-2 info) and, with ``--ablate``, the ablation table:

* ``samples``: K = 1 vs K = 5 (same fitted model, scoring only);
* ``steps``: DDIM steps 2 / 5 / 10 vs accuracy and time (scoring only);
* ``image``: refit without the image expert; ``candidate``: refit without the
  candidate conditioning (each a full ``segqc fit`` with the same seed and data).

Ablation metrics use the RAW nnQC Dice (Dice of candidate vs pGT, before calibration):
Pearson r, MAE of the raw Dice, AUROC for Dice < τ, AURC, and seconds per case; the main
row is the calibrated `segqc bench` result. Only `reference` ids are used to fit and
calibrate; rows of cases.csv (test ids) are only judged. ``--set nnqc.PARAM=VALUE`` sets an
nnQC parameter, ``--set segmenter.PARAM=VALUE`` one of the reference segmenter.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import (
    DATASETS,
    SHARED,
    add_set_option,
    add_threads_option,
    cases_csv,
    data_dir,
    method_params,
    read_split,
    set_threads,
)

from segqc import api
from segqc.data import read_manifest
from segqc.pipeline.bundle import load_bundle

#: what ``--set`` may name: the method and the reference segmenter whose masks calibrate it
SETTABLE = ("nnqc", "segmenter")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _raw_metrics(true: np.ndarray, raw: np.ndarray, tau: float) -> dict:
    from segqc import evaluation as ev

    return {"r": ev.pearson(true, raw), "mae_raw": ev.mae(true, raw), "auroc": ev.auroc_fail(true, raw, tau=tau),
            "aurc": ev.aurc(1 - true, raw)}


def _score_rows(method, cases, true, tau, **kw) -> dict:
    t0 = time.time()
    raw = np.array([np.mean([v for v in _score(method, c, **kw).values()]) for c in cases])
    res = _raw_metrics(true, raw, tau)
    res["s_per_case"] = round((time.time() - t0) / len(cases), 4)
    return res


def _score(method, case, n_samples=None, ddim_steps=None) -> dict:
    from segqc.metrics import binary_dice

    pgt, _, _ = method.pseudo_ground_truth(case, n_samples=n_samples, ddim_steps=ddim_steps)
    return {k: binary_dice(case.mask == k, pgt == k) for k in method.labels_}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=DATASETS)
    ap.add_argument("--cases", type=Path, default=None, help="cases.csv to judge (default: the benchmark's)")
    ap.add_argument("--out", type=Path, default=Path("runs/nnqc"))
    ap.add_argument("--limit", type=int, default=None, help="judge a random subset of rows (seeded)")
    ap.add_argument("--fit-limit", type=int, default=None, help="fit on a random subset of the reference ids")
    ap.add_argument("--calibration-pairs", type=int, default=8)
    ap.add_argument("--ablate", nargs="*", default=[], choices=["samples", "steps", "image", "candidate"])
    ap.add_argument("--bundle", type=Path, default=None,
                    help="an nnQC bundle already fitted on the reference ids (e.g. by run_benchmark.py): "
                         "skip its fit and bench and ablate it; refits (image, candidate) use --set, so give the "
                         "parameters the bundle was fitted with (--set nnqc.PARAM=VALUE)")
    ap.add_argument("--ablation-limit", type=int, default=200, help="rows used by the ablations")
    ap.add_argument("--no-model-failures", action="store_true",
                    help="skip the reference segmenter (bad masks from segqc.data.corrupt only; quicker ablations)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    add_set_option(ap)
    add_threads_option(ap)
    args = ap.parse_args()
    params = method_params(args.params)
    if unknown := sorted(set(params) - set(SETTABLE)):
        ap.error(f"--set takes {' or '.join(m + '.PARAM=VALUE' for m in SETTABLE)}, not {unknown}")
    set_threads(args.threads)

    cases = args.cases or cases_csv(args.dataset)
    ids = list(read_split(args.dataset)["reference"])
    if args.fit_limit:
        ids = sorted(np.random.default_rng(args.seed).choice(ids, args.fit_limit, replace=False).tolist())
    out = args.out / args.dataset
    nnqc_params = params.get("nnqc", {})
    seg_params = params.get("segmenter", {})
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "n_fit_ids": len(ids)}

    def fit(tag: str, extra: dict) -> Path:
        t0 = time.time()
        bdir = out / f"bundle{tag}"
        api.fit(reference=data_dir(args.dataset), out=bdir, methods=["nnqc"], ids=ids,
                device=args.device, seed=args.seed, calibration_pairs=args.calibration_pairs,
                method_params={"nnqc": {**nnqc_params, **extra}, "segmenter": dict(seg_params)},
                model_failures=not args.no_model_failures)
        report.setdefault("fit_total_s", {})[tag or "main"] = round(time.time() - t0, 1)
        return bdir

    bdir = args.bundle or fit("", {})
    bundle = load_bundle(bdir, methods=["nnqc"])
    seen = set(bundle.info["fit_ids"]) | set(bundle.info["calibration_ids"])
    rows = read_manifest(cases, root=SHARED)
    if {r.extra["source_id"] for r in rows} & seen:
        raise SystemExit("benchmark rows overlap the fitting cases")
    method = bundle.methods["nnqc"]
    report["fit_info"] = method.fit_info_
    report["config"] = method.cfg_
    save = out / "nnqc_bench.json"
    save.parent.mkdir(parents=True, exist_ok=True)
    if not args.bundle:
        _bench(args, bdir, cases, out, bundle, report, save)
    if args.ablate:
        _ablate(args, cases, bundle, method, report, save, fit)
    save.write_text(json.dumps(report, indent=1, default=str))
    print(f"written {save}")


def _bench(args, bdir, cases, out, bundle, report, save) -> None:
    t0 = time.time()
    result = api.bench(bundle=bdir, cases=cases, root=SHARED, out=out / "bench", methods=["nnqc"],
                       limit=args.limit, seed=args.seed, quiet=True)
    n = result["n"]
    report["bench"] = result["methods"]["nnqc"]
    report["bench_n"] = n
    report["bench_s_per_case"] = round((time.time() - t0) / max(n, 1), 4)
    report["fit_seconds_nnqc"] = bundle.info["fit"]["nnqc"]["fit_seconds"]
    save.write_text(json.dumps(report, indent=1, default=str))  # again after each ablation: a killed run keeps these
    overall = report["bench"]["overall"]
    print(f"nnqc on {args.dataset} ({n} rows): " + ", ".join(f"{k}={_fmt(overall.get(k))}" for k in
                                                             ("pearson", "mae", "auroc", "aurc")))


def _ablate(args, cases_csv, bundle, method, report, save, fit) -> None:
    refs = read_manifest(cases_csv, root=SHARED, mask_col="prediction", truth_col="ground_truth")
    pick = sorted(np.random.default_rng(args.seed + 1).choice(len(refs), min(args.ablation_limit, len(refs)),
                                                              replace=False))
    cases = [refs[i].load() for i in pick]
    true = np.array([float(refs[i].extra["dice"]) for i in pick])
    tau = bundle.tau
    abl = report.setdefault("ablation", {"n": len(cases)})
    variants = [(f"main (K={method.n_samples}, {method.ddim_steps} steps)", None, {})]
    if "samples" in args.ablate:
        variants.append(("K=1", None, {"n_samples": 1}))
    if "steps" in args.ablate:
        variants += [(f"ddim_steps={s}", None, {"ddim_steps": s}) for s in (2, 10)]
    for what, extra in (("image", {"use_image_expert": False}), ("candidate", {"use_candidate": False})):
        if what in args.ablate:
            variants.append((f"no_{what}", extra, {}))
    for name, refit, kw in variants:
        m = method if refit is None else load_bundle(fit(f"_{name}", refit)).methods["nnqc"]
        abl[name] = _score_rows(m, cases, true, tau, **kw)
        if refit is not None:
            abl[name]["fit_info"] = m.fit_info_
        save.write_text(json.dumps(report, indent=1, default=str))
    for k, v in abl.items():
        if isinstance(v, dict):
            print(f"  {k}: " + ", ".join(f"{m}={_fmt(v[m])}" for m in ("r", "mae_raw", "auroc", "aurc",
                                                                        "s_per_case")))


if __name__ == "__main__":
    main()
