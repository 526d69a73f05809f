"""Do the QC methods give the same answers as at another revision? (a refactoring's proof)

Checks out ``REV`` in a temporary git worktree and, with each version of the code, fits
every method that needs no user model with the tiny settings of `tests/test_methods.py` on
3 embedded reference cases
(Kvasir and hippocampus), then scores 6 candidates (3 other reference cases, their
expert mask and a shifted one). Prints the largest difference of raw Dice per label and
of the maps' sums between the two versions — for two fits (old fit vs new fit) and for
one fit scored twice (old state loaded by the new code).

    .venv/bin/python benchmarks/same_answers.py e2cee7c
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _tiny() -> dict:
    """The tiny settings of the method tests, for every method that needs no user model."""
    sys.path.insert(1, str(REPO / "tests"))  # after the code under test: its segqc is the one imported
    from test_methods import TINY

    return {name: params for name, params in TINY.items() if name != "model_uncertainty"}


def run(code: Path, mode: str, states: Path) -> dict:
    """With the segqc at ``code``: ``fit`` (fit, save states, score) or ``load`` (load states, score)."""
    sys.path.insert(0, str(code))
    import segqc
    from segqc.data import load_dataset
    from segqc.methods import make_method
    from segqc.plan.fingerprint import compute_fingerprint, plan_from_fingerprint

    if not Path(segqc.__file__).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"imported {segqc.__file__}, not the segqc of {code}")
    scores, tiny = {}, _tiny()
    for data in ("kvasir", "hippocampus"):
        cases = [r.load() for r in load_dataset(REPO / "segqc" / "sample_data" / data / "reference")[:6]]
        plan = plan_from_fingerprint(compute_fingerprint(cases[:3]), max_slice_size=32)
        for name, params in tiny.items():
            key = f"{data}-{name}"
            if mode == "fit":
                method = make_method(name, **params).fit(cases[:3], plan, np.random.default_rng(0))
                (states / f"{key}.pkl").write_bytes(pickle.dumps(method.state()))
            else:
                arrays, config = pickle.loads((states / f"{key}.pkl").read_bytes())
                method = type(make_method(name)).from_state(arrays, config)
            scores[key] = []
            for c in cases[3:]:
                for mask in (c.mask, np.roll(c.mask, 3, axis=-1)):
                    s = method.score(c.with_mask(mask))
                    scores[key].append({"dice": {str(k): float(v) for k, v in s.dice.items()},
                                        "maps": {k: float(np.asarray(v, float).sum()) for k, v in s.maps.items()}})
    return scores


def _diff(a: dict, b: dict) -> dict:
    out = {}
    for key in a:
        pairs = list(zip(a[key], b[key]))
        out[key] = (max(abs(x["dice"][k] - y["dice"][k]) for x, y in pairs for k in x["dice"]),
                    max([abs(x["maps"][m] - y["maps"][m]) for x, y in pairs for m in x["maps"]] or [0.0]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", nargs="?", help="the revision to compare with")
    ap.add_argument("--worker", nargs=3, metavar=("CODE", "MODE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # one version's run, in its own process (two versions of segqc cannot share one)
        code, mode, folder = args.worker
        Path(folder, f"scores_{mode}.json").write_text(json.dumps(run(Path(code), mode, Path(folder))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old, old_dir, new_dir = tmp / "old", tmp / "old_states", tmp / "new_states"
        old_dir.mkdir()
        new_dir.mkdir()
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-f", "--detach", str(old), args.rev], check=True)
        try:
            me = [sys.executable, __file__, "--worker"]
            subprocess.run([*me, str(old), "fit", str(old_dir)], check=True, cwd=old)
            subprocess.run([*me, str(REPO), "fit", str(new_dir)], check=True, cwd=REPO)
            subprocess.run([*me, str(REPO), "load", str(old_dir)], check=True, cwd=REPO)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
        old_fit = json.loads((old_dir / "scores_fit.json").read_text())
        fits = _diff(old_fit, json.loads((new_dir / "scores_fit.json").read_text()))
        loads = _diff(old_fit, json.loads((old_dir / "scores_load.json").read_text()))
    print("| data-method | old fit vs new fit: max abs. Δ Dice / Δ map sum | old state, new code: "
          "max abs. Δ Dice / Δ map sum |\n|---|---|---|")
    for key in fits:
        print(f"| {key} | {fits[key][0]:.1e} / {fits[key][1]:.1e} | {loads[key][0]:.1e} / {loads[key][1]:.1e} |")


if __name__ == "__main__":
    main()
