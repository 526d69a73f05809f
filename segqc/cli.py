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
from segqc.calibration.pool import CALIBRATE_ON
from segqc.cli_options import method_params, parse_param
from segqc.data.layouts import LAYOUTS
from segqc.engines.batch import EXIT_ALL_FAILED, EXIT_INTERRUPTED, EXIT_OK
from segqc.methods import METHODS
from segqc.pipeline.profiles import PROFILES
from segqc.user_models import MODEL_KINDS

__all__ = ["build_parser", "main"]


def _layout(p: argparse.ArgumentParser) -> None:
    """``--layout``, the same for every command that reads a dataset."""
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="dataset layout: nnunet (imagesTr/<id>_0000 + labelsTr), msd, flat (images/ + masks/ with "
                        "matching names) or csv (manifest case_id,image,mask[,truth,group]); auto: detect")


def _common_data(p: argparse.ArgumentParser, what: str) -> None:
    _layout(p)
    p.add_argument("--masks", type=Path, default=None,
                   help=f"folder of {what} masks named like the images (overrides the dataset's own labels)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="models", action="append", type=Path, default=[], metavar="PATH",
                   help="the segmentation model whose masks are judged, for methods that need it "
                        "(model_uncertainty); repeat for an ensemble, the first is the one that made the masks")
    p.add_argument("--model-kind", choices=MODEL_KINDS, default="monai",
                   help="format of --model: monai (folder or weights file beside a config.json of class + kwargs), "
                        "torchscript or onnx (preprocessing from a <file>.json beside it)")


def _load_models(args):
    if not getattr(args, "models", None):
        return None
    from segqc.user_models import load_model

    return [load_model(p, args.model_kind, device=getattr(args, "device", "auto")) for p in args.models]


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
    p.set_defaults(func=_demo)

    p = sub.add_parser("fingerprint", formatter_class=fmt,
                       help="measure a reference dataset and plan its preprocessing (fingerprint.json, plan.json)")
    p.add_argument("data", type=Path, help="dataset folder or CSV manifest with expert masks")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--max-slice-size", type=int, default=128, help="largest model-space slice side in voxels")
    _layout(p)
    p.set_defaults(func=_fingerprint)

    p = sub.add_parser("metrics", formatter_class=fmt,
                       help="true Dice and HD95 (mm) per label of candidate masks against expert masks")
    p.add_argument("data", type=Path, help="CSV manifest with mask and truth columns, or a dataset whose labels are "
                                          "the truth (then give --masks)")
    p.add_argument("--out", type=Path, required=True, help="output folder (metrics.csv)")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="labels to measure (default: those in truth)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of skipping cases already done")
    _common_data(p, "candidate")
    p.set_defaults(func=_metrics)

    p = sub.add_parser("evaluate", formatter_class=fmt,
                       help="how accurate are QC predictions? r, MAE, AUROC/AUPR for Dice < tau, AURC, ECE + plots")
    p.add_argument("table", type=Path, help="CSV with predicted and true Dice (e.g. predictions.csv with dice_true)")
    p.add_argument("--out", type=Path, required=True, help="output folder (evaluation.json, scatter.png, ...)")
    p.add_argument("--pred-col", default="dice_pred", help="column of predicted Dice")
    p.add_argument("--true-col", default="dice_true", help="column of true Dice")
    p.add_argument("--p-col", default=None, help="column of P(Dice >= tau) for the calibration error")
    p.add_argument("--group-col", default="group", help="column to evaluate per group (model, checkpoint, site)")
    p.add_argument("--tau", type=float, default=0.8, help="Dice below which a segmentation is a failure")
    p.set_defaults(func=_evaluate)

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
    p.add_argument("--set", dest="params", action="append", type=parse_param, default=[], metavar="METHOD.PARAM=VALUE",
                   help="override a method parameter, e.g. --set cnn.epochs=4 (repeatable)")
    p.add_argument("--max-slice-size", type=int, default=128, help="largest model-space slice side in voxels")
    p.add_argument("--simulated-sites", type=int, default=4, metavar="N",
                   help="also calibrate on the held-out cases as N simulated acquisition sites see them, segmented "
                        "by segqc's own segmenter (0: none)")
    p.add_argument("--calibrate-on", choices=list(CALIBRATE_ON), default="auto",
                   help="held-out pairs the calibrators are fitted on: all, the masks networks made "
                        "(synthetic corruptions only beyond their scores), or auto (the default: whichever of the "
                        "two judges a left-out network's batch better on the held-out pairs; README: 'The fit "
                        "chooses the pool')")
    p.add_argument("--no-fusion", action="store_true",
                   help="with several methods, do not fit their fusion (a weighted mean of their calibrated "
                        "Dice, recalibrated; offered as the method `fusion`)")
    p.add_argument("--seed", type=int, default=0, help="random seed (splits, bad masks, networks)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--profile", choices=["auto", *PROFILES], default="auto",
                   help="settings sized for the hardware: cpu (a laptop's budget) or gpu (a wider reference "
                        "segmenter, a longer schedule); auto: gpu when fitting on a CUDA device. --set wins")
    _model_args(p)
    _layout(p)
    p.set_defaults(func=_fit)

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
    p.set_defaults(func=_predict)

    p = sub.add_parser("merge", formatter_class=fmt,
                       help="join the output folders of `predict --num-parts K --part-id i` into one")
    p.add_argument("parts", type=Path, nargs="+", help="the K part folders (e.g. qc_part_*)")
    p.add_argument("--out", type=Path, required=True, help="output folder: the merged predictions, maps, "
                                                          "dataset.json (from all cases) and run.json")
    p.set_defaults(func=_merge)

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
    p.set_defaults(func=_bench)

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
    p.set_defaults(func=_report)

    p = sub.add_parser("methods", help="list the QC methods and their parameters (for `fit --set`)")
    p.add_argument("name", nargs="?", default=None, help="one method: its parameters only")
    p.set_defaults(func=_methods)
    return parser


