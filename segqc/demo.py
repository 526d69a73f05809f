"""`segqc demo`: the whole product on the real sample data shipped inside segqc.

For each embedded dataset (Kvasir-SEG polyps, 2D RGB; MSD hippocampus, 3D MRI with two
labels): fit QC on the reference cases, judge real candidate masks of mixed quality
(predictions of trained networks at several checkpoints), then — because the sample
also ships their expert masks — measure how right the QC was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from segqc.batch import EXIT_OK, EXIT_PARTIAL

__all__ = ["run_demo", "DEMO_PARAMS"]

# Small configs so the demo runs in a few minutes on a 2-core laptop.
DEMO_PARAMS = {
    "segmenter": {"epochs": 25, "max_minutes": 1.0, "snapshot_epochs": [1, 2, 4, 8, 16]},
    "features": {"pairs_per_case": 10, "n_estimators": 300},
    "cnn": {"epochs": 6, "pairs_per_case": 6, "max_minutes": 1.0},
    "autoencoder": {"epochs": 30, "max_minutes": 0.75},
}


def run_demo(*, out: str | Path = "runs/demo", dataset: str = "both", device: str = "auto",
             methods: tuple[str, ...] = ("features", "cnn", "autoencoder")) -> int:
    from rich.console import Console

    from segqc import api
    from segqc.cli import _print_dataset

    console = Console()
    out = Path(out)
    root = api.sample_data_dir()
    names = ["kvasir", "hippocampus"] if dataset == "both" else [dataset]
    code = EXIT_OK
    for name in names:
        t0 = time.time()
        console.rule(f"[bold]{name}[/bold]")
        bundle_dir, run_dir = out / name / "bundle", out / name / "qc"
        api.fit(reference=root / name / "reference", out=bundle_dir, methods=methods, device=device,
                method_params=DEMO_PARAMS, max_slice_size=64 if name == "kvasir" else 128)
        summary, dataset_est = api.predict(bundle=bundle_dir, data=root / name / "candidates.csv", out=run_dir,
                                           resume=False)
        _print_dataset(dataset_est)
        result = api.evaluate_csv(table=run_dir / "predictions.csv", out=run_dir / "evaluation", p_col="p_pass",
                                  group_col=None, tau=0.8, title=f"demo {name}")
        console.print(_short_table(result, f"{name}: QC accuracy against the expert masks"))
        if summary.n_failed:
            code = EXIT_PARTIAL
        console.print(f"{name}: done in {time.time() - t0:.0f} s → {run_dir}/predictions.csv")
        (out / name / "summary.json").write_text(json.dumps({"evaluation": result, "dataset": dataset_est}, indent=1))
    console.print(f"[bold green]demo finished[/bold green]: results in {out.resolve()}")
    return code


def _short_table(result: dict, title: str):
    from rich.table import Table

    o = result["overall"]
    t = Table(title=title)
    for col in ("cases", "Pearson r", "MAE", "AUROC (Dice < τ)", "AURC", "ECE", "true mean Dice", "pred mean Dice"):
        t.add_column(col, justify="right")
    f = (lambda v: "–" if v is None else f"{v:.3f}")
    t.add_row(str(o["n"]), f(o["pearson"]), f(o["mae"]), f(o["auroc"]), f(o["aurc"]), f(o["ece"]),
              f(o["mean_true_dice"]), f(o["mean_pred_dice"]))
    return t
