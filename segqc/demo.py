"""`segqc demo`: the whole product on the real sample data shipped inside segqc.

For each embedded dataset (Kvasir-SEG polyps, 2D RGB; MSD hippocampus, 3D MRI with two
labels): fit QC on the reference cases, judge real candidate masks of mixed quality
(predictions of trained networks at several checkpoints), measure how right the QC was
— the sample also ships the expert masks of the candidates — and write the HTML report
a reviewer would open.

The configuration is small on purpose so that both datasets take a few minutes on a
2-core laptop: one method (`features`, the best of the benchmark table), a reference
segmenter trained for a dozen epochs, few bad masks per case. A full `segqc fit` uses
far more of each; the demo shows the product, the benchmarks measure it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from segqc.engines.batch import EXIT_OK, EXIT_PARTIAL

__all__ = ["run_demo", "DEMO_PARAMS", "DEMO_METHODS"]

DEMO_METHODS: tuple[str, ...] = ("features",)

# Small configs so the demo runs in a few minutes on a 2-core laptop (measured in the README).
DEMO_PARAMS = {
    "segmenter": {"epochs": 12, "max_minutes": 0.75, "snapshot_epochs": [1, 2, 4, 8]},
    "features": {"pairs_per_case": 4, "n_estimators": 200},
    # used only when asked for with --methods
    "cnn": {"epochs": 4, "pairs_per_case": 4, "max_minutes": 0.75},
    "autoencoder": {"epochs": 20, "max_minutes": 0.5},
}
# bad masks per held-out reference case for calibration (`segqc fit` uses 8)
DEMO_CALIBRATION_PAIRS = 4


def run_demo(*, out: str | Path = "runs/demo", dataset: str = "both", device: str = "auto",
             methods: tuple[str, ...] = DEMO_METHODS, n_threads: int | None = None) -> int:
    """Fit, judge, evaluate and report on the embedded sample; returns the exit code.

    Args:
        out: output folder (``<dataset>/{bundle,qc,report.html,summary.json}``).
        dataset: ``kvasir``, ``hippocampus`` or ``both``.
        methods: QC methods to fit (`DEMO_PARAMS` holds their small settings).
        n_threads: torch and LightGBM CPU threads (None: their defaults); 1 on a shared machine.
    """
    from segqc import api
    from segqc.evaluation.tables import print_dataset, short_table
    from segqc.report import write_report
    from segqc.ui import console as ui_console
    from segqc.utils import torch_threads

    console = ui_console(stderr=False)
    started = time.time()
    out = Path(out)
    root = api.sample_data_dir()
    names = ["kvasir", "hippocampus"] if dataset == "both" else [dataset]
    code = EXIT_OK
    reports = []
    params = json.loads(json.dumps(DEMO_PARAMS))
    if n_threads is not None:  # LightGBM's own threads too: they spin badly on a shared CPU
        params["features"]["n_jobs"] = int(n_threads)
    with torch_threads(n_threads):
        for name in names:
            t0 = time.time()
            console.rule(f"[bold]{name}[/bold]")
            bundle_dir, run_dir = out / name / "bundle", out / name / "qc"
            api.fit(reference=root / name / "reference", out=bundle_dir, methods=methods, device=device,
                    method_params=json.loads(json.dumps(params)),  # fit may consume its dicts
                    calibration_pairs=DEMO_CALIBRATION_PAIRS, max_slice_size=64 if name == "kvasir" else 128)
            summary, dataset_est = api.predict(bundle=bundle_dir, data=root / name / "candidates.csv", out=run_dir,
                                               resume=False)
            print_dataset(dataset_est)
            result = api.evaluate_csv(table=run_dir / "predictions.csv", out=run_dir / "evaluation", p_col="p_pass",
                                      group_col=None, tau=0.8, title=f"demo {name}")
            console.print(short_table(result, f"{name}: QC accuracy against the expert masks"))
            report = write_report(run_dir, out=out / name / "report.html",
                                  title=f"segqc demo — {name} candidates judged without their expert masks")
            reports.append(report)
            if summary.n_failed:
                code = EXIT_PARTIAL
            console.print(f"{name}: done in {time.time() - t0:.0f} s → {run_dir}/predictions.csv")
            (out / name / "summary.json").write_text(json.dumps({"evaluation": result, "dataset": dataset_est},
                                                                indent=1))
    console.print(f"[bold green]demo finished[/bold green] in {time.time() - started:.0f} s: results in "
                  f"{out.resolve()}")
    console.print("Open the report(s) in a web browser (they work offline):")
    for r in reports:
        console.print(f"  {r.resolve().as_uri()}", highlight=False, soft_wrap=True)
    return code

