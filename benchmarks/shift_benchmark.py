"""A distribution-shift benchmark you can develop on: the Kvasir test images as new sites see them.

A new hospital has another endoscope and other processing. Each *site* is one fixed
random draw of such changes — colour balance, gamma, blur, sensor noise, a lower
resolution, vignetting, specular highlights, a crop, JPEG quality — with a severity
from 0 (site ``s0``: the images as they are) to 1 (every change at the far end of its
range). Each site's images (and their expert masks, cropped and resized like them) are
written to files, segmented again by the shipped networks of ../shared/benchmarks/kvasir
(`segqc.user_models.load_model`, exactly as they were run to make the shipped predictions),
and scored against the expert masks (Dice, HD95 in pixels as in the shipped benchmark).

Writes, under ``--out`` (default ``runs/shift``):

- ``<site>/images/<id>.jpg``, ``<site>/masks/<id>.png``, ``<site>/predictions/<checkpoint>/<id>.png``;
- ``cases.csv``: one row per (site, checkpoint, test id), the columns of the shipped
  ``cases.csv`` (paths relative to ``--out``) plus ``site`` and ``severity``; its
  ``checkpoint`` column is ``<checkpoint>@<site>``, so that `segqc bench runs/shift/cases.csv
  --root runs/shift` reports every (site, checkpoint) pair as a group;
- ``sites.json`` (each site's drawn parameters) and ``summary.csv`` (per site and
  checkpoint: n, true mean Dice, and its change from site ``s0``).

Only ``test`` ids are used, and nothing here is fitted: the benchmark judges QC, it never
trains it. Re-running skips the files already written.

    .venv/bin/python benchmarks/shift_benchmark.py --sites 8 --checkpoints unet_s0_ep100 segresnet_s0_ep30
    .venv/bin/python benchmarks/shift_benchmark.py --analyse runs/shift_bench   # after `segqc bench` on it
    .venv/bin/python benchmarks/shift_benchmark.py --subset 50    # runs/shift/cases_50.csv: 50 images per site
    .venv/bin/python benchmarks/shift_benchmark.py --compare runs/shift_bench runs/shift_after   # common rows
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
from common import (
    add_threads_option,
    calibration_pairs,
    data_dir,
    intervals_holding_truth,
    noise_floor,
    read_split,
    set_threads,
    shipped_weights,
)
from PIL import Image, ImageDraw, ImageFilter

DEFAULT_CHECKPOINTS = ["unet_s0_ep100", "unet_s1_ep100", "segresnet_s0_ep30", "unet_s0_ep8"]


def draw_site(index: int, n_sites: int, seed: int) -> dict:
    """Site ``index``'s parameters: severity grows from 0 (first site) to 1 (last), each change drawn within it."""
    severity = index / max(n_sites - 1, 1)
    rng = np.random.default_rng([seed, index])

    def up_to(limit: float) -> float:  # a draw in [0.5, 1] × severity × limit: every site moves every way
        return float(limit * severity * rng.uniform(0.5, 1.0))

    return {
        "site": f"s{index}",
        "severity": round(severity, 3),
        "gains": [float(np.exp(rng.choice([-1, 1]) * up_to(0.35))) for _ in range(3)],  # colour balance
        "gamma": float(np.exp(rng.choice([-1, 1]) * up_to(0.5))),
        "blur_sigma": up_to(2.5),
        "noise_sigma": up_to(14.0),
        "scale": 1.0 - up_to(0.6),  # acquired at a lower resolution, shown at the usual size
        "vignetting": up_to(0.6),
        "highlights": int(round(up_to(8.0))),
        "crop": up_to(0.18),  # share of each side cut away (another field of view)
        "jpeg_quality": int(round(95 - up_to(65.0))),
        "seed": int(rng.integers(1 << 31)),
    }


