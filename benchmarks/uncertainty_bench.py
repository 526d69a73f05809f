"""The segmentation model's own uncertainty as a QC signal, on the Kvasir benchmark.

For each row (image, checkpoint) the shipped network that made the candidate is sampled:

* ``mc_dropout`` — N passes of that network with its dropout layers on (every shipped net has p = 0.2);
* ``tta`` — N test-time augmentations of it (identity, flips, then random flip + rotation ≤ 10° +
  zoom ≤ 10 % + intensity jitter, undone on the logits);
* ``ensemble`` — that network + the deployed model's ensemble partners (``unet_s0``, ``unet_s1``,
  ``unet_s2`` finals; duplicates dropped: 3 members for the UNet finals, 4 otherwise),

and every aggregation of `segqc.components.uncertainty` is computed against the row's candidate. Each
source × aggregation is calibrated to Dice / P(Dice ≥ τ) with `DiceCalibrator` (isotonic) on a
REFERENCE pool only: the shipped checkpoints' own predictions on ``--n-ref`` reference ids of
split.json (the networks were trained on those ids, so the pool mixes early-epoch failures and
near-perfect final masks). The learned aggregation is LightGBM on the 7 aggregations of one source
(or all 21), calibrated on its out-of-fold predictions on the pool (folds grouped by image).
Test rows are never used to fit or calibrate.

Usage (from the repository root, ../shared beside it; 1 torch thread):

    .venv/bin/python benchmarks/uncertainty_bench.py --n-ref 100 --out runs/helperC/unc_kvasir
    .venv/bin/python benchmarks/uncertainty_bench.py --analyse-only --out runs/helperC/unc_kvasir \
        --compare runs/bench_k1000/kvasir/bench/bench.csv

Writes ``features.csv`` (one row per sampled case, resumable), ``uncertainty_bench.json`` and a
table on stdout: r, MAE, AUROC (Dice < τ), AURC per source × aggregation, on the deployed
model's rows and on all final-epoch rows, plus seconds per case per source.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from common import (
    DATA,
    SHARED,
    add_threads_option,
    bench_image_id,
    cases_csv,
    data_dir,
    read_split,
    set_threads,
    shipped_weights,
)

CASES = cases_csv("kvasir")
FINALS = ["unet_s0_ep100", "unet_s1_ep100", "unet_s2_ep100", "segresnet_s0_ep30"]
PARTNERS = ["unet_s0_ep100", "unet_s1_ep100", "unet_s2_ep100"]
DEPLOYED = "unet_s0_ep100"


class Models:
    """Shipped networks, opened once each."""

    def __init__(self, device: str):
        self.device, self.cache = device, {}

    def __call__(self, checkpoint: str):
        from segqc.user_models import load_model

        if checkpoint not in self.cache:
            self.cache[checkpoint] = load_model(shipped_weights(checkpoint, "kvasir"), "monai", device=self.device)
        return self.cache[checkpoint]


def row_features(models: Models, checkpoint: str, image: np.ndarray, candidate: np.ndarray, n: int,
                 seed: int, maps_to: Path | None = None) -> tuple[dict, dict]:
    """All source × aggregation qualities of ``candidate`` (label 1) and the seconds each source took."""
    from segqc.components.uncertainty import AGGREGATIONS, aggregate, sample_probabilities, uncertainty_maps

    m = models(checkpoint)
    ens = [m] + [models(p) for p in PARTNERS if p != checkpoint]
    feats, secs = {}, {}
    for src in ("mc_dropout", "tta", "ensemble"):
        t0 = time.perf_counter()
        s = sample_probabilities(ens, image, source=src, n_samples=n, rng=np.random.default_rng(seed))
        t1 = time.perf_counter()
        agg = aggregate(s, candidate, [0, 1])
        secs[src] = t1 - t0
        secs[f"{src}_aggregate"] = time.perf_counter() - t1
        for a in AGGREGATIONS:
            feats[f"{src}.{a}"] = agg[a][1]
        if maps_to is not None:
            from segqc.data.case import Geometry
            from segqc.data.images import write_mask

            for key, arr in uncertainty_maps(s, [0, 1]).items():
                out = arr if arr.dtype != np.float32 else (np.clip(arr, 0, 1) * 255).astype(np.uint8)
                write_mask(maps_to.with_name(f"{maps_to.name}_{src}_{key}.png"), out, Geometry.identity(2))
    return feats, secs


def _rows(args) -> list[dict]:
    """Work list: reference-pool rows (model prediction made here) and test rows (shipped prediction)."""
    split = read_split("kvasir")
    rng = np.random.default_rng(args.seed)
    ref_ids = sorted(rng.choice(sorted(split["reference"]), size=min(args.n_ref, len(split["reference"])),
                                replace=False).tolist())
    out = []
    ckpts_ref = sorted({r["checkpoint"] for r in csv.DictReader(open(CASES))})
    for cid in ref_ids:
        for ck in ckpts_ref:
            out.append({"role": "ref", "case_id": cid, "checkpoint": ck,
                        "image": f"{DATA['kvasir']}/images/{cid}.jpg", "truth": f"{DATA['kvasir']}/masks/{cid}.png"})
    test = [r for r in csv.DictReader(open(CASES)) if r["checkpoint"] in args.checkpoints]
    if set(ref_ids) & {r["case_id"] for r in test}:
        raise SystemExit("reference and test ids overlap")
    if args.limit:
        keep = set(np.random.default_rng(args.seed).choice(sorted({r["case_id"] for r in test}),
                                                           size=args.limit, replace=False).tolist())
        test = [r for r in test if r["case_id"] in keep]
    for r in test:
        out.append({"role": "test", "case_id": r["case_id"], "checkpoint": r["checkpoint"], "image": r["image"],
                    "truth": r["ground_truth"], "prediction": r["prediction"], "dice": float(r["dice"])})
    return out


def extract(args) -> None:
    from segqc.data.images import read_image, read_mask
    from segqc.metrics import binary_dice

    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "features.csv"
    done = set()
    if path.exists():
        done = {(r["role"], r["case_id"], r["checkpoint"]) for r in csv.DictReader(open(path))}
    todo = [r for r in _rows(args) if (r["role"], r["case_id"], r["checkpoint"]) not in done]
    print(f"{len(done)} rows already done, {len(todo)} to do", flush=True)
    models = Models(args.device)
    writer, f = None, open(path, "a", newline="")
    t_start, image_cache = time.time(), {}
    n_maps = 0
    for i, r in enumerate(todo):
        if r["image"] not in image_cache:
            image_cache = {r["image"]: read_image(SHARED / r["image"])[0]}
        image = image_cache[r["image"]]
        truth = read_mask(SHARED / r["truth"])[0] == 1
        if r["role"] == "ref":
            cand = models(r["checkpoint"]).predict_mask(image)
        else:
            cand = read_mask(SHARED / r["prediction"])[0]
        maps_to = None
        if r["role"] == "test" and r["checkpoint"] == DEPLOYED and n_maps < args.maps:
            maps_to = args.out / "maps" / r["case_id"]
            maps_to.parent.mkdir(exist_ok=True)
            n_maps += 1
        feats, secs = row_features(models, r["checkpoint"], image, cand, args.n_samples, args.seed, maps_to)
        dice = binary_dice(cand == 1, truth)
        if r["role"] == "test" and abs(dice - r["dice"]) > 1e-6:
            raise SystemExit(f"{r['case_id']} {r['checkpoint']}: Dice {dice} differs from cases.csv {r['dice']}")
        row = {"role": r["role"], "case_id": r["case_id"], "checkpoint": r["checkpoint"], "dice": dice,
               **feats, **{f"sec_{k}": v for k, v in secs.items()}}
        if writer is None:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if not done:
                writer.writeheader()
        writer.writerow(row)
        f.flush()
        if (i + 1) % 50 == 0:
            el = time.time() - t_start
            print(f"  {i + 1}/{len(todo)} rows, {el:.0f} s, ~{el / (i + 1) * (len(todo) - i - 1):.0f} s left",
                  flush=True)
    f.close()


# ----------------------------------------------------------------------------- analysis


def _learned(ref: dict, test: dict, names: list[str], groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """LightGBM on ``names``: out-of-fold predictions on the pool (folds by image) and test predictions."""
    import lightgbm as lgb
    from sklearn.model_selection import GroupKFold

    X = np.column_stack([ref[n] for n in names])
    Xt = np.column_stack([test[n] for n in names])
    y = ref["dice"]

    def model():
        return lgb.LGBMRegressor(n_estimators=300, learning_rate=0.03, num_leaves=15, min_child_samples=20,
                                 subsample=0.8, subsample_freq=1, n_jobs=1, random_state=seed, verbose=-1)

    oof = np.empty(len(y))
    for tr, te in GroupKFold(n_splits=min(5, len(set(groups)))).split(X, y, groups):
        oof[te] = model().fit(X[tr], y[tr]).predict(X[te])
    return oof, model().fit(X, y).predict(Xt)


def _metrics(true, pred, raw, pp, tau) -> dict:
    from segqc import evaluation as ev

    return {"n": int(len(true)), "r": ev.pearson(true, pred), "mae": ev.mae(true, pred),
            "auroc": ev.auroc_fail(true, pred, tau), "aurc": ev.aurc(1 - true, pred),
            "auroc_raw": ev.auroc_fail(true, raw, tau), "aurc_raw": ev.aurc(1 - true, raw),
            "aurc_oracle": ev.aurc(1 - true, true),  # ranking by the true Dice: the floor
            "ece": ev.expected_calibration_error(true, pp, tau), "mean_true": float(np.mean(true)),
            "mean_pred": float(np.mean(pred))}


def analyse(args) -> dict:
    from segqc.calibration.calibrator import DiceCalibrator
    from segqc.components.uncertainty import AGGREGATIONS, SOURCES

    rows = list(csv.DictReader(open(args.out / "features.csv")))
    feat_names = [f"{s}.{a}" for s in SOURCES for a in AGGREGATIONS]

    def table(role, cks=None):
        sel = [r for r in rows if r["role"] == role and (cks is None or r["checkpoint"] in cks)]
        d = {n: np.array([float(r[n]) for r in sel]) for n in feat_names + ["dice"]}
        d["checkpoint"] = np.array([r["checkpoint"] for r in sel])
        d["case_id"] = np.array([r["case_id"] for r in sel])
        return d

    ref, test = table("ref"), table("test", set(args.checkpoints))
    tau = args.tau
    result = {"seconds_per_case": _seconds(rows)}
    if len(ref["dice"]) < 10:  # a timing-only run
        return result
    subsets = {"deployed": test["checkpoint"] == DEPLOYED,
               "finals": np.isin(test["checkpoint"], FINALS), "all": np.ones(len(test["dice"]), bool)}
    subsets = {k: v for k, v in subsets.items() if v.any()}
    combos: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for n in feat_names:  # NaN (e.g. pairwise Dice of one sample) → 0 quality
        combos[n] = (np.nan_to_num(ref[n], nan=0.0), np.nan_to_num(test[n], nan=0.0))
    for src in list(SOURCES) + ["all"]:
        names = [n for n in feat_names if src == "all" or n.startswith(src + ".")]
        combos[f"{src}.learned"] = _learned(ref, test, names, ref["case_id"], args.seed)
    preds: dict[str, np.ndarray] = {}
    result |= {"tau": tau, "n_ref_rows": int(len(ref["dice"])), "n_ref_ids": int(len(set(ref["case_id"]))),
              "ref_mean_dice": float(np.mean(ref["dice"])), "ref_frac_fail": float(np.mean(ref["dice"] < tau)),
              "n_test_rows": int(len(test["dice"])), "combos": {}}
    for name, (raw_ref, raw_test) in combos.items():
        cal = DiceCalibrator(tau=tau).fit(raw_ref, ref["dice"])
        pred, pp = cal.predict_dice(raw_test), cal.predict_pass(raw_test)
        preds[name] = pred
        result["combos"][name] = {k: _metrics(test["dice"][m], pred[m], raw_test[m], pp[m], tau)
                                  for k, m in subsets.items()}
    result["compare"] = _compare(args, test, subsets, preds)
    (args.out / "uncertainty_bench.json").write_text(json.dumps(result, indent=1))
    return result


def _seconds(rows: list[dict]) -> dict:
    from segqc.components.uncertainty import SOURCES

    sec = {}
    for src in SOURCES:
        s = [float(r[f"sec_{src}"]) + float(r[f"sec_{src}_aggregate"]) for r in rows]
        sec[src] = {"n": len(s), "mean_s": float(np.mean(s)), "median_s": float(np.median(s)),
                    "sampling_median_s": float(np.median([float(r[f"sec_{src}"]) for r in rows]))}
    return sec


def _compare(args, test: dict, subsets: dict, preds: dict) -> dict:
    """Methods that need no model, from `segqc bench` CSVs, on the rows both runs judged."""
    from segqc import evaluation as ev

    out = {}
    key_idx = {(c, k): i for i, (c, k) in enumerate(zip(test["case_id"], test["checkpoint"]))}
    for path in args.compare:
        rows = [r for r in csv.DictReader(open(path)) if r["status"] == "ok"]
        for r in rows:  # repeated ids are made unique by `segqc bench`; source_id is the one in cases.csv
            r["case_id"] = bench_image_id(r)
        methods = [c[:-5] for c in rows[0] if c.endswith("_dice") and c != "dice_pred" and not c.startswith("dice")]
        for sub, mask in subsets.items():
            hits = [(key_idx[(r["case_id"], r["group"])], r) for r in rows
                    if (r["case_id"], r["group"]) in key_idx and mask[key_idx[(r["case_id"], r["group"])]]]
            if len(hits) < 10:
                continue
            true = np.array([float(r["dice_true"]) for _, r in hits])
            for m in methods:
                pred = np.array([float(r[f"{m}_dice"]) for _, r in hits])
                out.setdefault(f"{Path(path).parts[-4]}:{m}", {})[sub] = {
                    "n": len(hits), "r": ev.pearson(true, pred), "mae": ev.mae(true, pred),
                    "auroc": ev.auroc_fail(true, pred, args.tau), "aurc": ev.aurc(1 - true, pred)}
            # the uncertainty combos on exactly these rows, for a fair side-by-side
            idx = np.array([i for i, _ in hits])
            for name, pred in preds.items():
                p = pred[idx]
                out.setdefault(f"{Path(path).parts[-4]}:rows:{name}", {})[sub] = {
                    "n": len(idx), "r": ev.pearson(true, p), "mae": ev.mae(true, p),
                    "auroc": ev.auroc_fail(true, p, args.tau), "aurc": ev.aurc(1 - true, p)}
    return out


def _print(result: dict) -> None:
    for sub in ("deployed", "finals", "all"):
        if not result.get("combos"):
            break
        print(f"\n== {sub} rows ==  source.aggregation: r  MAE  AUROC  AURC (calibrated) | AUROC AURC (raw score)")
        items = [(k, v[sub]) for k, v in result["combos"].items() if sub in v]
        if items:
            print(f"(AURC if cases were ranked by their true Dice: {items[0][1]['aurc_oracle']:.4f})")
        for k, m in sorted(items, key=lambda kv: kv[1]["aurc"]):
            print(f"{k:42s} n={m['n']:4d} r={m['r']:.3f} MAE={m['mae']:.3f} AUROC={m['auroc']:.3f} "
                  f"AURC={m['aurc']:.4f} | {m['auroc_raw']:.3f} {m['aurc_raw']:.4f}")
        for k, v in result.get("compare", {}).items():
            if sub in v and (":rows:" not in k or k.endswith((".learned", "pairwise_dice", "candidate_dice"))):
                m = v[sub]
                tag = "[same rows]" if ":rows:" in k else "[no model] "
                print(f"{tag} {k:30s} n={m['n']:4d} r={m['r']:.3f} MAE={m['mae']:.3f} AUROC={m['auroc']:.3f} "
                      f"AURC={m['aurc']:.4f}")
    print("\nseconds per case (sampling + aggregation):", json.dumps(result["seconds_per_case"]))


def segqc_bench(args) -> dict:
    """The product path: `api.fit` of ``model_uncertainty`` with the deployed model + partners on the
    reference ids, then `api.bench` (as ``segqc bench --model ...``) on the deployed model's rows."""
    from segqc import api
    from segqc.user_models import load_model

    ids = sorted(read_split("kvasir")["reference"])
    if args.n_ref < len(ids):  # a seeded subset of the reference ids (CPU time)
        ids = sorted(np.random.default_rng(args.seed).choice(ids, size=args.n_ref, replace=False).tolist())
    out = args.out / "segqc_bench"
    paths = [shipped_weights(m).parent for m in ("unet_s0_ep100", "unet_s1_ep100", "unet_s2_ep100")]
    models = [load_model(p, "monai", device=args.device) for p in paths]
    bundle = out / "bundle"
    t0 = time.time()
    if not (bundle / "bundle.json").exists():
        # model_failures=False: segqc's own reference segmenter is not needed by this method
        api.fit(reference=data_dir("kvasir"), out=bundle, methods=["model_uncertainty"],
                ids=ids, device=args.device, seed=args.seed, model_failures=False, models=models,
                method_params={"model_uncertainty": {"n_samples": args.n_samples, "n_threads": args.threads}})
    fit_s = time.time() - t0
    rows = [r for r in csv.DictReader(open(CASES)) if r["checkpoint"] == DEPLOYED]
    cases = out / "deployed_cases.csv"
    with open(cases, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    t0 = time.time()
    res = api.bench(bundle=bundle, cases=cases, root=SHARED, out=out / "bench", models=models, limit=args.limit,
                    seed=args.seed)
    res["timings"] = {"fit_s": round(fit_s, 1), "bench_s": round(time.time() - t0, 1)}
    (out / "bench" / "bench.json").write_text(json.dumps(res, indent=1))
    o = res["methods"]["model_uncertainty"]["overall"]
    print(f"segqc bench, model_uncertainty on {res['n']} deployed rows: r={o['pearson']:.3f} MAE={o['mae']:.3f} "
          f"AUROC={o['auroc']:.3f} AURC={o['aurc']:.4f} ECE={o['ece']:.3f}; {res['timings']}")
    return res


def markdown(result: dict, sub: str = "deployed") -> str:
    """README table: one row per source, one column per aggregation; cells 'AURC / AUROC / r / MAE'."""
    from segqc.components.uncertainty import AGGREGATIONS, SOURCES

    aggs = list(AGGREGATIONS) + ["learned"]
    lines = ["| source | " + " | ".join(a.replace("_", " ") for a in aggs) + " |",
             "|---|" + "---|" * len(aggs)]
    for src in list(SOURCES) + ["all"]:
        cells = []
        for a in aggs:
            m = result["combos"].get(f"{src}.{a}", {}).get(sub)
            cells.append("" if m is None else f"{m['aurc']:.3f} / {m['auroc']:.3f} / {m['r']:.2f} / {m['mae']:.3f}")
        lines.append(f"| {src.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/helperC/unc_kvasir"))
    ap.add_argument("--n-ref", type=int, default=100, help="reference ids in the calibration pool")
    ap.add_argument("--checkpoints", nargs="+", default=FINALS, help="test checkpoints to judge")
    ap.add_argument("--limit", type=int, default=None, help="test ids per checkpoint (random subset)")
    ap.add_argument("--n-samples", type=int, default=8, help="MC dropout passes and TTA transforms")
    ap.add_argument("--maps", type=int, default=5, help="save uncertainty maps of this many deployed rows")
    ap.add_argument("--tau", type=float, default=0.8)
    ap.add_argument("--device", default="cpu")
    add_threads_option(ap, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--analyse-only", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="also print README tables")
    ap.add_argument("--segqc-bench", action="store_true",
                    help="instead: fit a bundle with `model_uncertainty` and run `segqc bench` on the deployed rows")
    ap.add_argument("--compare", nargs="*", type=Path, default=[],
                    help="segqc bench.csv files of methods that need no model, compared on the same rows")
    args = ap.parse_args()
    if args.segqc_bench:
        segqc_bench(args)
        return
    if not args.analyse_only:
        extract(args)
    result = analyse(args)
    _print(result)
    if args.markdown and result.get("combos"):
        for sub in ("deployed", "finals", "all"):
            print(f"\n{sub} (AURC / AUROC / r / MAE):\n" + markdown(result, sub))


if __name__ == "__main__":
    main()
