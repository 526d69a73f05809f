"""Diffusion implicit ensemble (`segqc.methods.diffusion_ensemble`) on the Kvasir benchmark.

Two steps, so that the expensive one can run where a GPU is (it also runs on a CPU, slowly):

    # 1. train on reference ids (75 % fit), draw N DDIM samples for the 25 % held-out reference
    #    ids and every test image; writes bundle/ (weights) and samples.npz (uint8) to --out
    python benchmarks/diffusion_bench.py sample --shared ../shared --out runs/helperC/diffusion --minutes 4

    # 2. calibrate on the held-out reference ids (bad masks from segqc.corrupt, as `segqc fit`
    #    does) and judge every row of cases.csv with those samples
    python benchmarks/diffusion_bench.py evaluate --out runs/helperC/diffusion

Only `reference` ids are used to train and calibrate; test images are only sampled.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _cases(root: Path, ids: list[str], with_mask: bool = True):
    from segqc.io import load_dataset

    keep = set(ids)
    refs = [r for r in load_dataset(root / "data" / "kvasir-seg") if r.case_id in keep]
    return [r.load(require_mask=with_mask) for r in refs]


def _split(ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    ids = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_cal = int(round(0.25 * len(ids)))
    return [ids[i] for i in perm[n_cal:]], [ids[i] for i in perm[:n_cal]]


def sample(args) -> None:
    import torch

    from segqc.bundle import QCBundle, save_bundle
    from segqc.fingerprint import compute_fingerprint, plan_from_fingerprint
    from segqc.methods.diffusion_ensemble import DiffusionEnsemble

    split = json.loads((args.shared / "benchmarks/kvasir/split.json").read_text())
    fit_ids, cal_ids = _split(split["reference"], args.seed)
    t0 = time.time()
    ref = _cases(args.shared, split["reference"])
    plan = plan_from_fingerprint(compute_fingerprint(ref), max_slice_size=128)
    fit = [c for c in ref if c.case_id in set(fit_ids)]
    m = DiffusionEnsemble(size=args.size, channels=tuple(args.channels), train_steps=args.steps,
                          batch_size=args.batch_size, n_samples=args.n_samples, ddim_steps=args.ddim_steps,
                          max_minutes=args.minutes, device=args.device, seed=args.seed)
    print(f"loaded {len(ref)} reference cases in {time.time() - t0:.0f} s; training on {len(fit)}", flush=True)
    t0 = time.time()
    m.fit(fit, plan, np.random.default_rng(args.seed), progress=lambda msg: print(" ", msg, flush=True))
    train_s = time.time() - t0
    print(f"trained {m.train_steps_done_} steps in {train_s:.0f} s, loss {m.final_loss_:.4f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save_bundle(QCBundle(plan=plan, methods={"diffusion": m}), args.out / "bundle")
    todo = [c for c in ref if c.case_id in set(cal_ids)] + _cases(args.shared, split["test"], with_mask=False)
    out, secs = {}, []
    for i, c in enumerate(todo):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t1 = time.time()
        p, _ = m.sample(c)
        secs.append(time.time() - t1)
        out[c.case_id] = np.round(p * 255).astype(np.uint8)
        if (i + 1) % 100 == 0:
            print(f"  sampled {i + 1}/{len(todo)}", flush=True)
    np.savez_compressed(args.out / "samples.npz", **out)
    info = {"train_seconds": train_s, "train_steps": m.train_steps_done_, "final_loss": m.final_loss_,
            "sample_seconds_median": float(np.median(secs)), "device": str(args.device),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "fit_ids": fit_ids, "calibration_ids": cal_ids, "params": m.get_params()}
    (args.out / "sample_info.json").write_text(json.dumps(info, indent=1, default=str))
    print(json.dumps({k: v for k, v in info.items() if not k.endswith("_ids")}, default=str))


def evaluate(args) -> dict:
    from segqc import evaluation as ev
    from segqc.bundle import load_bundle
    from segqc.calibration import DiceCalibrator
    from segqc.io.images import read_image, read_mask
    from segqc.methods.base import make_training_pairs
    from segqc.metrics import binary_dice
    from segqc.preprocess import preprocess

    info = json.loads((args.out / "sample_info.json").read_text())
    m = load_bundle(args.out / "bundle").methods["diffusion"]
    samples = np.load(args.out / "samples.npz")
    rng = np.random.default_rng(args.seed)
    t0 = time.time()

    def raw_of(case, p):
        props = preprocess(case.with_mask(None), m.plan_)[2]
        return m.score_samples(case, p.astype(np.float32) / 255, props)

    # calibration: bad masks of the held-out reference ids, scored with their own samples
    cal_cases = _cases(args.shared, info["calibration_ids"])
    raw_cal, true_cal, pgt_dice = [], [], []
    for c in cal_cases:
        p = samples[c.case_id]
        for pair in make_training_pairs([c], rng, 8):
            s = raw_of(pair, p)
            raw_cal.append(s.mean_dice)
            true_cal.append(binary_dice(pair.mask == 1, pair.truth == 1))
        pgt_dice.append(binary_dice(raw_of(c, p).maps["pgt"] == 1, c.mask == 1))
    cal = DiceCalibrator(tau=args.tau).fit(np.array(raw_cal), np.array(true_cal))
    rows = list(csv.DictReader(open(args.shared / "benchmarks/kvasir/cases.csv")))
    if args.limit:
        rows = [rows[i] for i in sorted(rng.choice(len(rows), args.limit, replace=False))]
    raw, true, groups = [], [], []
    images: dict[str, tuple] = {}
    for r in rows:
        if r["case_id"] not in images:
            images = {r["case_id"]: read_image(args.shared / r["image"])}
        img, geo = images[r["case_id"]]
        from segqc.case import Case

        cand = read_mask(args.shared / r["prediction"])[0]
        raw.append(raw_of(Case(r["case_id"], img, cand, geo), samples[r["case_id"]]).mean_dice)
        true.append(float(r["dice"]))
        groups.append(r["checkpoint"])
    raw, true, groups = np.array(raw), np.array(true), np.array(groups)
    pred, pp = cal.predict_dice(raw), cal.predict_pass(raw)
    res = {"n_rows": int(len(rows)), "mean_dice_mean_mask_vs_expert_on_calibration_ids": float(np.mean(pgt_dice)),
           "sampling": {k: v for k, v in info.items() if not k.endswith("_ids")}, "subsets": {}}
    for name, mask in {"all": np.ones(len(true), bool), "deployed": groups == "unet_s0_ep100",
                       "finals": np.isin(groups, ["unet_s0_ep100", "unet_s1_ep100", "unet_s2_ep100",
                                                  "segresnet_s0_ep30"])}.items():
        t, p_, q = true[mask], pred[mask], pp[mask]
        res["subsets"][name] = {"n": int(mask.sum()), "r": ev.pearson(t, p_), "mae": ev.mae(t, p_),
                                "auroc": ev.auroc_fail(t, p_, args.tau), "aurc": ev.aurc(1 - t, p_),
                                "ece": ev.expected_calibration_error(t, q, args.tau),
                                "auroc_raw": ev.auroc_fail(t, raw[mask], args.tau),
                                "aurc_raw": ev.aurc(1 - t, raw[mask])}
    res["evaluate_seconds"] = round(time.time() - t0, 1)
    (args.out / "diffusion_bench.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["sample", "evaluate"])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=Path("runs/helperC/diffusion"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--minutes", type=float, default=4.0, help="training time cap")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-samples", type=int, default=5)
    ap.add_argument("--ddim-steps", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tau", type=float, default=0.8)
    ap.add_argument("--limit", type=int, default=None, help="evaluate a random subset of rows")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.device == "auto":
        from segqc.utils import resolve_device

        args.device = resolve_device("auto")
    sample(args) if args.step == "sample" else evaluate(args)


if __name__ == "__main__":
    main()