def apply_site(image: Image.Image, mask: Image.Image, p: dict, case_seed: int) -> tuple[Image.Image, Image.Image]:
    """The image as site ``p`` acquires it, and the expert mask on that image's grid."""
    rng = np.random.default_rng([p["seed"], case_seed])
    w, h = image.size
    c = p["crop"]
    box = tuple(int(round(v)) for v in (c * w * rng.uniform(0, 1), c * h * rng.uniform(0, 1),
                                          w - c * w * rng.uniform(0, 1), h - c * h * rng.uniform(0, 1)))
    image, mask = image.crop(box), mask.crop(box)
    if p["scale"] < 1.0:  # lower resolution sensor: down, then back up for display
        size = image.size
        small = (max(8, int(size[0] * p["scale"])), max(8, int(size[1] * p["scale"])))
        image = image.resize(small, Image.BILINEAR).resize(size, Image.BILINEAR)
    if p["blur_sigma"] > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(p["blur_sigma"]))
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = arr * np.asarray(p["gains"], np.float32)
    arr = np.clip(arr, 0, 1) ** p["gamma"]
    yy, xx = np.mgrid[0:arr.shape[0], 0:arr.shape[1]]
    r = np.hypot((yy - arr.shape[0] / 2) / (arr.shape[0] / 2), (xx - arr.shape[1] / 2) / (arr.shape[1] / 2))
    arr = arr * (1.0 - p["vignetting"] * np.clip(r / np.sqrt(2), 0, 1)[..., None] ** 2)
    arr = arr * 255.0 + rng.normal(0, p["noise_sigma"], arr.shape)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(p["highlights"]):  # specular reflections of the light source on wet mucosa
        cx, cy = rng.uniform(0, image.size[0]), rng.uniform(0, image.size[1])
        rx, ry = rng.uniform(2, 9), rng.uniform(2, 6)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=(255, 255, 250))
    return image, mask


def _load_models(checkpoints: list[str]) -> dict:
    from segqc.user_models import load_model

    return {ck: load_model(shipped_weights(ck, "kvasir"), "monai", device="cpu") for ck in checkpoints}


def build_site(p: dict, ids: list[str], models: dict, out: Path, progress) -> list[dict]:
    """Write one site's images, masks and predictions; its rows of cases.csv."""
    from segqc.metrics import dice, hd95

    site = out / p["site"]
    for sub in ("images", "masks"):
        (site / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for k, cid in enumerate(ids):
        img_path, mask_path = site / "images" / f"{cid}.jpg", site / "masks" / f"{cid}.png"
        src_img = data_dir("kvasir") / "images" / f"{cid}.jpg"
        src_mask = data_dir("kvasir") / "masks" / f"{cid}.png"
        if not (img_path.exists() and mask_path.exists()):
            mask = Image.open(src_mask).convert("L")
            if p["severity"] == 0:  # the unchanged site: the very files (a JPEG saved again would differ)
                shutil.copy(src_img, img_path)
            else:
                image, mask = apply_site(Image.open(src_img).convert("RGB"), mask, p, k)
                image.save(img_path, quality=p["jpeg_quality"])
            mask.point(lambda v: 255 if v > 127 else 0).save(mask_path)
        rgb = np.asarray(Image.open(img_path).convert("RGB"), dtype=np.float32)
        truth = (np.asarray(Image.open(mask_path)) > 127).astype(np.uint8)
        for ck, model in models.items():
            pred_path = site / "predictions" / ck / f"{cid}.png"
            if pred_path.exists():
                pred = (np.asarray(Image.open(pred_path)) > 127).astype(np.uint8)
            else:
                pred = model.predict_mask(np.moveaxis(rgb, -1, 0))
                pred_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pred * 255).save(pred_path)
            name, ep = ck.rsplit("_ep", 1)
            rows.append({
                "case_id": cid, "image": str(img_path.relative_to(out)),
                "ground_truth": str(mask_path.relative_to(out)), "prediction": str(pred_path.relative_to(out)),
                "model": name, "epoch": int(ep),
                "is_deployed": ck == "unet_s0_ep100", "checkpoint": f"{ck}@{p['site']}", "site": p["site"],
                "severity": p["severity"], "dice": dice(pred, truth, [1]), "hd95": hd95(pred, truth, (1.0, 1.0), [1]),
                "height": truth.shape[0], "width": truth.shape[1]})
        progress()
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per (site, checkpoint): n, true mean Dice and its change from the unchanged site s0."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["site"], r["checkpoint"].split("@")[0]), []).append(r["dice"])
    base = {ck: np.mean(v) for (site, ck), v in groups.items() if site == "s0"}
    return [{"site": site, "checkpoint": ck, "n": len(v), "dice_mean": round(float(np.mean(v)), 4),
             "dice_change_from_s0": round(float(np.mean(v) - base[ck]), 4) if ck in base else ""}
            for (site, ck), v in sorted(groups.items(), key=lambda kv: (int(kv[0][0][1:]), kv[0][1]))]


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _stored_bound(bundle: Path, method: str) -> float:
    """The systematic error bound of ``method``'s calibrator, recomputed from the calibration pairs the bundle
    stored (their sources are the groups, as `segqc fit` now does)."""
    from segqc.calibration.calibrator import DiceCalibrator

    return DiceCalibrator().fit(*calibration_pairs(bundle, method)).systematic_


