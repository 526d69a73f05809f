"""The command line end to end on the embedded sample, bad input included."""

import csv
import json
import shutil

import pytest

from segqc.cli import build_parser, main
from segqc.engines.batch import read_rows


def _manifest_with_bad_cases(sample, tmp_path, n=6):
    src = sample / "kvasir" / "candidates.csv"
    rows = list(csv.DictReader(open(src)))[:n]
    for r in rows:
        for k in ("image", "mask", "truth"):
            r[k] = str(sample / "kvasir" / r[k])
    missing = dict(rows[0], case_id="missing_file", mask=str(tmp_path / "nope.png"))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG broken")
    broken = dict(rows[1], case_id="corrupt_file", mask=str(corrupt))
    path = tmp_path / "cases.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[:3] + [missing, broken] + rows[3:])
    return path


def test_help_explains_every_option(capsys):
    parser = build_parser()
    for cmd in ("demo", "fingerprint", "metrics", "evaluate", "fit", "predict", "bench"):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        text = capsys.readouterr().out
        for action in parser._subparsers._group_actions[0].choices[cmd]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{cmd} {action.option_strings} has no help"
        assert "usage" in text


def test_options_come_from_their_registries():
    import argparse

    from segqc.cli_options import method_params, parse_param
    from segqc.data.layouts import LAYOUTS
    from segqc.user_models import MODEL_KINDS

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert callable(sub.get_default("func")), f"{name} has no function"
        for action in sub._actions:
            if "--layout" in action.option_strings:
                assert tuple(action.choices) == LAYOUTS and action.default == "auto"
            if "--model-kind" in action.option_strings:
                assert tuple(action.choices) == MODEL_KINDS
    assert {n for n, sub in commands.items() if any("--layout" in a.option_strings for a in sub._actions)} == \
        {"fingerprint", "metrics", "fit", "predict", "report"}
    pairs = [parse_param(t) for t in ("cnn.epochs=4", "segmenter.snapshot_epochs=[1, 2]", "features.mode=fast",
                                      "features.segmenter=false")]
    assert method_params(pairs) == {"cnn": {"epochs": 4}, "segmenter": {"snapshot_epochs": [1, 2]},
                                    "features": {"mode": "fast", "segmenter": False}}
    with pytest.raises(argparse.ArgumentTypeError, match="METHOD.PARAM=VALUE"):
        parse_param("epochs=4")


