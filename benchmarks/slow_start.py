"""How many epochs a reference-segmenter network gets when its first seconds are slow.

`segqc.nets.schedule.BudgetedSchedule` fits each fold network's run to its time budget after
every epoch. A few seconds of another job on the cores during the first epoch make that
epoch slow; if the schedule could only shorten, the whole run kept the length the slow epoch
allowed. Now it may lengthen again while the learning rate is still climbing. This trains the
same network three times on real reference cases, in the same budget: on idle cores, with
``--busy`` seconds of two CPU-bound processes at its start, and the same again with the earlier
rule (never lengthen). Reference ids only; nothing is judged.

    python benchmarks/slow_start.py kvasir --cases 120 --epochs 30 --minutes 1.5 --busy 10
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from contextlib import contextmanager

import numpy as np
from common import data_dir, read_split

from segqc.components.segmenter import CrossFittedSegmenter
from segqc.data.labels import to_index
from segqc.nets.schedule import BudgetedSchedule
from segqc.pipeline.fit import reference_cases
from segqc.plan.preprocess import preprocess


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


@contextmanager
def busy_cores(seconds: float, n: int = 2):
    """``n`` CPU-bound processes for ``seconds`` (0: none), as another job on the machine."""
    procs = [mp.Process(target=_burn, args=(seconds,)) for _ in range(n if seconds > 0 else 0)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.join()


@contextmanager
def never_lengthen(on: bool):
    """The schedule's rule before this stop: a re-fit only ever shortens the run."""
    original = BudgetedSchedule.warming_up
    if on:
        BudgetedSchedule.warming_up = lambda self: False
    try:
        yield
    finally:
        BudgetedSchedule.warming_up = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["kvasir", "hippocampus"])
    ap.add_argument("--cases", type=int, default=120, help="reference cases to train on")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--minutes", type=float, default=1.5, help="the network's time budget")
    ap.add_argument("--busy", type=float, default=10.0, help="seconds of busy cores at the start")
    args = ap.parse_args()
    ids = read_split(args.dataset)["reference"][:args.cases]
    cases, _, _, plan = reference_cases(data_dir(args.dataset), ids=ids)
    data = [(im, to_index(mk, plan.labels)) for im, mk, _ in (preprocess(c, plan) for c in cases)]
    print(f"{len(data)} {args.dataset} reference cases, {args.epochs} epochs in {args.minutes} min, "
          f"busy cores for the first {args.busy:g} s where said\n\n| run | epochs | planned | capped by time | "
          "train seconds |\n|---|---|---|---|---|")
    for name, busy, old_rule in (("idle cores", 0.0, False), ("busy start, schedule now", args.busy, False),
                                 ("busy start, never lengthened (before)", args.busy, True)):
        seg = CrossFittedSegmenter(n_folds=1, epochs=args.epochs, max_minutes=args.minutes, device="cpu")
        with never_lengthen(old_rule), busy_cores(busy):
            seg.fit(data, len(plan.labels), np.random.default_rng(0), case_ids=[c.case_id for c in cases],
                    snapshot_epochs=())
        h = seg.history_[0]
        print(f"| {name} | {h['epochs']} | {h['planned_epochs']} | {h['capped_by_time']} | {h['train_seconds']} |",
              flush=True)


if __name__ == "__main__":
    main()