def _read_ids(path: Path | None):
    if path is None:
        return None
    doc = json.loads(path.read_text())
    return doc["reference"] if isinstance(doc, dict) else doc


def _methods(args) -> int:
    from segqc.methods import get_method_class

    for name in [args.name] if args.name else list(METHODS):
        cls = get_method_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name}{' (needs --model)' if cls.needs_model else ''}: {doc}")
        for key, p in cls.params.items():
            print(f"  --set {name}.{key}={p.default!r}" + (f"  # {p.doc}" if p.doc else ""))
    return EXIT_OK


def _demo(args) -> int:
    from segqc.demo import run_demo

    return run_demo(out=args.out, dataset=args.dataset, device=args.device, methods=tuple(args.methods),
                    n_threads=args.threads)


def _fingerprint(args) -> int:
    from segqc import api

    fp, plan, failed = api.fingerprint_dataset(data=args.data, out=args.out, layout=args.layout,
                                               max_slice_size=args.max_slice_size)
    print(json.dumps(plan.to_dict(), indent=1))
    return 3 if failed else EXIT_OK


def _metrics(args) -> int:
    from segqc import api

    s = api.compute_metrics(data=args.data, out=args.out, layout=args.layout, masks=args.masks,
                            truth=args.labels, resume=not args.no_resume)
    print(f"{s.n_done} cases measured, {s.n_failed} failed, {s.n_skipped} already done → {s.out_csv}")
    return s.exit_code


def _evaluate(args) -> int:
    from segqc import api
    from segqc.evaluation.tables import print_eval

    result = api.evaluate_csv(table=args.table, out=args.out, pred_col=args.pred_col, true_col=args.true_col,
                              p_col=args.p_col, group_col=args.group_col, tau=args.tau)
    print_eval(result, f"QC accuracy (tau = {args.tau})")
    print(f"written to {args.out}")
    return EXIT_OK


def _fit(args) -> int:
    from segqc import api

    api.fit(reference=args.reference, out=args.out, methods=args.methods, layout=args.layout, tau=args.tau,
            coverage=args.coverage, calibration_fraction=args.calibration_fraction, seed=args.seed,
            device=args.device, max_slice_size=args.max_slice_size, method_params=method_params(args.params),
            extra_pairs=args.extra_pairs, ids=_read_ids(args.ids), models=_load_models(args),
            fuse=not args.no_fusion, profile=args.profile, simulated_sites=args.simulated_sites,
            calibrate_on=args.calibrate_on)
    return EXIT_OK


def _predict(args) -> int:
    from segqc import api
    from segqc.evaluation.tables import print_dataset

    s, dataset = api.predict(bundle=args.bundle, data=args.data, out=args.out, methods=args.methods,
                             masks=args.masks, layout=args.layout, save_maps=not args.no_maps,
                             resume=not args.no_resume, models=_load_models(args), engine=args.engine,
                             batch_size=args.batch_size, workers=args.workers, address=args.address,
                             gpus_per_worker=args.gpus_per_worker, num_parts=args.num_parts,
                             part_id=args.part_id)
    print_dataset(dataset)
    print(f"{s.n_done} cases judged, {s.n_failed} failed, {s.n_skipped} already done → {s.out_csv}")
    if args.report and s.n_done + s.n_failed + s.n_skipped:
        from segqc.report import write_report

        path = write_report(args.out, data=args.data, layout=args.layout, masks=args.masks)
        print(f"report: open {path.resolve().as_uri()}")
    return s.exit_code


def _merge(args) -> int:
    from segqc.evaluation.tables import print_dataset
    from segqc.pipeline.parts import merge_parts

    counts, dataset = merge_parts(args.parts, args.out)
    print_dataset(dataset)
    print(f"{len(args.parts)} parts merged: {counts['n_ok']} cases judged, {counts['n_failed']} failed "
          f"→ {args.out / 'predictions.csv'}")
    return EXIT_OK if counts["n_failed"] == 0 else 3


def _report(args) -> int:
    from segqc.report import write_report

    path = write_report(args.qc_dir, out=args.out, data=args.data, layout=args.layout, masks=args.masks,
                        thumb_size=args.thumb_size, title=args.title)
    print(f"report: open {path.resolve().as_uri()}")
    return EXIT_OK


def _bench(args) -> int:
    from segqc import api
    from segqc.evaluation.tables import print_bench

    result = api.bench(bundle=args.bundle, cases=args.cases, out=args.out, root=args.root,
                       methods=args.methods, tau=args.tau, limit=args.limit, resume=not args.no_resume,
                       models=_load_models(args))
    print_bench(result)
    print(f"written to {args.out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
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


if __name__ == "__main__":
    sys.exit(main())
