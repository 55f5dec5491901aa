"""What a run folder says about itself, read from its files alone: is it a run, its status, its summary row.

Each run is read from the files its folder holds, never by loading a model, so listing a hundred
runs takes a fraction of a second and works on copies without checkpoints (``results/``):

- ``config.yaml`` (or ``model_spec.json``): data, model, image size, epochs or time budget;
- ``train_summary.json``: epochs run, training time; ``metrics.csv`` when there is no summary;
- ``eval-test/metrics.json``: test accuracy, balanced accuracy, AUROC (``medclass evaluate``);
- a cross-validation's folder (``cv.json``): its folds' ensemble on the test split, the model
  named with its number of folds;
- the status (:func:`run_status`): ``running`` (``running.json`` names a live process on this
  machine), ``failed`` (``failed.json``, the error marker the trainer writes), ``finished``
  (``train_summary.json``, or an ensemble's ``ensemble.json``), ``interrupted`` (epochs or a
  ``last.pt`` without a summary: continue it with ``--resume``), ``not started`` (set up, no
  epoch ended).

Torch-free (stdlib, yaml). Read by ``medclass runs`` (:mod:`medclass.cli.runs_table`) and ``medclass compare``.
"""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path
from typing import Any, Optional

import yaml

from .runs import CV_FILE, RunError, RunFiles

__all__ = ["is_run_folder", "find_runs", "run_status", "describe_run"]


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a folder a medclass training or ensemble wrote (``config.yaml``,
    ``model_spec.json``, ``train_summary.json`` or ``ensemble.json``)."""
    f = RunFiles(Path(path))
    return f.root.is_dir() and any(p.is_file() for p in (f.config, f.spec, f.summary, f.ensemble))


def find_runs(runs_dir: Path) -> list[Path]:
    """The run folders directly inside ``runs_dir`` (sorted by name), or ``[runs_dir]`` when it is a run itself.

    Raises:
        RunError: ``runs_dir`` does not exist or is not a folder.
    """
    root = Path(runs_dir)
    if not root.exists():
        raise RunError(f"runs folder {root} does not exist; give the --runs-dir of `medclass train` (default ./runs)")
    if not root.is_dir():
        raise RunError(f"{root} is a file; give a folder of runs (the --runs-dir of `medclass train`)")
    if is_run_folder(root):
        return [root]
    return sorted((p for p in root.iterdir() if is_run_folder(p)), key=lambda p: p.name)


def _json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return False
    return True


def run_status(run_dir: Path) -> str:
    """``running``, ``failed``, ``finished``, ``interrupted`` or ``not started`` (see the module docstring).

    A ``running.json`` whose process is gone (killed) counts as not running; one from another
    machine counts as running.
    """
    f = RunFiles(Path(run_dir))
    running = _json(f.running)
    if isinstance(running, dict):
        same_host = running.get("host") == socket.gethostname()
        if not same_host or _pid_alive(int(running.get("pid", -1))):
            return "running"
    if (f.failed).is_file():
        return "failed"
    cv = _json(f.root / CV_FILE)
    if isinstance(cv, dict):  # a cross-validation: done once its out-of-fold figures are written
        return "finished" if "out_of_fold" in cv else "interrupted"
    if f.summary.is_file() or f.ensemble.is_file():
        return "finished"
    if f.last.is_file() or f.metrics_csv.is_file():
        return "interrupted"
    return "not started"


def _metrics_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def _data_name(source: Optional[str], test: Optional[dict]) -> str:
    if source:
        p = Path(str(source))
        return p.name or str(source)
    if test and test.get("data"):
        return Path(str(test["data"])).name if "/" in str(test["data"]) else str(test["data"])
    return "breastmnist (bundled)"


def describe_run(run_dir: Path) -> dict[str, Any]:
    """One row of the table (keys :data:`RUN_COLUMNS`) from the files of ``run_dir``; a value the
    folder does not hold is ``None``. ``wall_seconds``: the run's training time across resumes
    (a time budget's measured total when it has one; else the epochs' seconds)."""
    f = RunFiles(Path(run_dir))
    cfg_dict: dict[str, Any] = {}
    if f.config.is_file():
        try:
            loaded = yaml.safe_load(f.config.read_text())
            cfg_dict = loaded if isinstance(loaded, dict) else {}
        except (OSError, yaml.YAMLError):
            cfg_dict = {}
    data = cfg_dict.get("data") or {}
    model = cfg_dict.get("model") or {}
    train = cfg_dict.get("train") or {}
    spec = _json(f.spec) or {}
    summary = _json(f.summary) or {}
    test = _json(f.eval_dir("test") / "metrics.json") or {}
    ensemble = _json(f.ensemble) if f.ensemble.is_file() else None
    cv = _json(f.root / CV_FILE)
    if isinstance(cv, dict):  # the fold models' ensemble on the test split (cv.json: ensemble_test)
        test = {**(cv.get("ensemble_test") or {}), "data": test.get("data")}

    if ensemble:
        members = ensemble.get("members", [])
        model_name = f"ensemble of {len(members)}"
    else:
        arch = model.get("arch") or spec.get("arch") or None
        stem = model.get("stem")
        model_name = f"{arch} ({stem} stem)" if arch and arch.startswith("resnet") and stem == "small" else arch
        if model_name and model.get("pretrained"):
            model_name += f" from {Path(str(model['pretrained'])).name}"
        if isinstance(cv, dict) and model_name:
            model_name += f", {(cv.get('settings') or {}).get('folds', len(cv.get('folds', [])))}-fold cv"
    size = spec.get("image_size") or data.get("image_size") or test.get("image_size")
    rows = _metrics_rows(f.metrics_csv)
    epochs = summary.get("epochs_run", len(rows) if rows else None)
    wall = None
    if isinstance(summary.get("budget"), dict) and summary["budget"].get("actual_seconds") is not None:
        wall = summary["budget"]["actual_seconds"]
    elif summary.get("train_seconds") is not None:
        wall = summary["train_seconds"]
    elif rows:
        try:
            wall = sum(float(r["seconds"]) for r in rows)
        except (KeyError, ValueError):
            wall = None
    return {
        "name": f.root.name,
        "status": run_status(f.root),
        "data": _data_name(data.get("source"), test),
        "model": model_name,
        "image_size": int(size) if isinstance(size, (int, float)) else None,
        "epochs": int(epochs) if epochs is not None else None,
        "budget": str(train["time_budget"]) if train.get("time_budget") is not None else None,
        "wall_seconds": float(wall) if wall is not None else None,
        "test_accuracy": test.get("accuracy"),
        "balanced_accuracy": test.get("balanced_accuracy"),
        "auroc": test.get("auroc"),
        "path": str(f.root),
    }
