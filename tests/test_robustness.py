"""Malformed or hostile run folders and full disks end in a clear error naming the file and what to
do, never a traceback or a wrong answer (issue 14, defects 4, 5, 8 and the CLI parts of 9).

The run here is a custom CNN trained for one epoch on 16 px synthetic images (seconds on a CPU).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medclass.cli.app import app
from medclass.engine import CheckpointError, load_checkpoint, load_run, train
from medclass.core.runs import RunError
from medclass.engine import checkpoint as checkpoint_module
from medclass.core.spec import read_spec

from helpers import make_folder_dataset, tiny_config


def small_config(data, **train_options):
    cfg = tiny_config(data, **train_options)
    cfg.model.arch, cfg.model.cnn_widths = "custom_cnn", [8, 16]
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robust")
    data = make_folder_dataset(root / "data", per_class=8)
    return train(small_config(data, epochs=1), root / "runs" / "r").files.root


def copy_run(run_dir: Path, tmp_path: Path, name: str = "copy") -> Path:
    dest = tmp_path / name
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("eval-*"))
    return dest


# ------------------------------------------------------------------ 4: disk full inside torch.save


class _FillsUp(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails every write with ENOSPC, as a full disk does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)


def test_disk_full_inside_torch_save_names_the_file_and_the_resume_command(tmp_path, monkeypatch):
    """torch.save's zip writer turns the ENOSPC of its write callback into
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``: it must still end in
    the RunError that names the file and how to resume."""
    data = make_folder_dataset(tmp_path / "data", per_class=8)
    real_save = torch.save
    calls = {"n": 0}

    def save_on_a_filling_disk(obj, f):
        calls["n"] += 1
        if calls["n"] >= 3:  # best.pt and last.pt of epoch 1 are whole; epoch 2 fills the disk
            return real_save(obj, _FillsUp(f, 2000))
        return real_save(obj, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_on_a_filling_disk)
    run = tmp_path / "runs" / "full"
    with pytest.raises(RunError) as info:
        train(small_config(data, epochs=3), run)
    message = str(info.value)
    assert "no space left on device" in message and "--resume" in message, message
    assert "unexpected pos" not in message
    assert str(run / "checkpoints") in message
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1


# ------------------------------------------------------------------ 5: evaluate and planted symlinks


def test_evaluate_replaces_planted_symlinks_instead_of_writing_through_them(run_dir, tmp_path):
    from medclass.evaluation import evaluate_run

    run = copy_run(run_dir, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {}
    (run / "eval-test").mkdir()
    for name in ("metrics.json", "predictions.csv", "roc.png", "confusion_matrix.png", "reliability.png"):
        victim = outside / name
        victim.write_text("precious")
        (run / "eval-test" / name).symlink_to(victim)
        victims[name] = victim
    cal_victim = outside / "calibration.json"
    cal_victim.write_text("precious")
    (run / "calibration.json").symlink_to(cal_victim)
    evaluate_run(run, progress=False, n_bootstrap=20)
    for name, victim in victims.items():
        assert victim.read_text() == "precious", name
        assert not (run / "eval-test" / name).is_symlink() and (run / "eval-test" / name).is_file(), name
    assert cal_victim.read_text() == "precious"
    assert json.loads((run / "eval-test" / "metrics.json").read_text())["n"] > 0


def test_evaluate_refuses_an_output_folder_that_is_a_symlink(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (run / "eval-test").symlink_to(outside, target_is_directory=True)
    result = CliRunner().invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 2, result.output
    assert "symbolic link" in result.output and "eval-test" in result.output
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------ 8: malformed run folders


def legacy_copy(run_dir: Path, tmp_path: Path) -> Path:
    """A copy without model_spec.json: the spec is rebuilt from config.yaml, classes.json, calibration.json."""
    run = copy_run(run_dir, tmp_path, "legacy")
    (run / "model_spec.json").unlink()
    return run


def cli_error(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return result.output


def test_python_yaml_tag_in_config_is_refused_naming_the_file(run_dir, tmp_path):
    run = legacy_copy(run_dir, tmp_path)
    (run / "config.yaml").write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError) as info:
        read_spec(run)
    assert "config.yaml" in str(info.value) and "YAML" in str(info.value)
    out = cli_error("evaluate", str(run))
    assert "config.yaml" in out


def test_class_names_that_do_not_match_the_head_are_refused(run_dir, tmp_path):
    run = legacy_copy(run_dir, tmp_path)
    (run / "classes.json").write_text(json.dumps([f"c{i}" for i in range(10_000)]))
    with pytest.raises(ValueError) as info:
        load_run(run, device="cpu")
    message = str(info.value)
    assert "classes.json" in message and "10000" in message and "2" in message


def test_non_string_class_names_are_refused(run_dir, tmp_path):
    run = legacy_copy(run_dir, tmp_path)
    (run / "classes.json").write_text(json.dumps([1, {"a": 2}]))
    with pytest.raises(ValueError, match="classes.json"):
        read_spec(run)


def test_a_dict_classes_json_is_refused(run_dir, tmp_path):
    run = legacy_copy(run_dir, tmp_path)
    (run / "classes.json").write_text(json.dumps({"0": "dark", "1": "bright"}))
    with pytest.raises(ValueError, match="classes.json.*list"):
        read_spec(run)


def test_duplicate_class_names_are_refused(run_dir, tmp_path):
    run = legacy_copy(run_dir, tmp_path)
    (run / "classes.json").write_text(json.dumps(["dark", "dark"]))
    with pytest.raises(ValueError) as info:
        read_spec(run)
    assert "classes.json" in str(info.value) and "dark" in str(info.value) and "duplicate" in str(info.value)


def test_duplicate_class_names_in_model_spec_are_refused(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    spec = json.loads((run / "model_spec.json").read_text())
    spec["class_names"] = ["dark", "dark"]
    (run / "model_spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="model_spec.json.*duplicate"):
        read_spec(run)


def test_a_self_referencing_ensemble_is_refused(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path, "ens")
    (run / "ensemble.json").write_text(json.dumps({"members": [str(run)], "weights": [1.0]}))
    with pytest.raises(RunError) as info:
        load_run(run, device="cpu")
    assert "ensemble.json" in str(info.value) and "itself" in str(info.value)


def test_a_non_json_ensemble_file_is_refused(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path, "ens2")
    (run / "ensemble.json").write_text("members: [a]")
    with pytest.raises(ValueError, match="ensemble.json"):
        load_run(run, device="cpu")


def test_a_non_json_calibration_file_is_named(run_dir, tmp_path):
    run = legacy_copy(run_dir, tmp_path)
    (run / "calibration.json").write_text("temperature: 1.5")
    with pytest.raises(ValueError, match="calibration.json.*not JSON"):
        read_spec(run)
    (run / "calibration.json").write_text('{"temperature": "hot"}')
    with pytest.raises(ValueError, match="calibration.json"):
        read_spec(run)


def test_serve_refuses_non_string_class_names_without_a_traceback(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    spec = json.loads((run / "model_spec.json").read_text())
    spec["class_names"] = [1, 2]
    (run / "model_spec.json").write_text(json.dumps(spec))
    out = cli_error("serve", str(run), "--port", "1")
    assert "model_spec.json" in out and "class_names" in out


# ------------------------------------------------------------------ 9: CLI contract


def test_predict_exits_non_zero_and_counts_failures(run_dir, tmp_path):
    good = sorted((run_dir.parent.parent / "data").rglob("*.png"))[:3]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in good:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    (folder / "broken.png").write_bytes(b"not a png at all")
    out_file = tmp_path / "preds.csv"
    result = CliRunner().invoke(app, ["predict", str(run_dir), str(folder), "--format", "csv", "-o", str(out_file)])
    assert result.exit_code == 1, result.output
    assert "1 of 4" in result.output and "failed" in result.output
    assert "wrote 4 predictions" not in result.output


def test_a_tampered_checkpoint_does_not_advise_weights_only_false(tmp_path):
    path = tmp_path / "best.pt"

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"model": {}, "epoch": 1, "x": Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "refusing to load" in message and "getcwd" in message and "trusted copy" in message
    assert "weights_only" not in message and "will likely succeed" not in message


def test_a_dict_of_class_names_in_model_spec_is_refused(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    spec = json.loads((run / "model_spec.json").read_text())
    spec["class_names"] = {"0": "dark", "1": "bright"}
    (run / "model_spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="model_spec.json.*list of class names"):
        read_spec(run)


def test_a_binary_calibration_file_is_named(run_dir, tmp_path):
    run = legacy_copy(run_dir, tmp_path)
    (run / "calibration.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="calibration.json is not JSON"):
        read_spec(run)
