"""Try changes to the `features` regressor offline, on the tables `feature_tables.py` wrote.

Each variant is trained on the fitting rows (``fit``), calibrated on the held-out
calibration pairs (``cal``) as `segqc fit` does, and judged twice:

* on ``cal`` by 5-fold cross-fitting grouped by reference case — the only evidence a
  variant may be *chosen* on (the reference split);
* on the benchmark rows (``bench``, test ids) — reported, never chosen on.

    .venv/bin/python benchmarks/feature_ablation.py runs/tables/kvasir/tables.pkl
"""

from __future__ import annotations

import argparse
import pickle
import re

import numpy as np

from segqc.calibration.calibrator import DiceCalibrator
from segqc.evaluation.scores import aurc, auroc_fail, mae, pearson

LGBM = dict(n_estimators=400, learning_rate=0.03, num_leaves=15, min_child_samples=10, subsample=0.8,
            subsample_freq=1, colsample_bytree=0.8, n_jobs=2, verbose=-1)
MEMBER = ("member_pair_dice_mean", "member_pair_dice_min", "cand_member_dice_mean", "cand_member_dice_min",
          "cand_member_dice_std")


def _matrix(rows: list[dict], names: list[str]) -> np.ndarray:
    return np.array([[r.get(k, np.nan) for k in names] for r in rows], dtype=np.float64)


def _flat(table: dict, key: str, fold: int | None = None) -> list[dict]:
    """One row per (pair, label): the averaged segmenter's features, or fold network ``fold``'s."""
    if fold is None:
        return [f for r in table["rows"] for f in r[key]]
    return [f for r in table["rows"] for f in r[key][fold]]


def _per_pair(values: np.ndarray, n_labels: int) -> np.ndarray:
    """Rows of ``_flat`` (one per pair and label) → one value per pair: the mean over labels, as a pair's
    true Dice (and segqc's answer) is."""
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(-1, n_labels, *values.shape[1:]).mean(axis=1)


def _groups(ids: list[str], n_folds: int = 5, seed: int = 0) -> np.ndarray:
    uniq = sorted(set(ids))
    fold = dict(zip(uniq, np.random.default_rng(seed).permutation(len(uniq)) % n_folds))
    return np.array([fold[i] for i in ids])


def _scores(true: np.ndarray, pred: np.ndarray, groups=None, deployed=None, lo=None, hi=None, sub=None,
            good=None) -> dict:
    out = {} if sub is None else {"model_r": pearson(true[sub], pred[sub]), "model_MAE": mae(true[sub], pred[sub]),
                                  "model_bias": float(np.mean(pred[sub] - true[sub]))}
    if good is not None:  # pairs of nearly trained networks: a good model's masks, on reference ids
        out |= {"good_r": pearson(true[good], pred[good]), "good_MAE": mae(true[good], pred[good]),
                "good_AUROC": auroc_fail(true[good], pred[good])}
    out |= {"r": pearson(true, pred), "MAE": mae(true, pred), "bias": float(np.mean(pred - true)),
           "AUROC": auroc_fail(true, pred), "AURC": aurc(1 - true, pred)}
    if lo is not None:
        out["cov90"] = float(np.mean((true >= lo) & (true <= hi)))
    if groups is not None:
        gaps = [abs(pred[groups == g].mean() - true[groups == g].mean()) for g in sorted(set(groups))]
        out["ckpt_max_gap"] = float(np.max(gaps))
        out["ckpt_mean_gap"] = float(np.mean(gaps))
    if deployed is not None and deployed.any():
        d = deployed
        out |= {"dep_r": pearson(true[d], pred[d]), "dep_MAE": mae(true[d], pred[d]),
                "dep_AUROC": auroc_fail(true[d], pred[d]), "dep_AURC": aurc(1 - true[d], pred[d]),
                "dep_est": float(pred[d].mean()), "dep_true": float(true[d].mean())}
    return out


SHAPE = ("border_contact", "compactness", "extent", "hole_fraction", "largest_component_fraction", "log_volume_ratio",
         "n_components", "roughness", "solidity")


def source_shortcut(t: dict) -> None:
    """Can a mask's shape tell which generator made a training pair (a corruption of the expert mask, or
    segqc's segmenter)? If it can, the regressor may learn the generator instead of the quality, and a
    real network's mask is judged by whichever generator it resembles."""
    import lightgbm as lgb
    from sklearn.metrics import roc_auc_score

    fit = t["fit"]
    made = np.array([s != "corruption" for s in fit["source"]])
    X = _matrix(fit["X"], list(SHAPE))
    held = _groups(fit["reference_id"], 4) == 0
    clf = lgb.LGBMClassifier(n_estimators=200, num_leaves=15, verbose=-1, n_jobs=2).fit(X[~held], made[~held])
    auc = roc_auc_score(made[held], clf.predict_proba(X[held])[:, 1])
    print(f"\nsource from shape alone (model-made vs corruption), held-out reference cases: AUROC {auc:.3f}")
    p = _per_pair(clf.predict_proba(_matrix(_flat(t["bench"], "ens"), list(SHAPE)))[:, 1], len(t["labels"]))
    g = np.asarray(t["bench"]["group"])
    print("benchmark rows judged 'made by segqc's segmenter': " + ", ".join(
        f"{k} {p[g == k].mean():.2f}" for k in sorted(set(g))))


