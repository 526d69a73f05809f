"""Do the QC methods give the same answers as at another revision? (a refactoring's proof)

Checks out ``REV`` in a temporary git worktree and, with each version of the code, fits
every method that needs no user model with the tiny settings of `tests/test_methods.py` on
3 embedded reference cases
(Kvasir and hippocampus), then scores 6 candidates (3 other reference cases, their
expert mask and a shifted one). Prints the largest difference of raw Dice per label and
of the maps' sums between the two versions — for two fits (old fit vs new fit), the new
fit saved and reloaded, and one fit scored twice (the old state loaded by the new code,
where the state format is the same).

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
    from tiny_settings import TINY

    return {name: params for name, params in TINY.items() if name != "model_uncertainty"}


def run(code: Path, mode: str, states: Path) -> dict:
    """With the segqc at ``code``: ``fit`` (fit, save states, score) or ``load`` (load states, score)."""
    sys.path.insert(0, str(code))
    import segqc
    from segqc.methods import make_method

    try:  # the layout of issue 13, or the one before it
        from segqc.data import load_dataset
        from segqc.plan.fingerprint import compute_fingerprint
        from segqc.plan.plan import plan_from_fingerprint
    except ImportError:
        from segqc.fingerprint import compute_fingerprint, plan_from_fingerprint
        from segqc.io import load_dataset

    if not Path(segqc.__file__).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"imported {segqc.__file__}, not the segqc of {code}")
    scores, tiny = {}, _tiny()
    for data in ("kvasir", "hippocampus"):
        cases = [r.load() for r in load_dataset(REPO / "segqc" / "sample_data" / data / "reference")[:6]]
        plan = plan_from_fingerprint(compute_fingerprint(cases[:3]), max_slice_size=32)
        for name, params in tiny.items():
            key = f"{data}-{name}"
            if mode == "fit":
                method = _fit(make_method, name, params, cases[:3], plan)
                (states / f"{key}.pkl").write_bytes(pickle.dumps(method.state()))
            else:
                arrays, config = pickle.loads((states / f"{key}.pkl").read_bytes())
                cls = type(make_method(name))
                method = (cls.from_state(arrays, config, plan) if _new_contract() else
                          cls.from_state(arrays, config))
            scores[key] = []
            for c in cases[3:]:
                for mask in (c.mask, np.roll(c.mask, 3, axis=-1)):
                    s = method.score(c.with_mask(mask))
                    scores[key].append({"dice": {str(k): float(v) for k, v in s.dice.items()},
                                        "maps": {k: float(np.asarray(v, float).sum()) for k, v in s.maps.items()}})
    return scores


def _new_contract() -> bool:
    """Whether the imported segqc has the method contract of issue 13 (`FitContext`)."""
    import segqc.methods.base as base

    return hasattr(base, "FitContext")


def _fit(make_method, name: str, params: dict, cases, plan):
    """Fit with either contract: ``fit(cases, plan, FitContext)`` now, ``fit(cases, plan, rng)`` before."""
    rng = np.random.default_rng(0)
    if _new_contract():
        from segqc.methods.base import FitContext

        return make_method(name, **params).fit(cases, plan, FitContext(rng=rng, device="cpu"))
    old = dict(params)
    if "device" in make_method(name).get_params():
        old["device"] = "cpu"
    return make_method(name, **old).fit(cases, plan, rng)


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
            # the old state in the new code: only where the state format did not change
            cross = subprocess.run([*me, str(REPO), "load", str(old_dir)], cwd=REPO).returncode == 0
            subprocess.run([*me, str(REPO), "load", str(new_dir)], check=True, cwd=REPO)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
        old_fit = json.loads((old_dir / "scores_fit.json").read_text())
        fits = _diff(old_fit, json.loads((new_dir / "scores_fit.json").read_text()))
        reloads = _diff(old_fit, json.loads((new_dir / "scores_load.json").read_text()))
        loads = _diff(old_fit, json.loads((old_dir / "scores_load.json").read_text())) if cross else {}
    print("| data-method | old fit vs new fit | old fit vs new fit saved and reloaded | old state, new code |\n"
          "|---|---|---|---|")
    for key in fits:
        cells = [f"{d[key][0]:.1e} / {d[key][1]:.1e}" if key in d else "n/a (state format changed)"
                 for d in (fits, reloads, loads)]
        print(f"| {key} | " + " | ".join(cells) + " |")
    print("(each cell: max abs. Δ raw Dice / max abs. Δ map sum)")

if __name__ == "__main__":
    main()
