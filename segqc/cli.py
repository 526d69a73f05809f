"""`segqc` command line: parses arguments and calls `segqc.api` by keyword, nothing else.

Exit codes: 0 success; 1 failure (nothing processed, bad options); 3 partial failure
(some cases could not be processed: see the ``error`` column and stderr); 130
interrupted (Ctrl-C: the rows written so far are kept, run again to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from segqc import __version__
from segqc.data.layouts import LAYOUTS
from segqc.engines.batch import EXIT_ALL_FAILED, EXIT_INTERRUPTED, EXIT_OK
from segqc.methods import METHODS


def _common_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="dataset layout: nnunet (imagesTr/<id>_0000 + labelsTr), msd, flat (images/ + masks/ with "
                        "matching names) or csv (manifest case_id,image,mask[,truth,group]); default: detect")
    p.add_argument("--masks", type=Path, default=None,
                   help=f"folder of {what} masks named like the images (overrides the dataset's own labels)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="models", action="append", type=Path, default=[], metavar="PATH",
                   help="the segmentation model whose masks are judged, for methods that need it "
                        "(model_uncertainty); repeat for an ensemble, the first is the one that made the masks")
    p.add_argument("--model-kind", choices=["monai", "torchscript", "onnx"], default="monai",
                   help="format of --model: monai (folder or weights file beside a config.json of class + kwargs), "
                        "torchscript or onnx (preprocessing from a <file>.json beside it)")


def _load_models(args):
    if not getattr(args, "models", None):
        return None
    from segqc.user_models import load_model

    return [load_model(p, args.model_kind, device=getattr(args, "device", "auto")) for p in args.models]


def _param(text: str) -> tuple[str, str, object]:
    try:
        key, value = text.split("=", 1)
        method, name = key.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected METHOD.PARAM=VALUE, got {text!r}") from None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return method, name, parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segqc", description="Quality control of medical image segmentations without a manual ground truth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"segqc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("demo", formatter_class=fmt,
                       help="fit QC on the real sample data shipped with segqc and judge real candidate masks")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    p.add_argument("--dataset", choices=["kvasir", "hippocampus", "both"], default="both",
                   help="which embedded sample to run on")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=["features"],
                   help="QC methods to fit (small demo settings; more methods take longer)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and LightGBM CPU threads (None: all cores; 1 on a machine shared with other jobs)")

    p = sub.add_parser("fingerprint", formatter_class=fmt,
                       help="measure a reference dataset and plan its preprocessing (fingerprint.json, plan.json)")
    p.add_argument("data", type=Path, help="dataset folder or CSV manifest with expert masks")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--max-slice-size", type=int, default=128, help="largest model-space slice side in voxels")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="dataset layout (default: detect)")

    p = sub.add_parser("metrics", formatter_class=fmt,
                       help="true Dice and HD95 (mm) per label of candidate masks against expert masks")
    p.add_argument("data", type=Path, help="CSV manifest with mask and truth columns, or a dataset whose labels are "
                                          "the truth (then give --masks)")
    p.add_argument("--out", type=Path, required=True, help="output folder (metrics.csv)")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="labels to measure (default: those in truth)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of skipping cases already done")
    _common_data(p, "candidate")

    p = sub.add_parser("evaluate", formatter_class=fmt,
                       help="how accurate are QC predictions? r, MAE, AUROC/AUPR for Dice < tau, AURC, ECE + plots")
    p.add_argument("table", type=Path, help="CSV with predicted and true Dice (e.g. predictions.csv with dice_true)")
    p.add_argument("--out", type=Path, required=True, help="output folder (evaluation.json, scatter.png, ...)")
    p.add_argument("--pred-col", default="dice_pred", help="column of predicted Dice")
    p.add_argument("--true-col", default="dice_true", help="column of true Dice")
    p.add_argument("--p-col", default=None, help="column of P(Dice >= tau) for the calibration error")
    p.add_argument("--group-col", default="group", help="column to evaluate per group (model, checkpoint, site)")
    p.add_argument("--tau", type=float, default=0.8, help="Dice below which a segmentation is a failure")

    p = sub.add_parser("fit", formatter_class=fmt,
                       help="fit QC methods on reference cases with expert masks → a bundle folder")
    p.add_argument("reference", type=Path, help="reference dataset (nnU-Net, MSD, flat folder or CSV manifest)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=["features"], help="QC methods to fit")
    p.add_argument("--tau", type=float, default=0.8, help="Dice a segmentation must reach to pass")
    p.add_argument("--coverage", type=float, default=0.9, help="nominal coverage of the Dice interval")
    p.add_argument("--calibration-fraction", type=float, default=0.25,
                   help="share of reference cases held out to calibrate")
    p.add_argument("--ids", type=Path, default=None,
                   help="JSON list of reference ids to use (or a split.json: its 'reference' list)")
    p.add_argument("--extra-pairs", type=Path, default=None,
                   help="CSV manifest (case_id,image,mask,truth) of your own model's predictions on reference cases")
    p.add_argument("--set", dest="params", action="append", type=_param, default=[], metavar="METHOD.PARAM=VALUE",
                   help="override a method parameter, e.g. --set cnn.epochs=4 (repeatable)")
    p.add_argument("--max-slice-size", type=int, default=128, help="largest model-space slice side in voxels")
    p.add_argument("--no-fusion", action="store_true",
                   help="with several methods, do not fit their fusion (a weighted mean of their calibrated "
                        "Dice, recalibrated; offered as the method `fusion`)")
    p.add_argument("--seed", type=int, default=0, help="random seed (splits, bad masks, networks)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _model_args(p)
    _common_layout(p)

    p = sub.add_parser("predict", formatter_class=fmt,
                       help="judge candidate masks with a bundle → predictions.csv, dataset.json, maps")
    p.add_argument("data", type=Path, help="images + candidate masks (dataset folder or CSV manifest)")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder written by `segqc fit`")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to run, the first gives the main answer (default: all, bundle's best first)")
    p.add_argument("--no-maps", action="store_true", help="do not write pseudo ground truth / error maps")
    _model_args(p)
    p.add_argument("--no-resume", action="store_true", help="start over instead of skipping cases already done")
    p.add_argument("--report", action="store_true",
                   help="also write report.html: summary, flagged cases first, thumbnails (see `segqc report`)")
    _common_data(p, "candidate")
    g = p.add_argument_group("scale", "many cases: batches, a Ray cluster, or parts for a scheduler (see README)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: Ray Data (reading in tasks, scoring in actors that load the "
                        "bundle once; needs `pip install segqc[ray]`)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="cases each method scores at once (None: 16 with a GPU, 1 on CPU)")
    g.add_argument("--workers", type=int, default=None, help="Ray: scoring actors (None: one per CPU / GPU)")
    g.add_argument("--address", default=None,
                   help="Ray: cluster to join (auto, ray://host:10001; None: a local Ray on this machine)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="Ray: GPUs per scoring actor (e.g. 0.5)")
    g.add_argument("--num-parts", type=int, default=1,
                   help="split the cases into this many parts (one per Slurm / Kubernetes task); join with "
                        "`segqc merge`")
    g.add_argument("--part-id", type=int, default=0, help="which part this run judges, 0..num-parts-1")

    p = sub.add_parser("merge", formatter_class=fmt,
                       help="join the output folders of `predict --num-parts K --part-id i` into one")
    p.add_argument("parts", type=Path, nargs="+", help="the K part folders (e.g. qc_part_*)")
    p.add_argument("--out", type=Path, required=True, help="output folder: the merged predictions, maps, "
                                                          "dataset.json (from all cases) and run.json")

    p = sub.add_parser("bench", formatter_class=fmt,
                       help="all methods of a bundle on a benchmark cases.csv with true Dice, side by side")
    p.add_argument("cases", type=Path, help="benchmark cases.csv (columns image, ground_truth, prediction, dice, "
                                           "checkpoint)")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder written by `segqc fit`")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--root", type=Path, default=None, help="folder the CSV's paths are relative to (default: found)")
    p.add_argument("--methods", nargs="+", default=None, help="methods to compare (default: all in the bundle)")
    p.add_argument("--tau", type=float, default=None, help="failure threshold (default: the bundle's)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a random subset of this many rows")
    _model_args(p)
    p.add_argument("--no-resume", action="store_true", help="start over instead of skipping rows already done")

    p = sub.add_parser("report", formatter_class=fmt,
                       help="one self-contained HTML report of a predict (or bench) output folder, to review cases")
    p.add_argument("qc_dir", type=Path, help="output folder of `segqc predict` or `segqc bench` (or its CSV)")
    p.add_argument("--out", type=Path, default=None, help="HTML file to write; None means QC_DIR/report.html")
    p.add_argument("--data", type=Path, default=None,
                   help="the images + candidate masks given to predict, for the thumbnails; None: the one in run.json")
    p.add_argument("--thumb-size", type=int, default=None,
                   help="longer side of a thumbnail panel in pixels (the file grows with its square); "
                        "None: 112, smaller beyond 1,000 cases")
    p.add_argument("--title", default=None, help="title of the report; None: named after QC_DIR")
    _common_data(p, "candidate")

    sub.add_parser("methods", help="list the QC methods")
    return parser


def _common_layout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="dataset layout (default: detect)")


def _read_ids(path: Path | None):
    if path is None:
        return None
    doc = json.loads(path.read_text())
    return doc["reference"] if isinstance(doc, dict) else doc


def _print_eval(result: dict, title: str) -> None:
    from rich.console import Console

    from segqc.evaluation import format_table

    table = format_table(result)
    table.title = title
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from segqc import api

    try:
        if args.command == "methods":
            for name, target in METHODS.items():
                print(f"{name:14s} {target}")
            return EXIT_OK
        if args.command == "demo":
            from segqc.demo import run_demo

            return run_demo(out=args.out, dataset=args.dataset, device=args.device, methods=tuple(args.methods),
                            n_threads=args.threads)
        if args.command == "fingerprint":
            fp, plan, failed = api.fingerprint_dataset(data=args.data, out=args.out, layout=args.layout,
                                                       max_slice_size=args.max_slice_size)
            print(json.dumps(plan.to_dict(), indent=1))
            return 3 if failed else EXIT_OK
        if args.command == "metrics":
            s = api.compute_metrics(data=args.data, out=args.out, layout=args.layout, masks=args.masks,
                                    truth=args.labels, resume=not args.no_resume)
            print(f"{s.n_done} cases measured, {s.n_failed} failed, {s.n_skipped} already done → {s.out_csv}")
            return s.exit_code
        if args.command == "evaluate":
            result = api.evaluate_csv(table=args.table, out=args.out, pred_col=args.pred_col, true_col=args.true_col,
                                      p_col=args.p_col, group_col=args.group_col, tau=args.tau)
            _print_eval(result, f"QC accuracy (tau = {args.tau})")
            print(f"written to {args.out}")
            return EXIT_OK
        if args.command == "fit":
            params: dict = {}
            for method, name, value in args.params:
                params.setdefault(method, {})[name] = value
            api.fit(reference=args.reference, out=args.out, methods=args.methods, layout=args.layout, tau=args.tau,
                    coverage=args.coverage, calibration_fraction=args.calibration_fraction, seed=args.seed,
                    device=args.device, max_slice_size=args.max_slice_size, method_params=params,
                    extra_pairs=args.extra_pairs, ids=_read_ids(args.ids), models=_load_models(args),
                    fuse=not args.no_fusion)
            return EXIT_OK
        if args.command == "predict":
            s, dataset = api.predict(bundle=args.bundle, data=args.data, out=args.out, methods=args.methods,
                                     masks=args.masks, layout=args.layout, save_maps=not args.no_maps,
                                     resume=not args.no_resume, models=_load_models(args), engine=args.engine,
                                     batch_size=args.batch_size, workers=args.workers, address=args.address,
                                     gpus_per_worker=args.gpus_per_worker, num_parts=args.num_parts,
                                     part_id=args.part_id)
            _print_dataset(dataset)
            print(f"{s.n_done} cases judged, {s.n_failed} failed, {s.n_skipped} already done → {s.out_csv}")
            if args.report and s.n_done + s.n_failed + s.n_skipped:
                from segqc.report import write_report

                path = write_report(args.out, data=args.data, layout=args.layout, masks=args.masks)
                print(f"report: open {path.resolve().as_uri()}")
            return s.exit_code
        if args.command == "merge":
            from segqc.engines.shards import merge_parts

            counts, dataset = merge_parts(args.parts, args.out)
            _print_dataset(dataset)
            print(f"{len(args.parts)} parts merged: {counts['n_ok']} cases judged, {counts['n_failed']} failed "
                  f"→ {args.out / 'predictions.csv'}")
            return EXIT_OK if counts["n_failed"] == 0 else 3
        if args.command == "report":
            from segqc.report import write_report

            path = write_report(args.qc_dir, out=args.out, data=args.data, layout=args.layout, masks=args.masks,
                                thumb_size=args.thumb_size, title=args.title)
            print(f"report: open {path.resolve().as_uri()}")
            return EXIT_OK
        if args.command == "bench":
            result = api.bench(bundle=args.bundle, cases=args.cases, out=args.out, root=args.root,
                               methods=args.methods, tau=args.tau, limit=args.limit, resume=not args.no_resume,
                               models=_load_models(args))
            _print_bench(result)
            print(f"written to {args.out}")
            return EXIT_OK
    except KeyboardInterrupt:
        print(f"segqc {args.command}: interrupted; the rows written so far are kept: run the same command again "
              "to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as e:
        print(f"segqc {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ALL_FAILED
    except Exception as e:  # noqa: BLE001 — a defect of segqc: one line, the traceback on request
        if os.environ.get("SEGQC_DEBUG") == "1":
            raise
        print(f"segqc {args.command}: internal error ({type(e).__name__}: {e}); rerun with SEGQC_DEBUG=1 for the "
              "traceback and please report it", file=sys.stderr)
        return EXIT_ALL_FAILED
    return EXIT_ALL_FAILED


def _print_dataset(dataset: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="estimated model performance on these cases (95 % bootstrap intervals)")
    for col in ("group", "n", "mean Dice", "share Dice ≥ τ", "true mean Dice"):
        t.add_column(col)
    for g, r in dataset.items():
        lo, hi = r["mean_dice_ci"]
        plo, phi = r["share_pass_ci"]
        t.add_row(g, str(r["n"]), f"{r['mean_dice']:.3f} [{lo:.3f}, {hi:.3f}]",
                  f"{r['share_pass']:.3f} [{plo:.3f}, {phi:.3f}]",
                  f"{r['true_mean_dice']:.3f}" if "true_mean_dice" in r else "–")
    Console().print(t)


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _print_bench(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"QC methods on {result['cases']} (n = {result['n']}, tau = {result['tau']})")
    for col in ("method", "r", "MAE", "AUROC", "AURC", "ECE", "cover", "deployed r", "deployed MAE",
                "max |Δ mean Dice|"):
        t.add_column(col)
    for name, res in result["methods"].items():
        o = res["overall"]
        dep = res.get("deployed", {})
        gaps = [v["abs_error_mean_dice"] for k, v in res["dataset_level"].items() if k != "all"]
        t.add_row(name, *(_fmt(v) for v in (o["pearson"], o["mae"], o["auroc"], o["aurc"], o["ece"],
                                             res["interval_coverage"], dep.get("pearson"), dep.get("mae"),
                                             max(gaps) if gaps else None)))
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
