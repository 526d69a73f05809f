"""Rich tables of QC accuracy and of dataset-level estimates, as the command line prints them.

`format_table` / `short_table` build a table; the ``print_*`` functions print one on
stdout (beside the command's other output, where a pipe into a file keeps it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from segqc.evaluation.scores import METRIC_KEYS

if TYPE_CHECKING:  # rich is imported when a table is built
    from rich.table import Table

__all__ = ["format_table", "short_table", "print_eval", "print_dataset", "print_bench"]


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def format_table(result: dict[str, Any]) -> "Table":
    """A rich table of an `evaluate` result: one row for overall and one per group."""
    from rich.table import Table

    table = Table(title=f"QC evaluation (tau = {result.get('tau')})")
    table.add_column("set", style="bold")
    for key in METRIC_KEYS:
        table.add_column(key, justify="right")

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return str(int(v))
        return f"{float(v):.3f}"

    rows = [("overall", result["overall"]), *result.get("groups", {}).items()]
    for name, row in rows:
        table.add_row(str(name), *(cell(row.get(k)) for k in METRIC_KEYS))
    return table


def short_table(result: dict[str, Any], title: str) -> "Table":
    """The overall row of an `evaluate` result, the columns a reader looks at first (`segqc demo`)."""
    from rich.table import Table

    o = result["overall"]
    t = Table(title=title)
    for col in ("cases", "Pearson r", "Spearman ρ", "MAE", "AUROC (Dice < τ)", "AURC", "ECE", "true mean Dice",
                "pred mean Dice"):
        t.add_column(col, justify="right")
    t.add_row(str(o["n"]), _fmt(o["pearson"]), _fmt(o["spearman"]), _fmt(o["mae"]), _fmt(o["auroc"]),
              _fmt(o["aurc"]), _fmt(o["ece"]), _fmt(o["mean_true_dice"]), _fmt(o["mean_pred_dice"]))
    return t


def print_eval(result: dict[str, Any], title: str) -> None:
    """`format_table` of an `evaluate` result under ``title`` (`segqc evaluate`)."""
    from segqc.ui import console

    table = format_table(result)
    table.title = title
    console(stderr=False).print(table)


def print_dataset(dataset: dict[str, Any]) -> None:
    """Estimated mean Dice and pass share per group with their intervals (`segqc predict`, `merge`, `demo`)."""
    from rich.table import Table

    from segqc.ui import console

    systematic = {r.get("systematic_error") for r in dataset["groups"].values()} - {None}
    t = Table(title="estimated model performance on these cases (95 % intervals: "
              + (f"the cases' spread ± QC's systematic error {systematic.pop():.3f})" if len(systematic) == 1
                 else "the cases' spread only, bootstrap)"))
    for col in ("group", "n", "mean Dice", "share Dice ≥ τ", "true mean Dice"):
        t.add_column(col)
    for g, r in dataset["groups"].items():
        lo, hi = r["mean_dice_ci"]
        plo, phi = r["share_pass_ci"]
        t.add_row(g, str(r["n"]), f"{r['mean_dice']:.3f} [{lo:.3f}, {hi:.3f}]",
                  f"{r['share_pass']:.3f} [{plo:.3f}, {phi:.3f}]",
                  f"{r['true_mean_dice']:.3f}" if "true_mean_dice" in r else "–")
    out = console(stderr=False)
    out.print(t)
    shift = dataset.get("shift")
    if shift and shift.get("score") == shift.get("score"):  # not NaN
        out.print(f"shift score {shift['score']:.2f}: share of these images unlike the reference images "
                  f"(about {shift['expected_in_distribution']:.2f} for images like them)")
        if shift.get("warning"):
            out.print(f"[bold red]warning:[/bold red] {shift['warning']}")


def print_bench(result: dict[str, Any]) -> None:
    """All methods of a `segqc bench` result side by side: overall, deployed model, dataset level."""
    from rich.table import Table

    from segqc.ui import console

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
    console(stderr=False).print(t)
