"""The run folder rules (naming, resuming), train() leaving its config alone, and the CLI's one
handler of user-facing errors."""

import re
import sys
from datetime import datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medclass.cli.app import _user_errors, app
from medclass.core.config import RunConfig
from medclass.engine import train
from medclass.core.runs import RunError
from medclass.core.runs import new_run_dir, resume_run_dir

from helpers import make_folder_dataset, tiny_config


def test_new_run_dir_names_and_torchrun_rule(tmp_path):
    cfg = RunConfig()
    cfg.data.source, cfg.model.arch = "/data/chest-ct", "resnet50"
    when = datetime(2024, 5, 6, 7, 8, 9)
    assert new_run_dir(tmp_path, "mine", cfg, world_size=4) == tmp_path / "mine"
    assert new_run_dir(tmp_path, None, cfg, world_size=1, now=when) == tmp_path / "chest-ct-resnet50-20240506-070809"
    cfg.data.source = None  # the bundled BreastMNIST
    assert new_run_dir(tmp_path, None, cfg, world_size=1, now=when).name == "breastmnist-resnet50-20240506-070809"
    with pytest.raises(RunError, match="under torchrun give --name"):
        new_run_dir(tmp_path, None, cfg, world_size=2)
    assert not any(tmp_path.iterdir())  # nothing is created


def test_resume_run_dir_needs_a_name_and_a_config(tmp_path):
    with pytest.raises(RunError, match="^--resume needs --name of the run to continue$"):
        resume_run_dir(tmp_path, None)
    with pytest.raises(RunError, match=re.escape(f"cannot resume: {tmp_path / 'gone'}/config.yaml not found")):
        resume_run_dir(tmp_path, "gone")
    cfg = RunConfig()
    cfg.train.epochs = 7
    (tmp_path / "run").mkdir()
    cfg.save(tmp_path / "run" / "config.yaml")
    folder, loaded = resume_run_dir(tmp_path, "run")
    assert folder == tmp_path / "run" and loaded.train.epochs == 7


def test_train_leaves_its_config_unchanged_new_and_resumed(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=6)
    cfg = tiny_config(data, epochs=1)
    cfg.model.arch, cfg.model.cnn_widths = "custom_cnn", [8, 16]
    before = cfg.to_dict()
    train(cfg, tmp_path / "run")
    assert cfg.to_dict() == before
    saved = RunConfig.load(tmp_path / "run" / "config.yaml")
    saved.train.epochs = 2
    before = saved.to_dict()
    train(saved, tmp_path / "run", resume=True)  # a resumed run reads the run's manifest.csv
    assert saved.to_dict() == before and saved.data.manifest is None


def test_cli_user_errors_are_one_line_without_traceback(tmp_path):
    missing = tmp_path / "no" / "such" / "run"
    for args in (["evaluate", str(missing)], ["report", str(missing)], ["compare", str(missing)],
                 ["export", str(missing)], ["train", "--resume"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)
        assert "Traceback" not in result.output
        if args[0] != "train":
            assert str(missing) in lines[0]


def test_user_errors_handler_passes_other_exceptions_through():
    class Bug(Exception):
        pass

    with pytest.raises(Bug):
        with _user_errors():
            raise Bug("a programming error keeps its traceback")
    with pytest.raises(KeyError):
        with _user_errors(OSError):
            raise KeyError("x")
    with pytest.raises(typer.Exit) as info:
        with _user_errors(OSError):
            raise OSError("disk gone")
    assert info.value.exit_code == 2


def test_user_errors_handler_imports_nothing():
    """Catching medclass's errors looks only at loaded modules: no PyTorch on the ONNX path."""
    import subprocess

    code = ("import sys\n"
            "from medclass.cli.app import _user_errors\n"
            "import typer\n"
            "try:\n"
            "    with _user_errors():\n"
            "        raise ValueError('bad')\n"
            "except typer.Exit:\n"
            "    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "error: bad" in proc.stderr