def analyse(bench_dir: Path, method: str, bundle: Path | None = None) -> None:
    """How a `segqc bench` run on this benchmark follows it: estimated / true mean Dice per site and
    checkpoint, per-case interval coverage per site, and how many site-level intervals hold the truth."""
    res = json.loads((bench_dir / "bench.json").read_text())["methods"][method]
    level = res["dataset_level"]
    with open(bench_dir / "bench.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    if rows and rows[0]["method"] != method:
        print(f"(the interval columns of bench.csv are those of {rows[0]['method']}, the bench's first method)")
    covered: dict[str, list[bool]] = {}
    for r in rows:
        covered.setdefault(r["group"].split("@")[1], []).append(
            float(r["dice_lo"]) <= float(r["dice_true"]) <= float(r["dice_hi"]))
    groups = {g: v for g, v in level.items() if "@" in g}
    checkpoints = sorted({g.split("@")[0] for g in groups})
    sites = sorted({g.split("@")[1] for g in groups}, key=lambda s: int(s[1:]))
    print("| site | " + " | ".join(checkpoints) + " | 90 % interval coverage |")
    print("|---|" + "---|" * (len(checkpoints) + 1))
    for site in sites:
        cells = [f"{groups[f'{ck}@{site}']['mean_dice']:.3f} / {groups[f'{ck}@{site}']['true_mean_dice']:.3f}"
                 for ck in checkpoints]
        print(f"| {site} | " + " | ".join(cells) + f" | {np.mean(covered[site]):.2f} |")
    err = np.array([g["mean_dice"] - g["true_mean_dice"] for g in groups.values()])
    print(f"{len(err)} (site, checkpoint) pairs: estimate − truth mean {err.mean():+.3f}, "
          f"max |·| {np.abs(err).max():.3f}, {int(np.sum(np.abs(err) <= 0.03))} within 0.03; "
          f"95 % intervals holding the truth: {intervals_holding_truth(groups)} (bootstrap alone: "
          f"{intervals_holding_truth(groups, 'mean_dice_sampling_ci')}; systematic error bound "
          f"{next(iter(groups.values())).get('systematic_error')})")
    corrected = [g for g in groups.values() if g.get("batch_correction")]
    if corrected:  # the same run before the batch correction (segqc.calibration.batch_correction)
        e = np.array([g["mean_dice_uncorrected"] - g["true_mean_dice"] for g in corrected])
        by = np.array([g["batch_correction"]["correction"] for g in corrected])
        print(f"uncorrected ({len(e)} corrected pairs): estimate − truth mean {e.mean():+.3f}, mean |·| "
              f"{np.abs(e).mean():.3f}, max |·| {np.abs(e).max():.3f}, {int(np.sum(np.abs(e) <= 0.03))} within 0.03; "
              f"corrected: mean |·| {np.abs(err).mean():.3f}; corrections from {by.min():+.3f} to {by.max():+.3f}")
    # how close a group's mean can come from its cases' own noise: with this run's per-case errors
    # (their spread within each group) and no bias, how many groups would land within 0.03
    case_err: dict[str, list[float]] = {}
    for r in rows:
        case_err.setdefault(r["group"], []).append(float(r["dice_pred"]) - float(r["dice_true"]))
    print(noise_floor({g: case_err[g] for g in groups}))
    if bundle is not None:
        # the bootstrap interval widened by the bound (a bundle with the term has it widened already)
        bound = _stored_bound(bundle, method)
        held = intervals_holding_truth(groups, "mean_dice_sampling_ci", widen=bound)
        print(f"with the systematic error bound recomputed from {bundle}'s calibration pairs ({bound:.3f}): "
              f"{held} intervals hold the truth")


def compare(before: Path, after: Path) -> None:
    """Two `segqc bench` runs of this benchmark (e.g. two bundles, or a full run and a ``--limit`` one) on
    the rows they share: estimate − truth of the mean Dice per site and checkpoint, interval coverage."""
    def read(d: Path) -> dict:
        with open(d / "bench.csv", newline="") as f:
            # repeated ids are made unique in file order, so a row is its image and group
            return {(r.get("source_id") or r["case_id"], r["group"]): r
                    for r in csv.DictReader(f) if r["status"] == "ok"}

    a, b = read(before), read(after)
    common = sorted(set(a) & set(b))
    print(f"{len(common)} rows in both\n\n| site | checkpoint | true | {before} | {after} |\n|---|---|---|---|---|")
    groups: dict[str, list[str]] = {}
    for cid in common:
        groups.setdefault(b[cid]["group"], []).append(cid)
    errs: dict[str, list[float]] = {"a": [], "b": []}
    for g in sorted(groups, key=lambda g: (int(g.split("@")[1][1:]), g)):
        ids = groups[g]
        true = np.mean([float(b[i]["dice_true"]) for i in ids])
        ea, eb = (np.mean([float(x[i]["dice_pred"]) for i in ids]) - true for x in (a, b))
        errs["a"].append(ea)
        errs["b"].append(eb)
        print(f"| {g.split('@')[1]} | {g.split('@')[0]} | {true:.3f} | {ea:+.3f} | {eb:+.3f} |")
    for key, d in (("a", before), ("b", after)):
        e = np.abs(errs[key])
        x = a if key == "a" else b
        cov = np.mean([float(x[i]["dice_lo"]) <= float(x[i]["dice_true"]) <= float(x[i]["dice_hi"]) for i in common])
        print(f"{d}: mean |estimate − truth| {e.mean():.3f}, max {e.max():.3f}, {int((e <= 0.03).sum())}/{len(e)} "
              f"within 0.03; per-case 90 % interval coverage {cov:.3f}")


def subset(cases: Path, per_site: int) -> Path:
    """``cases_<N>.csv`` beside ``cases``: the rows of the first ``per_site`` images of each site (every
    checkpoint), for a quicker `segqc bench` whose groups stay balanced (``--limit`` samples rows)."""
    with open(cases, newline="") as f:
        rows = list(csv.DictReader(f))
    seen: dict[str, list[str]] = {}
    keep = []
    for r in rows:
        images = seen.setdefault(r["site"], [])
        if r["image"] not in images:
            if len(images) >= per_site:
                continue
            images.append(r["image"])
        keep.append(r)
    out = cases.with_name(f"cases_{per_site}.csv")
    _write_csv(out, keep)
    print(f"{len(keep)} rows written to {out}")
    return out


def main() -> None:
    from segqc.ui import progress

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=8, help="number of sites, severity 0 (s0) to 1 (last)")
    ap.add_argument("--checkpoints", nargs="+", default=DEFAULT_CHECKPOINTS, help="shipped networks to run")
    ap.add_argument("--limit", type=int, default=None, help="only the first N test ids (a quick look)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sites' draws")
    ap.add_argument("--out", type=Path, default=Path("runs/shift"))
    ap.add_argument("--analyse", type=Path, default=None, metavar="BENCH_DIR",
                    help="instead of building: the figures of a `segqc bench` folder run on this benchmark")
    ap.add_argument("--method", default="features", help="with --analyse: the method to report")
    ap.add_argument("--systematic-from", type=Path, default=None, metavar="BUNDLE",
                    help="with --analyse: also the site intervals a bundle fitted before the systematic error "
                         "term would give with it, the bound recomputed from the calibration pairs it stored")
    ap.add_argument("--subset", type=int, default=None, metavar="N",
                    help="instead of building: write cases_N.csv, the first N images of each site of OUT/cases.csv")
    ap.add_argument("--compare", type=Path, nargs=2, default=None, metavar=("BEFORE", "AFTER"),
                    help="instead of building: two `segqc bench` folders on this benchmark, on their common rows")
    add_threads_option(ap, default=1, help="torch CPU threads of the shipped networks")
    args = ap.parse_args()
    if args.analyse:
        analyse(args.analyse, args.method, args.systematic_from)
        return
    if args.compare:
        compare(*args.compare)
        return
    if args.subset:
        subset(args.out / "cases.csv", args.subset)
        return
    set_threads(args.threads)
    ids = sorted(read_split("kvasir")["test"])[:args.limit]
    sites = [draw_site(i, args.sites, args.seed) for i in range(args.sites)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sites.json").write_text(json.dumps(sites, indent=1))
    models = _load_models(args.checkpoints)
    rows = []
    with progress(remaining=True) as bar:
        task = bar.add_task("sites × test images", total=len(sites) * len(ids))
        for p in sites:
            rows += build_site(p, ids, models, args.out, lambda: bar.advance(task))
    _write_csv(args.out / "cases.csv", rows)
    summary = summarise(rows)
    _write_csv(args.out / "summary.csv", summary)
    print("| site | severity | " + " | ".join(args.checkpoints) + " |\n|---|---|" + "---|" * len(args.checkpoints))
    by = {(s["site"], s["checkpoint"]): s for s in summary}
    for p in sites:
        cells = [f"{by[(p['site'], ck)]['dice_mean']:.3f} ({by[(p['site'], ck)]['dice_change_from_s0']:+.3f})"
                 for ck in args.checkpoints]
        print(f"| {p['site']} | {p['severity']:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