def _lgbm(X, y, w=None, seed=0):
    import lightgbm as lgb

    return lgb.LGBMRegressor(**LGBM, random_state=seed).fit(X, y, sample_weight=w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables")
    args = ap.parse_args()
    t = pickle.load(open(args.tables, "rb"))
    fit, cal, bench = t["fit"], t["cal"], t["bench"]
    names = t["feature_names"]
    n_folds = len(cal["rows"][0]["folds"])
    n_labels = len(t["labels"])
    X_fit, y_fit = _matrix(fit["X"], names), np.asarray(fit["y"])
    src = np.array(["corruption" if s == "corruption" else "model" for s in fit["source"]])
    y_cal = np.array([np.mean(v) for v in cal["true"]])
    y_b = np.asarray(bench["true"])
    g_b, dep = np.asarray(bench["group"]), np.asarray(bench["deployed"])
    cal_groups = _groups(cal["reference_id"])
    source_shortcut(t)
    cal_model = np.array([s != "corruption" for s in cal["source"]])  # the segmenter's snapshots
    print(f"fit rows {len(y_fit)} ({(src == 'model').sum()} model-made), calibration pairs {len(y_cal)}, "
          f"benchmark rows {len(y_b)} ({dep.sum()} deployed); segmenter {t.get('segmenter')}")

    def raw_of(model, table, per_fold: bool) -> np.ndarray:
        if not per_fold:
            return _per_pair(model.predict(_matrix(_flat(table, "ens"), names)), n_labels)
        return _per_pair(np.mean([model.predict(_matrix(_flat(table, "folds", k), names)) for k in range(n_folds)],
                                 axis=0), n_labels)

    # segqc's fold snapshots are "segmenter:fold<k>_ep<e>"; simulated sites and outsiders are other sources
    snap = [re.fullmatch(r"segmenter:fold(\d+)_ep(\d+)", s) for s in cal["source"]]
    maker = np.array([int(m[1]) if m else -1 for m in snap])
    late = np.array([bool(m) and int(m[2]) > 8 for m in snap])
    good = np.array([(bool(m) and int(m[2]) >= 21) or s.endswith("_final") for m, s in zip(snap, cal["source"])])

    def independent(model) -> dict:
        """Model-made calibration pairs judged only by fold networks other than the one that made them
        (both unseen on the case): a real network's mask against an independent opinion, from reference ids."""
        idx = np.flatnonzero(maker >= 0)
        raw = np.array([np.mean([model.predict(_matrix(cal["rows"][i]["folds"][j], names)).mean()
                                 for j in range(n_folds) if j != maker[i]]) for i in idx])
        t = y_cal[idx]
        lt = late[idx]
        return {"ind_r": pearson(t, raw), "ind_MAE": mae(t, raw), "ind_bias": float(np.mean(raw - t)),
                "ind_late_bias": float(np.mean(raw[lt] - t[lt])), "ind_late_MAE": mae(t[lt], raw[lt])}

    def calibrated(raw_cal, raw_b, on=None):
        """`segqc fit`'s calibrator on the calibration pairs (``on``: a subset); cross-fitted on cal for the cal
        scores."""
        on = np.ones(len(raw_cal), bool) if on is None else on
        oof = np.zeros_like(raw_cal)
        for k in range(5):
            m = cal_groups == k
            oof[m] = DiceCalibrator().fit(raw_cal[~m & on], y_cal[~m & on]).predict_dice(raw_cal[m])
        c = DiceCalibrator().fit(raw_cal[on], y_cal[on])
        lo, hi = c.interval(raw_b)
        return oof, c.predict_dice(raw_b), (lo, hi)

    results = {}
    weights = {"all pairs (as shipped)": None,
               "model-made pairs only": (src == "model").astype(float),
               "corruptions weighted to half": np.where(src == "model", 1.0, (src == "model").sum() / max(
                   (src == "corruption").sum(), 1))}
    for wname, w in weights.items():
        keep = w is None or w > 0
        model = _lgbm(X_fit[keep] if w is not None else X_fit, y_fit[keep] if w is not None else y_fit,
                      None if w is None else w[keep])
        for per_fold in (False, True):
            name = f"{wname}{', per-fold scoring' if per_fold else ''}"
            rc, rb = raw_of(model, cal, per_fold), raw_of(model, bench, per_fold)
            oof, pb, (lo, hi) = calibrated(rc, rb)
            results[name] = (_scores(y_cal, oof, sub=cal_model, good=good), _scores(y_b, pb, g_b, dep, lo, hi))
            results[name + " [raw]"] = (_scores(y_cal, rc, sub=cal_model, good=good) | independent(model),
                                        _scores(y_b, rb, g_b, dep))
            if wname.startswith("all") and not per_fold:
                base_cal, base_b = rc, rb

    # the regressor with fewer feature families: can it be fooled less by a plausible shape?
    families = {"segmenter agreement only": [n for n in names if n.startswith("seg_") or n in ("label", "n_labels")],
                "segmenter agreement + shape": [n for n in names if not n.startswith(("c0_", "c1_", "c2_", "grey_",
                                                                                      "edge_gradient"))]}
    for fname, cols in families.items():
        idx = [names.index(c) for c in cols]
        model = _lgbm(X_fit[:, idx], y_fit)
        sub = type("Sub", (), {"predict": lambda self, A, m=model, i=idx: m.predict(A[:, i])})()
        rc, rb = raw_of(sub, cal, True), raw_of(sub, bench, True)
        oof, pb, (lo, hi) = calibrated(rc, rb)
        results[f"{fname}, per-fold scoring"] = (_scores(y_cal, oof, sub=cal_model, good=good),
                                                 _scores(y_b, pb, g_b, dep, lo, hi))
        results[f"{fname}, per-fold scoring [raw]"] = (
            _scores(y_cal, rc, sub=cal_model, good=good) | independent(sub), _scores(y_b, rb, g_b, dep))
    model = _lgbm(X_fit, y_fit)
    rc, rb = raw_of(model, cal, True), raw_of(model, bench, True)
    oof, pb, (lo, hi) = calibrated(rc, rb, on=cal_model)
    results["as shipped, per-fold, calibrated on model-made pairs"] = (
        _scores(y_cal, oof, sub=cal_model, good=good), _scores(y_b, pb, g_b, dep, lo, hi))

    # second stage on the calibration pairs: the regressor's raw score + the fold networks' agreement
    import lightgbm as lgb

    def stack_inputs(table, raw):
        member = _matrix([m for r in table["rows"] for m in r["member"]], list(MEMBER))
        return np.column_stack([raw, _per_pair(member, n_labels)])

    Zc, Zb = stack_inputs(cal, base_cal), stack_inputs(bench, base_b)
    for sname, mk in {"stacked: raw + members (LGBM, monotone in raw)":
                      lambda: lgb.LGBMRegressor(n_estimators=200, learning_rate=0.03, num_leaves=7,
                                                min_child_samples=20,
                                                monotone_constraints=[1] + [0] * len(MEMBER), verbose=-1, n_jobs=2),
                      }.items():
        oof = np.zeros(len(y_cal))
        for k in range(5):
            m = cal_groups == k
            oof[m] = mk().fit(Zc[~m], y_cal[~m]).predict(Zc[m])
        pb = np.clip(mk().fit(Zc, y_cal).predict(Zb), 0, 1)
        radius = np.quantile(np.abs(oof - y_cal), 0.9)
        results[sname] = (_scores(y_cal, np.clip(oof, 0, 1), sub=cal_model, good=good),
                          _scores(y_b, pb, g_b, dep, pb - radius, pb + radius))
    for f in MEMBER:
        results[f"[signal] {f}"] = (_scores(y_cal, Zc[:, 1 + MEMBER.index(f)], sub=cal_model, good=good),
                                    _scores(y_b, Zb[:, 1 + MEMBER.index(f)], g_b, dep))

    keys = ["r", "MAE", "bias", "AUROC", "AURC", "cov90", "ckpt_max_gap", "ckpt_mean_gap", "dep_r", "dep_MAE",
            "dep_AUROC", "dep_AURC", "dep_est", "dep_true"]
    ind = ["good_r", "good_MAE", "good_AUROC", "ind_r", "ind_MAE", "ind_bias", "ind_late_MAE", "ind_late_bias"]
    print("\n| variant | cal r | cal MAE | cal bias | cal model-made r | MAE | bias | " + " | ".join(ind) + " | "
          + " | ".join(keys) + " |\n|---|---|---|---|---|---|---|" + "---|" * (len(keys) + len(ind)))
    for name, (c, b) in results.items():
        print(f"| {name} | {c['r']:.3f} | {c['MAE']:.3f} | {c['bias']:+.3f} | {c['model_r']:.3f} "
              f"| {c['model_MAE']:.3f} "
              f"| {c['model_bias']:+.3f} | " + " | ".join(f"{c[k]:+.3f}" if k in c else "–" for k in ind) + " | "
              + " | ".join(
            f"{b[k]:.3f}" if k in b else "–" for k in keys) + " |")


if __name__ == "__main__":
    main()
