"""Cases in, run records out: listing and loading a dataset for a command, and ``run.json``."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segqc import ui
from segqc.data.case import Case
from segqc.data.layouts import CaseRef, load_dataset
from segqc.engines.batch import failure_reason

__all__ = ["list_cases", "load_cases", "where", "write_run_record"]


def list_cases(data, *, layout: str = "auto", masks=None, require_masks: bool = True) -> list[CaseRef]:
    """The cases of a dataset folder or manifest (or a list of `CaseRef` as it is)."""
    if isinstance(data, (list, tuple)):
        return list(data)
    # absolute paths: a case read by another process (a Ray actor on another machine) finds the same file
    return load_dataset(Path(data).absolute(), layout=layout, masks=None if masks is None else Path(masks).absolute(),
                        require_masks=require_masks)


def load_cases(refs: Sequence[CaseRef], *, require_mask: bool = True, description: str = "loading",
               ) -> tuple[list[Case], list[tuple[str, str]]]:
    """Load every case; bad ones are reported (stderr) and returned as ``(case_id, reason)``."""
    cases, failed = [], []
    console = ui.console()
    with ui.progress(console) as bar:
        task = bar.add_task(description, total=len(refs))
        for ref in refs:
            try:
                cases.append(ref.load(require_mask=require_mask))
            except Exception as e:  # noqa: BLE001 — one unreadable case never stops the run
                reason = failure_reason(e)
                failed.append((ref.case_id, reason))
                console.print(f"[red]segqc: case {ref.case_id} skipped:[/red] {reason}", highlight=False)
            bar.advance(task)
    return cases, failed


def where(path) -> str | None:
    """An absolute path for run records (in-memory case lists have none)."""
    return None if path is None or isinstance(path, (list, tuple)) else str(Path(path).resolve())


def write_run_record(out: Path, command: str, options: dict, started: float, extra: dict | None = None) -> Path:
    """A machine-readable record of a run: versions, device, options, runtime."""
    import platform

    import torch

    from segqc import __version__

    record = {"command": command, "segqc": __version__, "python": platform.python_version(),
              "torch": torch.__version__, "numpy": np.__version__, "cuda": torch.cuda.is_available(),
              "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.items()},
              "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
              "runtime_s": round(time.time() - started, 2), **(extra or {})}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    return path
