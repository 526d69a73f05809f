"""Run a function over many cases without losing anything.

Each case's row is appended to the CSV as soon as it is produced, so an interrupted
run resumes where it stopped (cases whose id is already in the file are skipped). A
case that fails — for any reason — gets a row with ``status=error`` and the reason, the
reason is also printed on stderr, and the batch goes on.

Resuming is safe, not blind: beside the CSV, ``<name>.resume.json`` records what the
rows depend on (the bundle's hash, the options); a later run with other inputs is
refused instead of mixing two runs' answers, and a row torn by an interrupted write
(or one that does not parse) is dropped and done again.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segqc.case import Case
from segqc.errors import CaseError
from segqc.io.layouts import CaseRef

__all__ = ["run_batch", "BatchSummary", "read_rows", "failure_reason", "EXIT_OK", "EXIT_PARTIAL", "EXIT_ALL_FAILED",
           "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_ALL_FAILED, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 3, 130


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


def failure_reason(e: BaseException) -> str:
    """One line that says why a case failed, for its row and for stderr."""
    if isinstance(e, CaseError):
        return e.reason
    if isinstance(e, MemoryError):
        return "not enough memory for this case (see the README's memory table; SEGQC_MAX_VOXELS limits case size)"
    if isinstance(e, (ValueError, OSError)):
        return str(e) or type(e).__name__
    # a defect of segqc rather than of the input: say so, but keep the batch going
    return f"internal error ({type(e).__name__}: {e}); please report it"


def run_batch(refs: Sequence[CaseRef], fn: Callable[[Case], dict], out_csv: str | Path, *,
              columns: Sequence[str], require_mask: bool = True, resume: bool = True,
              description: str = "cases", quiet: bool = False, identity: dict | None = None) -> BatchSummary:
    """Apply ``fn`` to each loaded case and append its row to ``out_csv``.

    Args:
        refs: cases to process (loaded one at a time).
        fn: returns a dict of result columns for one case; whatever it raises for a
            bad case becomes that case's error row.
        columns: result columns, in order; ``case_id``, ``group``, ``status`` and
            ``error`` are added in front.
        resume: skip ids already in ``out_csv``; otherwise the file is overwritten.
        identity: what the rows depend on (bundle hash, options…), JSON-able; resuming
            a file written with another identity raises ValueError.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    header = ["case_id", "group", "status", "error", *columns]
    ids = [r.case_id for r in refs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"case ids must be unique; repeated: {dup}")
    done = _resume(out_csv, header, identity or {}) if resume else set()
    if not resume:
        out_csv.unlink(missing_ok=True)
        _write_identity(out_csv, identity or {})
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
            except Exception as e:  # noqa: BLE001 — one bad case never stops the batch
                reason = failure_reason(e)
                row = {"case_id": ref.case_id, "group": ref.group or "", "status": "error", "error": reason}
                summary.n_failed += 1
                # stderr, so the reason is seen even when stdout is piped into a file
                if quiet:
                    print(f"segqc: case {ref.case_id} failed: {reason}", file=sys.stderr)
                else:
                    progress.console.print(f"[red]segqc: case {ref.case_id} failed:[/red] {reason}", highlight=False)
            # one write per row, so an interrupted run leaves at most one torn row (redone on resume)
            f.write(_format_row(header, row))
            f.flush()
            progress.advance(task)
    return summary


def _format_row(header: Sequence[str], row: dict) -> str:
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=list(header), extrasaction="ignore").writerow(
        {k: _fmt(v).replace("\n", " ").replace("\r", " ") for k, v in row.items()})
    return buf.getvalue()


def _identity_path(out_csv: Path) -> Path:
    return out_csv.with_name(out_csv.stem + ".resume.json")


def _write_identity(out_csv: Path, identity: dict) -> None:
    tmp = _identity_path(out_csv).with_suffix(".tmp")
    tmp.write_text(json.dumps(identity, indent=1, sort_keys=True, default=str))
    tmp.replace(_identity_path(out_csv))


def _resume(out_csv: Path, header: list[str], identity: dict) -> set[str]:
    """Ids already done in ``out_csv``; keeps only whole, parsable ok rows (the rest is redone)."""
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
    if not out_csv.exists():
        _write_identity(out_csv, identity)
        return set()
    id_path = _identity_path(out_csv)
    try:
        recorded = json.loads(id_path.read_text()) if id_path.exists() else None
    except (OSError, ValueError):
        recorded = None
    if recorded != identity:
        changed = sorted(k for k in set(identity) | set(recorded or {})
                         if (recorded or {}).get(k) != identity.get(k)) if isinstance(recorded, dict) else ["record"]
        raise ValueError(f"{out_csv} holds the rows of another run (differs in: {', '.join(changed) or 'record'}); "
                         "resuming would mix two runs' answers: use another --out, or --no-resume to start over")
    with open(out_csv, newline="", errors="replace") as f:
        text = f.read()
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or lines[0] != header:
        raise ValueError(f"{out_csv} was written with other columns; use another output folder or --no-resume")
    complete = text.endswith("\n")  # a last row without its newline was cut by an interrupted write
    rows = lines[1:] if complete else lines[1:-1]
    good = [dict(zip(header, r)) for r in rows if len(r) == len(header) and r[2] == "ok"]
    if len(good) != len(lines) - 1:  # failed, torn or unparsable rows are redone: one row per case
        _rewrite(out_csv, header, good)
    return {r["case_id"] for r in good}


def _rewrite(path: Path, header: Sequence[str], rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(header), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