def test_methods_lists_every_method(capsys):
    from segqc.methods import METHODS

    assert main(["methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].split()[0] for line in out if not line.startswith(" ")] == list(METHODS)
    # every declared parameter, in the syntax `fit --set` takes
    assert "  --set features.n_estimators=400" in out and "model_uncertainty (needs --model):" in "\n".join(out)


def test_metrics_reports_bad_cases_and_resumes(sample, tmp_path, capsys):
    cases = _manifest_with_bad_cases(sample, tmp_path)
    out = tmp_path / "m"
    assert main(["metrics", str(cases), "--out", str(out)]) == 3  # partial failure
    err = capsys.readouterr().err
    assert "missing_file" in err and "corrupt_file" in err
    rows = read_rows(out / "metrics.csv")
    assert len(rows) == 8
    bad = {r["case_id"]: r["error"] for r in rows if r["status"] == "error"}
    assert set(bad) == {"missing_file", "corrupt_file"} and "no such file" in bad["missing_file"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(0 <= float(r["dice"]) <= 1 and float(r["hd95"]) >= 0 for r in ok)
    # an interrupted run: drop the last rows, run again → only those are redone
    with open(out / "metrics.csv") as f:
        lines = f.readlines()
    (out / "metrics.csv").write_text("".join(lines[:4]))
    assert main(["metrics", str(cases), "--out", str(out)]) == 3
    assert "already done" in capsys.readouterr().out
    again = read_rows(out / "metrics.csv")
    assert sorted(r["case_id"] for r in again) == sorted(r["case_id"] for r in rows)
    assert {r["case_id"]: r["dice"] for r in again if r["status"] == "ok"} == {r["case_id"]: r["dice"] for r in ok}


def test_fingerprint_and_evaluate(sample, tmp_path):
    assert main(["fingerprint", str(sample / "hippocampus" / "reference"), "--out", str(tmp_path)]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["labels"] == [1, 2] and plan["schema_version"] == 1
    table = tmp_path / "t.csv"
    table.write_text("case_id,status,dice_pred,dice_true,group\n" + "\n".join(
        f"c{i},ok,{p},{t},{g}" for i, (p, t, g) in enumerate(
            [(0.9, 0.95, "a"), (0.3, 0.2, "a"), (0.7, 0.75, "b"), (0.85, 0.9, "b"), (0.2, 0.5, "b")])))
    assert main(["evaluate", str(table), "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert res["overall"]["n"] == 5 and set(res["groups"]) == {"a", "b"}
    assert (tmp_path / "ev" / "scatter.png").stat().st_size > 0
    assert main(["evaluate", str(table), "--out", str(tmp_path / "ev"), "--pred-col", "nope"]) == 1


@pytest.mark.slow
def test_fit_predict_bench_end_to_end(sample, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    ref = tmp_path / "ref"
    shutil.copytree(sample / "kvasir" / "reference", ref)
    assert main(["fit", str(ref), "--out", str(bundle), "--methods", "features", "autoencoder",
                 "--set", "features.pairs_per_case=4", "--set", "features.n_estimators=30",
                 "--set", "autoencoder.epochs=1", "--set", "autoencoder.n_threads=1",
                 "--set", "segmenter.epochs=2", "--set", "segmenter.snapshot_epochs=[1]"]) == 0
    doc = json.loads((bundle / "bundle.json").read_text())
    assert doc["default_method"] in ("features", "autoencoder", "fusion") and doc["sha256"]
    assert doc["fusion"]["members"] == ["features", "autoencoder"] and "fusion.calib.safetensors" in doc["sha256"]
    # features describes its candidates: its calibrator can correct a batch's mean (the fusion's cannot)
    assert "seg_dice" in doc["methods"]["features"]["calibration"]["correction"]["names"]
    cases = _manifest_with_bad_cases(sample, tmp_path)
    out = tmp_path / "qc"
    assert main(["predict", str(cases), "--bundle", str(bundle), "--out", str(out)]) == 3
    rows = read_rows(out / "predictions.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 6
    for r in ok:
        assert 0 <= float(r["dice_pred"]) <= 1 and 0 <= float(r["p_pass"]) <= 1
        assert float(r["dice_lo"]) <= float(r["dice_pred"]) <= float(r["dice_hi"])
        assert r["flag"] in ("pass", "review")
    dataset = json.loads((out / "dataset.json").read_text())
    assert "all" in dataset["groups"] and dataset["groups"]["all"]["n"] == 6
    assert json.loads((out / "run.json").read_text())["n_failed"] == 2
    # a benchmark-style cases.csv (prediction / ground_truth / dice / checkpoint)
    bench_csv = tmp_path / "bench_cases.csv"
    src = list(csv.DictReader(open(sample / "kvasir" / "candidates.csv")))[:12]
    with open(bench_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "image", "ground_truth", "prediction", "checkpoint", "dice",
                                          "is_deployed"])
        w.writeheader()
        for r in src:
            w.writerow({"case_id": r["case_id"], "image": f"kvasir/{r['image']}",
                        "ground_truth": f"kvasir/{r['truth']}",
                        "prediction": f"kvasir/{r['mask']}", "checkpoint": r["group"], "dice": r["dice"],
                        "is_deployed": str(r["group"] == "unet_s0_ep100")})
    assert main(["bench", str(bench_csv), "--bundle", str(bundle), "--out", str(tmp_path / "bench"),
                 "--root", str(sample)]) == 0
    res = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert res["n"] == 12 and res["methods"]["features"]["overall"]["n"] == 12
    assert set(res["methods"]) == {"features", "autoencoder", "fusion"}
    corrected = res["methods"]["features"]["dataset_level"]["all"]
    assert corrected["batch_correction"]["n"] == 12 and corrected["batch_correction"]["effective_pairs"] > 1
    assert corrected["mean_dice"] == pytest.approx(corrected["mean_dice_uncorrected"]
                                                   + corrected["batch_correction"]["correction"])
    assert all(r["features_descriptor"] for r in read_rows(tmp_path / "bench" / "bench.csv") if r["status"] == "ok")
    by_group = res["methods"]["features"]["interval_coverage_by_group"]
    assert set(by_group) == {r["group"] for r in src}  # the coverage of each checkpoint, and all of them together:
    sizes = {g: sum(r["group"] == g for r in src) for g in by_group}
    assert sum(by_group[g] * sizes[g] for g in by_group) / 12 == pytest.approx(
        res["methods"]["features"]["interval_coverage"])
    rows = read_rows(tmp_path / "bench" / "bench.csv")
    assert all(0 <= float(r["fusion_dice"]) <= 1 and r["fusion_pgt"] == r["features_pgt"] for r in rows)


def test_predict_with_missing_bundle_is_a_clear_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    assert "segqc fit" in capsys.readouterr().err
