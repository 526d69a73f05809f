"""Do segqc's model adapters reproduce the shipped Kvasir predictions?

For each checkpoint, the first ``--rows`` test rows of ../shared/benchmarks/kvasir/cases.csv:
the shipped network (``--model-kind monai``: config.json + state_dict) predicts the image
again, and the Dice with the shipped prediction file is printed (1.000 = identical).

    .venv/bin/python benchmarks/check_shipped_models.py [--rows 10] [--checkpoints ...]
"""

from __future__ import annotations

import argparse

import numpy as np
from common import SHARED, cases_csv, shipped_weights

from segqc.data import read_manifest
from segqc.metrics import dice
from segqc.user_models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--checkpoints", nargs="+", default=["unet_s0_ep100", "segresnet_s0_ep30", "unet_s0_ep1"])
    args = ap.parse_args()
    refs = read_manifest(cases_csv("kvasir"), root=SHARED, mask_col="prediction", group_col="checkpoint")
    for checkpoint in args.checkpoints:
        model = load_model(shipped_weights(checkpoint, "kvasir"), "monai", device="cpu")
        rows = [r for r in refs if r.group == checkpoint][:args.rows]
        scores = []
        for ref in rows:
            case = ref.load()
            scores.append(dice(model.predict_mask(case.image), case.mask, [1]))
        print(f"{checkpoint}: Dice(re-prediction, shipped) over {len(scores)} rows: "
              f"min {np.min(scores):.4f}, mean {np.mean(scores):.4f}")


if __name__ == "__main__":
    main()
