"""The table of runs in a folder (``medclass runs``): what each run is, how it ended, how it scored.

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

Torch-free (stdlib, yaml): ``medclass runs`` answers at once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from .runs import CV_FILE, RunError, RunFiles

__all__ = ["RUN_COLUMNS", "RUNS_FORMATS", "FAILED_FILE", "RUNNING_FILE", "is_run_folder", "find_runs",
           "run_status", "describe_run", "runs_table", "format_runs"]

#: Columns of the table, in order (``--sort`` takes any of them).
RUN_COLUMNS = ("name", "status", "data", "model", "image_size", "epochs", "budget", "wall_seconds",
               "test_accuracy", "balanced_accuracy", "auroc", "path")
#: Columns sorted best-first (descending) by ``--sort``; the others ascending.
DESCENDING = frozenset({"test_accuracy", "balanced_accuracy", "auroc", "epochs", "image_size", "wall_seconds"})
RUNS_FORMATS = ("table", "csv", "json")
#: The error marker :func:`medclass.engine.train` writes in a run folder when training fails.
FAILED_FILE = "failed.json"
#: Written while a training process works in the folder (pid, host, start time); removed at its end.
RUNNING_FILE = "running.json"


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
    running = _json(f.root / RUNNING_FILE)
    if isinstance(running, dict):
        same_host = running.get("host") == socket.gethostname()
        if not same_host or _pid_alive(int(running.get("pid", -1))):
            return "running"
    if (f.root / FAILED_FILE).is_file():
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
    test = _json(f.root / "eval-test" / "metrics.json") or {}
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


def runs_table(runs_dir: Path, sort: Optional[str] = None) -> list[dict[str, Any]]:
    """:func:`describe_run` of every run in ``runs_dir`` (:func:`find_runs`), sorted by the column
    ``sort`` (metrics, epochs, size and time best/largest first, the others A-Z; missing values
    last) or by name.

    Raises:
        RunError: see :func:`find_runs`.
        ValueError: ``sort`` is not a column of :data:`RUN_COLUMNS` (the message lists them).
    """
    if sort is not None and sort not in RUN_COLUMNS:
        raise ValueError(f"--sort must be one of {', '.join(RUN_COLUMNS)}, got {sort!r}")
    rows = [describe_run(p) for p in find_runs(runs_dir)]
    if sort:
        present = [r for r in rows if r[sort] is not None]
        missing = [r for r in rows if r[sort] is None]
        present.sort(key=lambda r: r[sort], reverse=sort in DESCENDING)
        rows = present + missing
    return rows


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in ("test_accuracy", "balanced_accuracy", "auroc"):
        return f"{value:.3f}"
    if column == "wall_seconds":
        return f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"
    return str(value)


_HEADERS = {"image_size": "size", "wall_seconds": "time", "test_accuracy": "test acc",
            "balanced_accuracy": "bal acc", "auroc": "AUROC"}


def format_runs(rows: Sequence[dict[str, Any]], fmt: str = "table") -> str:
    """The rows as text ending in a newline: an aligned ``table`` (no path column; numbers to
    three decimals, time in minutes), ``csv`` (every column, raw values) or ``json`` (a list of objects).

    Raises:
        ValueError: ``fmt`` is not one of :data:`RUNS_FORMATS`.
    """
    if fmt == "json":
        return json.dumps(list(rows), indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=RUN_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if r[k] is None else r[k]) for k in RUN_COLUMNS} for r in rows)
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"--format must be table, csv or json, got {fmt!r}")
    columns = [c for c in RUN_COLUMNS if c != "path"]
    cells = [[_HEADERS.get(c, c) for c in columns]] + [[_cell(c, r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    numeric = {"image_size", "epochs", "wall_seconds", "test_accuracy", "balanced_accuracy", "auroc"}
    lines = ["  ".join(v.rjust(w) if c in numeric else v.ljust(w) for c, v, w in zip(columns, row, widths)).rstrip()
             for row in cells]
    if not rows:
        lines.append("(no runs)")
    return "\n".join(lines) + "\n"
