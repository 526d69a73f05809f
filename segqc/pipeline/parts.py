"""Split a batch into parts for schedulers without Ray, and join the parts' outputs.

The convention nnU-Net users know (``--num-parts K --part-id i``): part ``i`` judges the
cases ``i, i + K, i + 2K, …`` of the listing, into its own output folder, so no two
workers ever write the same file (Slurm array task ``i``, Kubernetes indexed job ``i``).
`merge_parts` checks that the K folders are the K parts of one run (same bundle, same
options, every part present and finished), joins their rows in the listing's order,
gathers their maps, and computes ``dataset.json`` from all cases at once — the bootstrap
over the whole batch, not an average of parts — so the merged folder holds what a single
run over every case would have written.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["select_part", "merge_parts"]


def select_part(refs: Sequence, num_parts: int, part_id: int) -> list:
    """The cases of part ``part_id`` of ``num_parts`` (every ``num_parts``-th case, from ``part_id``)."""
    if num_parts < 1:
        raise ValueError(f"--num-parts must be ≥ 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ValueError(f"--part-id must be in 0..{num_parts - 1}, got {part_id}")
    return list(refs)[part_id::num_parts]


def _read_part(folder: Path) -> dict:
    """A finished part's identity, run record, header and rows; refuses an unfinished or foreign folder."""
    from segqc.engines.batch import read_rows

    csv_path = folder / "predictions.csv"
    ident_path = folder / "predictions.resume.json"
    run_path = folder / "run.json"
    for p in (csv_path, ident_path, run_path):
        if not p.exists():
            why = "not finished (no run.json): run its command again to complete it" if p == run_path else \
                f"not a `segqc predict` folder (no {p.name})"
            raise ValueError(f"part {folder} is {why}")
    ident = json.loads(ident_path.read_text())
    run = json.loads(run_path.read_text())
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f), [])
    return {"folder": folder, "identity": ident, "run": run, "header": header, "rows": read_rows(csv_path)}


def _check_parts(parts: list[dict]) -> int:
    """The parts' ``num_parts``, after checking they are all the parts of one run."""
    first = parts[0]["identity"]
    common = {k: v for k, v in first.items() if k != "part_id"}
    for p in parts[1:]:
        diff = sorted(k for k in set(common) | set(p["identity"]) - {"part_id"}
                      if p["identity"].get(k) != common.get(k))
        if diff:
            raise ValueError(f"{p['folder']} is not a part of the same run as {parts[0]['folder']} "
                             f"(differs in: {', '.join(diff)})")
        if p["header"] != parts[0]["header"]:
            raise ValueError(f"{p['folder']} has other columns than {parts[0]['folder']}")
    k = int(first.get("num_parts", 1))
    ids = sorted(int(p["identity"].get("part_id", 0)) for p in parts)
    missing = sorted(set(range(k)) - set(ids))
    if missing or len(ids) != len(set(ids)):
        raise ValueError(f"expected the {k} parts 0..{k - 1} once each; missing {missing}, given {ids}")
    return k


def _listing_order(run: dict) -> dict[str, int] | None:
    """Position of each case id in the run's listing (the order a single run writes), if still listable."""
    from segqc.data.layouts import load_dataset

    opts = run.get("options", {})
    try:
        refs = load_dataset(opts["data"], layout=opts.get("layout", "auto"), masks=opts.get("masks"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {r.case_id: i for i, r in enumerate(refs)}


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)  # same file system: no copy of the maps of 100,000 cases
    except OSError:
        shutil.copy2(src, dst)


def _gather_maps(part: Path, out: Path) -> None:
    """Every map file a part wrote (also those no column names, e.g. model_uncertainty's entropy) into ``out``."""
    maps = part / "maps"
    for src in maps.rglob("*") if maps.is_dir() else ():
        if src.is_file():
            _link_or_copy(src, out / src.relative_to(part))


def _rebased(row: dict, map_cols: list[str], part: Path, out: Path) -> dict:
    """The row with its map paths under ``out/maps``, as a single run into ``out`` writes them."""
    row = dict(row)
    old, new = part.absolute() / "maps", out.absolute() / "maps"
    for col in map_cols:
        if not row.get(col):
            continue
        src = Path(row[col])
        if not src.is_relative_to(old) or not src.exists():
            raise ValueError(f"map {src} of case {row['case_id']} is not in part {part} (was the folder moved?)")
        row[col] = str(new / src.relative_to(old))
    return row


def merge_parts(parts: Sequence[str | Path], out: str | Path) -> tuple[dict, dict]:
    """Join the output folders of ``segqc predict --num-parts K --part-id i`` (i = 0..K-1) into ``out``.

    Returns the merged counts and the dataset estimate (written to ``out/dataset.json``).
    """
    from segqc.engines.batch import format_row, write_identity
    from segqc.pipeline.outputs import write_dataset
    from segqc.pipeline.records import write_run_record

    started = time.time()
    out = Path(out)
    folders = [Path(p) for p in parts]
    if not folders:
        raise ValueError("no part folders given")
    if any(f.resolve() == out.resolve() for f in folders):
        raise ValueError(f"--out {out} is one of the parts; merge into a new folder")
    read = sorted((_read_part(f) for f in folders), key=lambda p: int(p["identity"].get("part_id", 0)))
    k = _check_parts(read)
    header = read[0]["header"]
    map_cols = [c for c in header if c.endswith(("_pgt", "_error"))]  # outputs.columns
    order = _listing_order(read[0]["run"])
    # without the listing (data moved), part i's j-th row was case i + j·K of it
    rows = [(order.get(r["case_id"], len(order)) if order else p_idx + j * k, r, p["folder"])
            for p_idx, p in enumerate(read) for j, r in enumerate(p["rows"])]
    rows.sort(key=lambda t: t[0])
    out.mkdir(parents=True, exist_ok=True)
    for p in read:
        _gather_maps(p["folder"], out)
    tmp = out / "predictions.csv.tmp"
    with open(tmp, "w", newline="") as f:
        f.write(format_row(header, dict(zip(header, header))))
        for _, row, folder in rows:
            f.write(format_row(header, _rebased(row, map_cols, folder, out)))
    tmp.replace(out / "predictions.csv")
    identity = {**read[0]["identity"], "num_parts": 1, "part_id": 0}  # what a single run's folder holds
    write_identity(out / "predictions.csv", identity)
    run = read[0]["run"]
    bundle = _bundle(run)
    dataset = write_dataset(out, bundle.tau, "dice_true" in header, bundle.appearance, bundle.calibrators,
                            bundle.info.get("segmenter"))
    n_ok = sum(r["status"] == "ok" for _, r, _ in rows)
    counts = {"n_ok": n_ok, "n_failed": len(rows) - n_ok, "n_skipped": 0}
    write_run_record(out, "predict", {**run.get("options", {}), "num_parts": 1, "part_id": 0,
                                      "merged_from": [str(f.resolve()) for f in folders]}, started,
                     {"bundle_hash": run.get("bundle_hash"), **counts})
    return counts, dataset


def _bundle(run: dict):
    """The parts' bundle: its pass threshold, reference appearance and calibrators make ``dataset.json``."""
    from segqc.pipeline.bundle import load_bundle

    bundle = run.get("options", {}).get("bundle")
    if not bundle:
        raise ValueError("the parts' run.json names no bundle: cannot tell the pass threshold tau")
    return load_bundle(bundle)
