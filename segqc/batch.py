"""Run a function over many cases without losing anything.

Each case's row is appended to the CSV as soon as it is produced, so an interrupted
run resumes where it stopped (cases whose id is already in the file are skipped). A
case that fails gets a row with ``status=error`` and the reason, the reason is also
printed on stderr, and the batch goes on.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segqc.case import Case
from segqc.errors import CaseError
from segqc.io.layouts import CaseRef

__all__ = ["run_batch", "BatchSummary", "read_rows", "EXIT_OK", "EXIT_PARTIAL", "EXIT_ALL_FAILED"]

EXIT_OK, EXIT_ALL_FAILED, EXIT_PARTIAL = 0, 1, 3


@dataclass
class BatchSummary:
    n_total: int
    n_done: int
    n_failed: int
    n_skipped: int  # already in the output file from an earlier run
    out_csv: Path

    @property
    def exit_code(self) -> int:
        """0 all good; 3 some cases failed; 1 every case failed."""
        if self.n_failed == 0:
            return EXIT_OK
        return EXIT_ALL_FAILED if self.n_done == 0 and self.n_skipped == 0 else EXIT_PARTIAL


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def run_batch(refs: Sequence[CaseRef], fn: Callable[[Case], dict], out_csv: str | Path, *,
              columns: Sequence[str], require_mask: bool = True, resume: bool = True,
              description: str = "cases", quiet: bool = False) -> BatchSummary:
    """Apply ``fn`` to each loaded case and append its row to ``out_csv``.

    Args:
        refs: cases to process (loaded one at a time).
        fn: returns a dict of result columns for one case; may raise CaseError /
            ValueError for a bad case.
        columns: result columns, in order; ``case_id``, ``group``, ``status`` and
            ``error`` are added in front.
        resume: skip ids already in ``out_csv``; otherwise the file is overwritten.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    header = ["case_id", "group", "status", "error", *columns]
    done: set[str] = set()
    if resume and out_csv.exists():
        existing = read_rows(out_csv)
        with open(out_csv, newline="") as f:
            old_header = next(csv.reader(f), [])
        if old_header != header:
            raise ValueError(f"{out_csv} was written with other columns; use another output folder or --no-resume")
        done = {r["case_id"] for r in existing if r.get("status") == "ok"}
        # failed rows are retried: drop them so the file keeps one row per case
        if len(done) != len(existing):
            _rewrite(out_csv, header, [r for r in existing if r.get("status") == "ok"])
    elif out_csv.exists():
        out_csv.unlink()
    todo = [r for r in refs if r.case_id not in done]
    summary = BatchSummary(len(refs), 0, 0, len(refs) - len(todo), out_csv)
    new_file = not out_csv.exists()
    with open(out_csv, "a", newline="") as f, Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        disable=quiet, console=Console(stderr=True),
    ) as progress:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        task = progress.add_task(description, total=len(todo))
        for ref in todo:
            row = {"case_id": ref.case_id, "group": ref.group or ""}
            try:
                case = ref.load(require_mask=require_mask)
                row.update(fn(case))
                row["status"] = "ok"
                summary.n_done += 1
            except (CaseError, ValueError, FileNotFoundError, OSError) as e:
                reason = e.reason if isinstance(e, CaseError) else str(e)
                row.update(status="error", error=reason)
                summary.n_failed += 1
                # stderr, so the reason is seen even when stdout is piped into a file
                if quiet:
                    print(f"segqc: case {ref.case_id} failed: {reason}", file=sys.stderr)
                else:
                    progress.console.print(f"[red]segqc: case {ref.case_id} failed:[/red] {reason}", highlight=False)
            writer.writerow({k: _fmt(v) for k, v in row.items()})
            f.flush()
            progress.advance(task)
    return summary


def _rewrite(path: Path, header: Sequence[str], rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(header), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
