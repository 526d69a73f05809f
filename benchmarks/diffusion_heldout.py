"""How well does the diffusion segmenter of `diffusion` segment unseen REFERENCE images?

Fits `DiffusionEnsemble` on all but the last ``--held-out`` of the shuffled `reference`
ids of a benchmark and reports mean Dice(pGT, expert) on those held-out reference ids,
with the seconds per case of sampling. Test ids are never touched, so this is the
honest place to compare design choices (e.g. ``--set diffusion.prediction=epsilon`` vs
``sample``). ``--set diffusion.PARAM=VALUE`` sets any parameter of the method; unless set,
``max_minutes`` is 4 (the training budget), ``prediction`` ``sample`` and ``n_threads`` ``--threads``.

    python benchmarks/diffusion_heldout.py hippocampus --set diffusion.max_minutes=4 --set diffusion.prediction=sample
    python benchmarks/diffusion_heldout.py hippocampus --set diffusion.max_minutes=4 --set diffusion.prediction=epsilon
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import DATASETS, add_set_option, add_threads_option, data_dir, method_params, read_split

#: the method's parameters unless ``--set diffusion.PARAM=VALUE`` says otherwise (n_threads: ``--threads``)
DEFAULTS = {"max_minutes": 4.0, "prediction": "sample"}


def main() -> None:
    from segqc.data import load_dataset
    from segqc.methods.base import FitContext
    from segqc.methods.diffusion_ensemble import DiffusionEnsemble
    from segqc.metrics import dice
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=DATASETS)
    ap.add_argument("--ddim-steps", type=int, nargs="+", default=[5])
    ap.add_argument("--held-out", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    add_set_option(ap)
    add_threads_option(ap, default=1, help="torch CPU threads of the method (its n_threads)")
    args = ap.parse_args()
    given = method_params(args.params)
    if set(given) - {"diffusion"}:
        ap.error(f"--set takes diffusion.PARAM=VALUE, not {sorted(set(given) - {'diffusion'})}")
    params = {**DEFAULTS, "n_threads": args.threads, **given.get("diffusion", {})}

    ref = set(read_split(args.dataset)["reference"])
    refs = [r for r in load_dataset(data_dir(args.dataset)) if r.case_id in ref]
    np.random.default_rng(args.seed).shuffle(refs)
    cases = [r.load() for r in refs]
    fit, held = cases[:-args.held_out], cases[-args.held_out:]
    plan = plan_from_fingerprint(compute_fingerprint(fit))
    m = DiffusionEnsemble(**params)
    m.fit(fit, plan, FitContext(rng=np.random.default_rng(args.seed), device="cpu", progress=print))
    print(f"{m.train_steps_done_} training steps, final loss {m.final_loss_:.4f}")
    for steps in args.ddim_steps:
        m.ddim_steps = steps
        t0, scores = time.time(), []
        for c in held:
            scores.append(dice(m.score_samples(c, *m.sample(c)).maps["pgt"], c.mask, m.labels_))
        print(f"prediction={m.prediction}, {steps} DDIM steps: held-out reference Dice(pGT, expert) "
              f"{np.mean(scores):.3f} over {len(held)} cases, {(time.time() - t0) / len(held):.2f} s per case")


if __name__ == "__main__":
    main()
