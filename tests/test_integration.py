"""End to end on real images from ../shared/data through the CLI: train, evaluate, predict."""

import json

import pytest
from typer.testing import CliRunner

from medclass.cli.app import app

from helpers import shared_set as needs  # SHARED_DATA / name, or skip

runner = CliRunner()

pytestmark = pytest.mark.integration


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.slow
def test_chest_ct_train_evaluate_predict(tmp_path):
    data = needs("chest-ct")
    out = invoke(
        "train", data, "--name", "ct", "--runs-dir", tmp_path, "--epochs", "2", "--image-size", "32",
        "--batch-size", "8", "--set", "train.max_steps_per_epoch=2", "--set", "model.stem=imagenet", "--arch", "resnet50",
    )
    run = tmp_path / "ct"
    assert "resnet50 (23,516,228 parameters)" in out  # ResNet-50 with a 4-class head
    assert "test: n=259" in out
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics["class_names"] == ["adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma"]
    assert sum(map(sum, metrics["confusion_matrix"])) == 259
    assert set(metrics["per_class"]["normal"]) == {"precision", "recall", "f1", "support"}
    assert metrics["per_class"]["normal"]["support"] == 54
    assert 0.0 <= metrics["auroc"] <= 1.0
    for name in ("confusion_matrix.png", "roc.png", "predictions.csv"):
        assert (run / "eval-test" / name).stat().st_size > 0
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs

    # evaluate another split into another folder
    invoke("evaluate", run, "--split", "valid", "--out", tmp_path / "ev")
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == 72

    # predict a folder, a file and a broken file: the broken one gets an error, the rest a class
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    one = next((data / "test" / "normal").iterdir())
    result = runner.invoke(app, [str(a) for a in ("predict", run, data / "test" / "large.cell.carcinoma", one, broken,
                                                  "--format", "json")])
    assert result.exit_code == 1 and "1 of 53 files failed" in result.output  # the broken file: exit 1
    out = result.stdout
    rows = json.loads(out[: out.rindex("]") + 1])
    assert len(rows) == 51 + 2
    assert rows[-1]["error"] and "broken.png" in rows[-1]["error"]
    good = rows[:-1]
    assert all(r["error"] is None for r in good)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in good)
    assert all(r["predicted"] == max(r["probabilities"], key=r["probabilities"].get) for r in good)
    csv_out = invoke("predict", run, one, "--format", "csv")
    assert csv_out.splitlines()[0].startswith("path,predicted,p_adenocarcinoma")


@pytest.mark.slow
def test_brain_mri_single_logit_binary(tmp_path):
    data = needs("brain-tumor-mri-yn")
    invoke(
        "train", data, "--name", "mri", "--runs-dir", tmp_path, "--epochs", "1", "--image-size", "32",
        "--single-logit", "--arch", "resnet18", "--set", "data.channels=1", "--set", "train.max_steps_per_epoch=2",
    )
    metrics = json.loads((tmp_path / "mri" / "eval-test" / "metrics.json").read_text())
    assert metrics["class_names"] == ["no", "yes"]
    assert metrics["n"] == 39  # 15 % of 254 images, stratified
    manifest = (tmp_path / "mri" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 254
    assert any(line.lower().endswith((".jpg", ".jpeg", ".png")) or ".JPG" in line for line in manifest[1:])


def test_resume_continues_an_interrupted_cli_run(tmp_path):
    data = needs("brain-tumor-mri-yn")
    args = ["train", data, "--name", "r", "--runs-dir", tmp_path, "--image-size", "32", "--arch", "resnet18",
            "--set", "train.max_steps_per_epoch=1", "--no-eval"]
    invoke(*args, "--epochs", "1")
    # the same name again without --resume is refused, with the fix in the message
    refused = runner.invoke(app, [str(a) for a in args + ["--epochs", "1"]])
    assert refused.exit_code == 2 and "--resume" in refused.output
    cfg = tmp_path / "r" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("epochs: 1", "epochs: 2"))
    invoke("train", "--name", "r", "--runs-dir", tmp_path, "--resume", "--no-eval")
    assert len((tmp_path / "r" / "metrics.csv").read_text().splitlines()) == 3


def test_bad_input_gives_clear_errors(tmp_path):
    missing = runner.invoke(app, ["train", str(tmp_path / "nope"), "--runs-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad_key = runner.invoke(app, ["train", "--set", "train.epoch=3", "--runs-dir", str(tmp_path)])
    assert bad_key.exit_code == 2 and "train.epoch" in bad_key.output
    not_run = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert not_run.exit_code == 2 and "not a medclass run" in not_run.output
