"""`segqc predict --engine ray` (Ray Data: read tasks, scoring actors) gives what the local engine gives.

One local Ray (2 CPUs) for the module, started here, so the engine must join it and leave it
running; a tiny bundle judges the 20 embedded Kvasir candidates plus a missing and a
corrupt mask, once locally and once on Ray, into folders of equal path length (map paths
then compare as text).
"""

import csv
import json
import sys
from types import SimpleNamespace

import pytest
from conftest import candidates_manifest

from segqc.cli import main

RAY_ARGS = ["--engine", "ray", "--workers", "2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")  # `make test` installs it (the `ray` extra)
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle("kvasir")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return candidates_manifest("kvasir", tmp_path_factory.mktemp("manifest") / "cases.csv", bad=True)


@pytest.fixture(scope="module")
def runs(bundle, manifest, local_ray, tmp_path_factory):
    """(local output folder, ray output folder): the same command with each engine."""
    from segqc.utils import torch_threads

    tmp = tmp_path_factory.mktemp("runs")
    local, on_ray = tmp / "local", tmp / "ray__"  # equal lengths: only the folder name differs in map paths
    with torch_threads(1):  # as Ray's actors have (OMP_NUM_THREADS=1): 10× faster than 2 on a busy 2-core CPU
        assert main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(local)]) == 3
    assert main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(on_ray), *RAY_ARGS]) == 3
    assert local_ray.is_initialized()  # the caller's Ray is left running
    return local, on_ray


def _maps(out):
    return sorted(p.relative_to(out) for p in (out / "maps").rglob("*") if p.is_file())


@pytest.mark.slow
def test_ray_predictions_equal_local(runs):
    local, on_ray = runs
    expected = (local / "predictions.csv").read_text().replace(str(local), str(on_ray))
    assert (on_ray / "predictions.csv").read_text() == expected  # same rows, same order, byte for byte
    assert (on_ray / "dataset.json").read_bytes() == (local / "dataset.json").read_bytes()
    maps = _maps(local)
    assert len(maps) == 2 * 20 and _maps(on_ray) == maps  # pGT + error map per readable case
    assert all((local / m).read_bytes() == (on_ray / m).read_bytes() for m in maps)
    run = json.loads((on_ray / "run.json").read_text())
    assert (run["options"]["engine"], run["n_ok"], run["n_failed"], run["n_skipped"]) == ("ray", 20, 2, 0)


@pytest.mark.slow
def test_ray_bad_cases_get_error_rows(runs):
    rows = {r["case_id"]: r for r in csv.DictReader(open(runs[1] / "predictions.csv"))}
    missing, corrupt = rows["missing_file"], rows["corrupt_file"]
    assert missing["status"] == corrupt["status"] == "error"
    assert "nope.png" in missing["error"] and "corrupt.png" in corrupt["error"]


@pytest.mark.slow
def test_ray_resume_redoes_only_missing_rows(runs, bundle, manifest):
    on_ray = runs[1]
    csv_path = on_ray / "predictions.csv"
    before = csv_path.read_text()
    csv_path.write_text("".join(before.splitlines(keepends=True)[:6]))  # header + 5 rows
    assert main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(on_ray), *RAY_ARGS]) == 3
    assert json.loads((on_ray / "run.json").read_text())["n_skipped"] == 5
    assert csv_path.read_text() == before


@pytest.mark.slow
def test_ray_engine_without_ray_says_how_to_install(bundle, manifest, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code = main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(tmp_path / "qc"), "--engine", "ray"])
    assert code == 1
    assert "the ray engine needs Ray: pip install 'segqc[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "qc" / "predictions.csv").exists()


def test_default_workers_follow_the_cluster():
    pytest.importorskip("ray")
    from segqc.engines.ray_engine import default_workers

    cluster = SimpleNamespace(cluster_resources=lambda: {"CPU": 16.0, "GPU": 2.0})
    assert default_workers(cluster, 0) == 16 and default_workers(cluster, 0.5) == 4
    with pytest.raises(ValueError, match="has 0"):
        default_workers(SimpleNamespace(cluster_resources=lambda: {"CPU": 8.0}), 1)
