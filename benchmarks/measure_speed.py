"""How fast `features` measures many candidates, in one process and on worker processes.

`segqc fit` measures every training pair (~11,000 on Kvasir) and scores every calibration
pair (~4,000) with `features`; both go through `segqc.components.quality_features.measure_candidates`,
which shares the candidates of one image out to ``n_jobs`` worker processes. This script
times that on real reference cases with a fitted bundle's segmenter and regressor, for each
``--jobs``, and checks that every setting gives the very same rows and answers:

* making the candidates: `sample_corruptions` of each case's expert mask, timed as well (the fit makes its
  corrupted training pairs this way, in one process);
* ``measure``: the feature rows of ``--cases`` reference cases × ``--per-case`` bad masks
  (`segqc.data.corrupt`, the fit's training pairs), the segmenter's probabilities computed
  once beforehand (as the fit has them);
* ``score``: `score_batch` of the same candidates by 256 (as the fit's calibration does:
  segmenter pass per image, measuring, one booster call).

Reference ids only (the fit's own cases); nothing is fitted.

    .venv/bin/python benchmarks/measure_speed.py kvasir runs/par/kvasir/bundle --jobs 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import add_threads_option, data_dir, set_threads

from segqc.components.quality_features import measure_candidates
from segqc.data.corrupt import sample_corruptions
from segqc.methods.base import TrainingPair
from segqc.pipeline.bundle import load_bundle
from segqc.pipeline.fit import raw_scores, reference_cases


def _matrix(rows: list[list[dict]]) -> np.ndarray:
    """Rows of every candidate and label as one array (missing features NaN), to compare settings."""
    flat = [r for case_rows in rows for r in case_rows]
    names = sorted({k for r in flat for k in r})
    return np.array([[r.get(k, np.nan) for k in names] for r in flat])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["kvasir", "hippocampus"])
    ap.add_argument("bundle", help="a fitted bundle with the features method")
    ap.add_argument("--cases", type=int, default=100, help="reference cases the bundle was fitted on")
    ap.add_argument("--per-case", type=int, default=12, help="bad masks per case")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="n_jobs settings to time")
    add_threads_option(ap)
    args = ap.parse_args()
    set_threads(args.threads)

    bundle = load_bundle(args.bundle, methods=["features"], device="cpu")
    method = bundle.methods["features"]
    fit_ids = bundle.info["fit_ids"][:args.cases]
    cases, _, _, _ = reference_cases(data_dir(args.dataset), ids=fit_ids)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    pairs = [TrainingPair(c, bad) for c in cases
             for bad, _ in sample_corruptions(c.mask, c.spacing, rng, args.per_case)]
    t_corrupt = time.perf_counter() - t0
    t0 = time.perf_counter()
    probas = {c.case_id: method.segmenter_proba(c) for c in cases}
    t_seg = time.perf_counter() - t0
    jobs = [(p.case, probas[p.reference_id]) for p in pairs]
    print(f"{args.dataset}: {len(cases)} reference cases, {len(pairs)} candidates; making them (corruptions of the "
          f"expert masks, one process, as the fit does) {1000 * t_corrupt / len(pairs):.1f} ms each; segmenter "
          f"probabilities {t_seg:.1f} s (once per image)")

    first_rows = first_raw = None
    print("| n_jobs | measure (s) | per candidate (ms) | score by 256 (s) | speed-up measure / score |\n"
          "|---|---|---|---|---|")
    base = None
    for n in args.jobs:
        t0 = time.perf_counter()
        rows = measure_candidates(jobs, method.labels_, method.ref_stats_, n_jobs=n)
        t_measure = time.perf_counter() - t0
        method.n_jobs = n
        method._image_cache = None  # every setting computes the segmenter's probabilities itself
        t0 = time.perf_counter()
        raw = raw_scores(method, pairs, f"scoring, n_jobs={n}")
        t_score = time.perf_counter() - t0
        if first_rows is None:
            first_rows, first_raw, base = rows, raw, (t_measure, t_score)
        elif not (np.array_equal(_matrix(rows), _matrix(first_rows), equal_nan=True)
                  and np.array_equal(raw, first_raw)):
            raise SystemExit(f"n_jobs={n} gave other rows or answers than n_jobs={args.jobs[0]}")
        print(f"| {n} | {t_measure:.1f} | {1000 * t_measure / len(jobs):.1f} | {t_score:.1f} | "
              f"{base[0] / t_measure:.2f} / {base[1] / t_score:.2f} |")
    print("every setting gave the same rows and answers")


if __name__ == "__main__":
    main()
