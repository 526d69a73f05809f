"""`predict --num-parts K --part-id i` + `segqc merge` give what one run over every case gives."""

import json
import shutil

import pytest
from conftest import candidates_manifest

from segqc.cli import main
from segqc.pipeline.parts import select_part


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle("kvasir")


@pytest.fixture()
def manifest(tmp_path):
    return candidates_manifest("kvasir", tmp_path / "cases.csv", 11, bad=True)


def test_select_part_is_a_deterministic_partition():
    items = list(range(11))
    parts = [select_part(items, 3, i) for i in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7, 10]
    with pytest.raises(ValueError, match="part-id"):
        select_part(items, 3, 3)
    with pytest.raises(ValueError, match="num-parts"):
        select_part(items, 0, 0)


@pytest.mark.slow
def test_parts_merged_equal_one_run(bundle, manifest, tmp_path, capsys):
    one, split = tmp_path / "a", tmp_path / "b"  # folders of equal path length: map paths compare as text
    assert main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(one / "qc")]) == 3
    parts = [split / f"part{i}" for i in range(3)]
    for i, part in enumerate(parts):
        code = main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(part), "--num-parts", "3",
                     "--part-id", str(i)])
        assert code in (0, 3)
    assert main(["merge", *map(str, parts), "--out", str(split / "qc")]) == 3
    single = (one / "qc" / "predictions.csv").read_text()
    merged = (split / "qc" / "predictions.csv").read_text()
    assert merged == single.replace(str(one), str(split))  # the same rows, in the same order, byte for byte
    assert json.loads((split / "qc" / "dataset.json").read_text()) == json.loads((one / "qc" / "dataset.json")
                                                                                 .read_text())
    maps = sorted(p.relative_to(one / "qc") for p in (one / "qc" / "maps").rglob("*") if p.is_file())
    assert maps and maps == sorted(p.relative_to(split / "qc") for p in (split / "qc" / "maps").rglob("*")
                                   if p.is_file())
    assert all((one / "qc" / m).read_bytes() == (split / "qc" / m).read_bytes() for m in maps)
    run = json.loads((split / "qc" / "run.json").read_text())
    assert run["n_ok"] == 11 and run["n_failed"] == 2 and len(run["options"]["merged_from"]) == 3
    # the merged folder is a single run's: predict there again only retries the failed cases
    capsys.readouterr()
    assert main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(split / "qc")]) == 3
    assert sorted((split / "qc" / "predictions.csv").read_text().splitlines()) == sorted(merged.splitlines())
    assert "0 cases judged, 2 failed, 11 already done" in capsys.readouterr().out


@pytest.mark.slow
def test_merge_refuses_what_is_not_one_whole_run(bundle, manifest, tmp_path, capsys):
    parts = [tmp_path / f"part{i}" for i in range(3)]
    for i, part in enumerate(parts):
        main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(part), "--num-parts", "3",
              "--part-id", str(i), "--no-maps"])
    capsys.readouterr()
    assert main(["merge", str(parts[0]), str(parts[2]), "--out", str(tmp_path / "m1")]) == 1
    assert "missing [1]" in capsys.readouterr().err
    assert main(["merge", str(parts[0]), str(parts[0]), str(parts[2]), "--out", str(tmp_path / "m2")]) == 1
    capsys.readouterr()
    # a part of another run (maps on) is not a part of this one
    other = tmp_path / "other"
    main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(other), "--num-parts", "3",
          "--part-id", "1"])
    capsys.readouterr()
    assert main(["merge", str(parts[0]), str(other), str(parts[2]), "--out", str(tmp_path / "m3")]) == 1
    assert "not a part of the same run" in capsys.readouterr().err
    # a part that was interrupted (no run.json yet) must be finished first
    (parts[1] / "run.json").unlink()
    assert main(["merge", *map(str, parts), "--out", str(tmp_path / "m4")]) == 1
    assert "not finished" in capsys.readouterr().err
    # another part id into a folder that holds a part already: refused, not mixed
    shutil.rmtree(parts[1])
    main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(parts[1]), "--num-parts", "3",
          "--part-id", "1", "--no-maps"])
    capsys.readouterr()
    assert main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(parts[1]), "--num-parts", "3",
                 "--part-id", "2", "--no-maps"]) == 1
    assert "another run" in capsys.readouterr().err
