"""Mistakes in arguments, paths and configs are reported before any heavy library is imported.

Each case runs the real ``medclass`` entry point (``medclass.cli.app.main``) in a fresh Python process
and then reports, from inside that process, which of PyTorch, MONAI, kornia and scikit-learn were
imported: none may be. A behavioural check (what was imported), not a timing one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


HEAVY = ("torch", "monai", "kornia", "sklearn", "torchvision", "onnxruntime")

#: Runs every argument list of argv (JSON) through the CLI in this one process, collecting the exit
#: code, stderr and the heavy modules loaded so far: a later case cannot hide an earlier import.
WRAPPER = r"""
import contextlib, io, json, sys
from medclass.cli.app import main
out = []
for args in json.loads(sys.argv[1]):
    sys.argv = ["medclass", *args]
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
        except SystemExit as e:
            code = e.code
    out.append({"args": args, "code": code, "stderr": err.getvalue(),
                "heavy": [m for m in %r if m in sys.modules]})
print(json.dumps(out))
""" % (HEAVY,)


def run_cli_cases(cases: list[list[str]], cwd: Path) -> list[dict]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", WRAPPER, json.dumps(cases)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_argument_path_and_config_errors_come_before_heavy_imports(tmp_path):
    not_a_run = tmp_path / "plain"
    not_a_run.mkdir()
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    cases = {
        "data source": (["train", str(tmp_path / "no-such-folder")], "does not exist"),
        "bad --set key": (["train", "--set", "train.epoch=3"], "train.epoch"),
        "bad --set value": (["train", "--set", "train.epochs=many"], "train.epochs must be of type int"),
        "missing config": (["train", "--config", str(tmp_path / "none.yaml")], "none.yaml does not exist"),
        "broken config": (["train", "--config", str(tmp_path / "broken.yaml")], "not plain YAML"),
        "bad budget": (["train", "--time-budget", "soon"], "train.time_budget"),
        "resume nothing": (["train", "--name", "gone", "--runs-dir", str(tmp_path), "--resume"], "cannot resume"),
        "evaluate": (["evaluate", str(tmp_path / "no-run")], "not a medclass run folder"),
        "evaluate not a run": (["evaluate", str(not_a_run)], "not a medclass run folder"),
        "predict": (["predict", str(tmp_path / "no-run"), str(tmp_path / "x.png")], "not a medclass run folder"),
        "export": (["export", str(tmp_path / "no-run")], "not a medclass run folder"),
        "serve": (["serve", str(tmp_path / "no-run")], "not a medclass run folder"),
        "report": (["report", str(tmp_path / "no-run")], "not a medclass run folder"),
        "cv": (["cv", str(tmp_path / "no-data")], "does not exist"),
        "audit": (["audit", str(tmp_path / "no-data")], "does not exist"),
        "lr-find": (["lr-find", str(tmp_path / "no-data")], "does not exist"),
        "runs": (["runs", str(tmp_path / "no-runs")], "does not exist"),
    }
    results = run_cli_cases([args for args, _ in cases.values()], tmp_path)
    for (what, (args, expected)), r in zip(cases.items(), results):
        assert r["code"] == 2, (what, r)
        assert r["stderr"].startswith("error: ") and expected in r["stderr"], (what, r["stderr"])
        assert "Traceback" not in r["stderr"], what
        assert r["heavy"] == [], f"{what}: {r['heavy']} imported before the error was reported"


def test_a_good_command_does_import_torch(tmp_path):
    """The check above can fail: a command that gets past its checks loads PyTorch in the same harness."""
    results = run_cli_cases([["models"]], tmp_path)
    assert results[0]["code"] == 0 and "torch" in results[0]["heavy"]
