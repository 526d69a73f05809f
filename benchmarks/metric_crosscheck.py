"""segqc.metrics against MONAI on every prediction of a shared benchmark.

Usage: .venv/bin/python benchmarks/metric_crosscheck.py hippocampus   (or kvasir)

Prints the largest |ΔDice| and |ΔHD95| (mm) between segqc and MONAI's
`compute_dice` / `compute_hausdorff_distance(percentile=95, spacing=…)`, per label.
"""

import argparse
import time

import numpy as np
from common import DATASETS, benchmark_rows


def crosscheck(dataset: str) -> None:
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    from segqc import metrics

    refs = benchmark_rows(dataset)
    labels = [1, 2] if dataset == "hippocampus" else [1]
    n = len(labels) + 1
    worst_d = worst_h = 0.0
    t_segqc = t_monai = 0.0
    for ref in refs:
        case = ref.load()

        def onehot(m):
            return torch.nn.functional.one_hot(torch.from_numpy(m.astype(np.int64)), n).movedim(-1, 0)[None].float()

        t0 = time.perf_counter()
        dm = compute_dice(onehot(case.mask), onehot(case.truth), include_background=False)[0].numpy()
        hm = compute_hausdorff_distance(onehot(case.mask), onehot(case.truth), include_background=False,
                                        percentile=95, spacing=list(case.spacing))[0].numpy()
        t1 = time.perf_counter()
        d = metrics.dice_per_class(case.mask, case.truth, labels)
        h = metrics.hd95_per_class(case.mask, case.truth, case.spacing, labels)
        t2 = time.perf_counter()
        t_monai += t1 - t0
        t_segqc += t2 - t1
        for i, k in enumerate(labels):
            worst_d = max(worst_d, abs(d[k] - dm[i]))
            if np.isfinite(hm[i]) or np.isfinite(h[k]):
                worst_h = max(worst_h, abs(h[k] - hm[i]))
    print(f"{dataset}: {len(refs)} predictions x {len(labels)} label(s): max |dDice| = {worst_d:.2e}, "
          f"max |dHD95| = {worst_h:.2e} mm; time segqc {t_segqc:.1f} s, MONAI {t_monai:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", choices=DATASETS, default="hippocampus")
    crosscheck(ap.parse_args().dataset)


if __name__ == "__main__":
    main()
