"""benchmarks/recipe_vs_monai.py end to end on a tiny synthetic folder (--smoke: a few steps per side)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from helpers import make_folder_dataset

pytest.importorskip("monai")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "recipe_vs_monai.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("recipe_vs_monai", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run_writes_both_sides(tmp_path, capsys):
    bench = _load_script()
    data = make_folder_dataset(tmp_path / "data", size=24, splits={"train": 10, "valid": 4, "test": 5})
    out, runs = tmp_path / "result.json", tmp_path / "runs"
    assert bench.main([str(data), "--budget", "0.05", "--smoke", "--image-size", "32",
                       "--runs-dir", str(runs), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["hardware"]["cpu_model"] and "machine_during_run" in record["results"]["monai"]
    # one split for both: the manifest holds every file once, and both sides scored its 10 test images
    with open(record["data"]["manifest"]) as f:
        rows = list(csv.DictReader(f))
    assert {r["split"] for r in rows} == {"train", "valid", "test"} and len(rows) == 38
    for side in ("monai", "medclass"):
        r = record["results"][side]
        assert r["test_n"] == 10 and r["image_size"] == 32
        assert 1 <= r["epochs_run"] <= bench.SMOKE_EPOCHS and r["wall_s"] > 0
        for m in ("accuracy", "balanced_accuracy", "auroc"):
            low, high = r[f"test_{m}_ci95"]
            assert 0 <= low <= r[f"test_{m}"] <= high <= 1
    med = record["results"]["medclass"]
    assert f"data.manifest={record['data']['manifest']}" in med["command"]
    assert (runs / "medclass" / "eval-test" / "metrics.json").is_file()
    table = capsys.readouterr().out
    assert "| monai |" in table and "| medclass |" in table
    assert med["as_deployed"]["rule"] in ("threshold", "argmax")  # two classes: the validation threshold
    # re-scoring the same medclass run (an evaluation change) keeps its training figures
    out2 = tmp_path / "rescored.json"
    assert bench.main([str(data), "--budget", "0.05", "--smoke", "--image-size", "32", "--runs-dir", str(tmp_path / "r2"),
                       "--monai-from", str(out), "--medclass-from", str(out), "--out", str(out2)]) == 0
    again = json.loads(out2.read_text())["results"]["medclass"]
    assert again["rescored"]["from"] == str(out) and again["epochs_run"] == med["epochs_run"]
    assert again["test_n"] == 10 and again["test_auroc"] == pytest.approx(med["test_auroc"])


def test_medclass_command_uses_the_budget_and_the_split(tmp_path):
    bench = _load_script()
    args = bench.parse_args([str(tmp_path / "data.npz"), "--budget", "2.5", "--medclass-args", "--set train.lr=3e-3"])
    assert args.image_size == 28 and args.channels == 1  # MedMNIST defaults
    cmd = bench.medclass_command(args, "/x/manifest.csv", tmp_path)
    assert cmd[cmd.index("--time-budget") + 1] == "150s"
    assert "data.manifest=/x/manifest.csv" in cmd and "data.channels=1" in cmd and cmd[-2:] == ["--set", "train.lr=3e-3"]
    assert "--image-size" not in cmd  # medclass's default size (auto, for the budget); 28 px is the MONAI side's
    args = bench.parse_args([str(tmp_path), "--budget", "1", "--medclass-args", "--image-size 64"])
    cmd = bench.medclass_command(args, "m.csv", tmp_path)
    assert cmd.count("--image-size") == 1 and cmd[cmd.index("--image-size") + 1] == "64"


def test_skip_corrupt_leaves_unreadable_files_out_of_the_split(tmp_path):
    bench = _load_script()
    data = make_folder_dataset(tmp_path / "data", size=16, splits={"train": 4, "valid": 2, "test": 2})
    broken = data / "test" / "dark" / "dark_0.png"
    broken.write_bytes(b"not a png")
    args = bench.parse_args([str(data), "--budget", "1", "--skip-corrupt"])
    split = bench.make_split(args, tmp_path / "manifest.csv")
    assert split["unreadable_left_out"] == [str(broken)] and split["counts"] == {"train": 8, "valid": 4, "test": 3}
    assert str(broken) not in (tmp_path / "manifest.csv").read_text()


def test_monai_side_is_reused_only_on_the_same_split(tmp_path):
    bench = _load_script()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,split,label\na.png,train,0\nb.png,test,1\n")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"date": "2026-11-29T10:00:00+00:00", "data": {"manifest": str(manifest)},
                                   "results": {"monai": {"test_accuracy": 0.8, "test_n": 1}}}))
    split = {"manifest": str(manifest), "manifest_sha256": bench.file_sha256(manifest)}
    side = bench.earlier_monai_side(earlier, split)
    assert side["test_accuracy"] == 0.8 and side["taken_from"]["file"] == str(earlier)
    other = tmp_path / "other.csv"
    other.write_text("path,split,label\na.png,test,0\nb.png,train,1\n")  # the same files, split differently
    with pytest.raises(SystemExit, match="split differs"):
        bench.earlier_monai_side(earlier, {"manifest": str(other), "manifest_sha256": bench.file_sha256(other)})
    manifest.unlink()
    with pytest.raises(SystemExit, match="is gone"):
        bench.earlier_monai_side(earlier, split)


def test_medclass_side_is_rescored_only_on_the_same_split(tmp_path):
    bench = _load_script()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,split,label\na.png,train,0\nb.png,test,1\n")
    split = {"manifest": str(manifest), "manifest_sha256": bench.file_sha256(manifest)}
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"data": {"manifest_sha256": "0" * 64},
                                   "results": {"medclass": {"run_dir": str(tmp_path / "run")}}}))
    with pytest.raises(SystemExit, match="split differs"):
        bench.rescore_medclass(earlier, split, dedupe=False)
    earlier.write_text(json.dumps({"data": {"manifest_sha256": split["manifest_sha256"]},
                                   "results": {"medclass": {"run_dir": str(tmp_path / "run")}}}))
    with pytest.raises(SystemExit, match="is gone"):
        bench.rescore_medclass(earlier, split, dedupe=False)
    earlier.write_text(json.dumps({"results": {"monai": {}}}))
    with pytest.raises(SystemExit, match="no|not a recipe_vs_monai"):
        bench.rescore_medclass(earlier, split, dedupe=False)
