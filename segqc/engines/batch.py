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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from segqc.data.case import Case
from segqc.data.errors import CaseError
from segqc.data.layouts import CaseRef

__all__ = ["run_batch", "BatchSummary", "LocalEngine", "read_rows", "failure_reason", "per_case", "load_case",
           "score_loaded", "EXIT_OK", "EXIT_PARTIAL", "EXIT_ALL_FAILED", "EXIT_INTERRUPTED"]

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


def per_case(fn: Callable[[Case], dict]) -> Callable[[list[Case]], list[dict | Exception]]:
    """A scorer of case lists from a function of one case (its exception in the case's place)."""
    def score(cases: list[Case]) -> list[dict | Exception]:
        out: list[dict | Exception] = []
        for case in cases:
            try:
                out.append(fn(case))
            except Exception as e:  # noqa: BLE001 — becomes this case's error row
                out.append(e)
        return out

    return score


class LocalEngine:
    """Cases in this process, ``batch_size`` at a time (batches let network methods use a GPU well).

    An engine turns the cases to do into ``(ref, row)`` pairs, in their order; a row is the
    scorer's dict for a case, or the exception that case raised. ``make_scorer`` is called
    once, where the scoring runs (here: this process; `segqc.engines.ray_engine`: each actor).
    """

    def __init__(self, batch_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch size must be ≥ 1, got {batch_size}")
        self.batch_size = int(batch_size)

    def rows(self, refs: Sequence[CaseRef], make_scorer: Callable[[], Callable], *,
             require_mask: bool = True) -> Iterator[tuple[CaseRef, dict | Exception]]:
        score = make_scorer()
        for start in range(0, len(refs), self.batch_size):
            chunk = refs[start:start + self.batch_size]
            loaded = [load_case(ref, require_mask) for ref in chunk]
            yield from zip(chunk, score_loaded(score, loaded))


def load_case(ref: CaseRef, require_mask: bool) -> Case | Exception:
    """The case, or why it cannot be read."""
    try:
        return ref.load(require_mask=require_mask)
    except Exception as e:  # noqa: BLE001 — becomes this case's error row
        return e


def score_loaded(score: Callable[[list[Case]], list], loaded: list[Case | Exception]) -> list[dict | Exception]:
    """Score the cases that could be read; those that could not keep their exception."""
    cases = [c for c in loaded if isinstance(c, Case)]
    try:
        results = iter(score(cases) if cases else [])
    except Exception as e:  # noqa: BLE001 — a scorer that fails as a whole fails each of its cases
        results = iter([e] * len(cases))
    return [next(results) if isinstance(c, Case) else c for c in loaded]


def run_batch(refs: Sequence[CaseRef], fn: Callable[[Case], dict] | None, out_csv: str | Path, *,
              columns: Sequence[str], require_mask: bool = True, resume: bool = True,
              description: str = "cases", quiet: bool = False, identity: dict | None = None,
              make_scorer: Callable[[], Callable] | None = None, engine=None) -> BatchSummary:
    """Score each case and append its row to ``out_csv``, as the rows come.

    Args:
        refs: cases to process (loaded one batch at a time, by the engine).
        fn: returns a dict of result columns for one case; whatever it raises for a
            bad case becomes that case's error row. Or, instead:
        make_scorer: returns a function of a list of cases → a dict or an exception per
            case (built where the engine scores, e.g. once per Ray actor).
        columns: result columns, in order; ``case_id``, ``group``, ``status`` and
            ``error`` are added in front.
        resume: skip ids already in ``out_csv``; otherwise the file is overwritten.
        identity: what the rows depend on (bundle hash, options…), JSON-able; resuming
            a file written with another identity raises ValueError.
        engine: `LocalEngine` (default) or `segqc.engines.ray_engine.RayEngine`.
    """
    from segqc.ui import progress as progress_bar

    if make_scorer is None:
        make_scorer = partial(per_case, fn)
    engine = engine or LocalEngine()
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    header = ["case_id", "group", "status", "error", *columns]
    repeated = sorted(cid for cid, n in Counter(r.case_id for r in refs).items() if n > 1)
    if repeated:
        raise ValueError(f"case ids must be unique; repeated: {repeated[:5]}")
    done = _resume(out_csv, header, identity or {}) if resume else set()
    if not resume:
        out_csv.unlink(missing_ok=True)
        write_identity(out_csv, identity or {})
    todo = [r for r in refs if r.case_id not in done]
    summary = BatchSummary(len(refs), 0, 0, len(refs) - len(todo), out_csv)
    new_file = not out_csv.exists()
    with open(out_csv, "a", newline="") as f, progress_bar(disable=quiet, remaining=True) as progress:
        if new_file:
            f.write(format_row(header, dict(zip(header, header))))
        task = progress.add_task(description, total=len(todo))
        for ref, result in engine.rows(todo, make_scorer, require_mask=require_mask):
            row = {"case_id": ref.case_id, "group": ref.group or ""}
            if isinstance(result, BaseException):
                reason = failure_reason(result)
                row.update(status="error", error=reason)
                summary.n_failed += 1
                # stderr, so the reason is seen even when stdout is piped into a file
                if quiet:
                    print(f"segqc: case {ref.case_id} failed: {reason}", file=sys.stderr)
                else:
                    progress.console.print(f"[red]segqc: case {ref.case_id} failed:[/red] {reason}", highlight=False)
            else:
                row.update(result, status="ok")
                summary.n_done += 1
            # one write per row, so an interrupted run leaves at most one torn row (redone on resume)
            f.write(format_row(header, row))
            f.flush()
            progress.advance(task)
    return summary


def format_row(header: Sequence[str], row: dict) -> str:
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=list(header), extrasaction="ignore").writerow(
        {k: _fmt(v).replace("\n", " ").replace("\r", " ") for k, v in row.items()})
    return buf.getvalue()


def _identity_path(out_csv: Path) -> Path:
    return out_csv.with_name(out_csv.stem + ".resume.json")


def write_identity(out_csv: Path, identity: dict) -> None:
    tmp = _identity_path(out_csv).with_suffix(".tmp")
    tmp.write_text(json.dumps(identity, indent=1, sort_keys=True, default=str))
    tmp.replace(_identity_path(out_csv))


def _resume(out_csv: Path, header: list[str], identity: dict) -> set[str]:
    """Ids already done in ``out_csv``; keeps only whole, parsable ok rows (the rest is redone)."""
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
    if not out_csv.exists():
        write_identity(out_csv, identity)
        return set()
    id_path = _identity_path(out_csv)
    try:
        recorded = json.loads(id_path.read_text()) if id_path.exists() else None
    except (OSError, ValueError):
        recorded = None
    if recorded != identity:
        changed = ["its record"] if not isinstance(recorded, dict) else \
            sorted(k for k in set(identity) | set(recorded) if recorded.get(k) != identity.get(k))
        raise ValueError(f"{out_csv} holds the rows of another run (differs in: {', '.join(changed)}); "
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
