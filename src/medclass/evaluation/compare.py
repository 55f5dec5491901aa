"""Comparing runs side by side: one Markdown and CSV table and a bar chart."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import torch  # noqa: E402

from ..core.config import RunConfig  # noqa: E402
from ..core.fileio import atomic_write, atomic_write_text  # noqa: E402
from ..models import build_model, count_parameters  # noqa: E402
from ..core.runs import RunError, RunFiles  # noqa: E402
from ..core.run_index import describe_run, is_run_folder  # noqa: E402
from ..core.spec import read_spec  # noqa: E402
from .evaluate import evaluate_run  # noqa: E402

__all__ = ["compare_runs", "COMPARE_COLUMNS"]

COMPARE_COLUMNS = (
    "run", "status", "model", "parameters", "loss", "accuracy", "val_loss", "val_accuracy",
    "test_accuracy", "balanced_accuracy", "auroc", "train_seconds",
)


def _describe(cfg: Optional[RunConfig], files: RunFiles) -> str:
    if files.ensemble.is_file():
        spec = json.loads(files.ensemble.read_text())
        parts = ", ".join(f"{Path(p).name} x{w:.2f}" for p, w in zip(spec["members"], spec["weights"]))
        return f"soft-voting ensemble ({parts})"
    if cfg is None:
        return "n/a"
    m = cfg.model
    if m.arch == "custom_cnn":
        return f"custom CNN {m.cnn_widths}"
    if m.arch == "chained":
        base = "EfficientNet-Lite0" if getattr(m, "chain_base", "resnet50") == "efficientnet_lite0" else "ResNet-50"
        return (f"chained: {base} to stage {m.chain_stage} -> CNN {m.cnn_widths}"
                + (f" ({base} frozen)" if m.chain_freeze_resnet else ""))
    start = f", from {Path(m.pretrained).name}" if m.pretrained else ", from scratch"
    return m.arch.replace("resnet", "ResNet-") + start


def _parameters(cfg: Optional[RunConfig], files: RunFiles) -> Optional[int]:
    """Parameters of the run's network, built on the ``meta`` device from its config and classes
    (no weights read); None for an ensemble (:func:`_row` sums its members') or a folder without them."""
    if cfg is None or files.ensemble.is_file():
        return None
    try:
        spec = read_spec(files.root)
        with torch.device("meta"):
            model = build_model(dataclasses.replace(cfg.model, arch=spec.arch or cfg.model.arch),
                                len(spec.class_names), spec.channels)
        return count_parameters(model)
    except Exception:  # a folder too incomplete to say: the table shows n/a
        return None


def _best_row(files: RunFiles, epoch: Optional[int], monitor: str) -> Optional[dict[str, str]]:
    """The ``metrics.csv`` row of ``epoch``, or (an interrupted run, no summary) of the best ``monitor``."""
    if not files.metrics_csv.is_file():
        return None
    with open(files.metrics_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    if epoch is not None:
        return next((r for r in rows if int(r["epoch"]) == epoch), None)
    sign = -1.0 if "loss" in monitor else 1.0
    scored = [r for r in rows if r.get(monitor) not in (None, "")]
    return max(scored, key=lambda r: sign * float(r[monitor])) if scored else rows[-1]


def _row(run_dir: Path, progress: bool) -> dict[str, Any]:
    """One row of the comparison from what the run folder holds: finished, interrupted or failed
    runs, copies without checkpoints (``results/``) and ensembles; a figure the folder cannot give
    is None (n/a). Test figures are those :func:`medclass.core.run_index.describe_run` reads
    (``eval-test/metrics.json``; a cross-validation's ensemble in ``cv.json``), evaluated first
    when there are none and the folder has a checkpoint."""
    files = RunFiles(Path(run_dir))
    info = describe_run(files.root)
    cfg = RunConfig.load(files.config) if files.config.is_file() else None
    test = {"accuracy": info["test_accuracy"], "balanced_accuracy": info["balanced_accuracy"], "auroc": info["auroc"]}
    if info["test_accuracy"] is None and (files.best.is_file() or files.ensemble.is_file()):
        test = evaluate_run(files.root, progress=progress)
    row: dict[str, Any] = {
        "run": files.root.name, "status": info["status"], "model": _describe(cfg, files),
        "parameters": _parameters(cfg, files),
        "test_accuracy": test["accuracy"], "balanced_accuracy": test["balanced_accuracy"], "auroc": test["auroc"],
        "loss": None, "accuracy": None, "val_loss": None, "val_accuracy": None, "train_seconds": None,
    }
    if files.ensemble.is_file():
        spec = json.loads(files.ensemble.read_text())
        # no training history: loss/accuracy from evaluating the train and valid splits (no augmentation),
        # when the members' checkpoints are there
        if files.manifest.is_file() and all(RunFiles(Path(p)).best.is_file() for p in spec["members"]):
            for split, prefix in (("train", ""), ("valid", "val_")):
                m = evaluate_run(files.root, split=split, progress=progress)
                row[f"{prefix}loss"], row[f"{prefix}accuracy"] = m["loss"], m["accuracy"]
        member_params = [_parameters(RunConfig.load(RunFiles(Path(p)).config), RunFiles(Path(p)))
                         if RunFiles(Path(p)).config.is_file() else None for p in spec["members"]]
        row["parameters"] = sum(member_params) if all(n is not None for n in member_params) else None
        member_seconds = [describe_run(Path(p))["wall_seconds"] if Path(p).is_dir() else None for p in spec["members"]]
        row["train_seconds"] = sum(member_seconds) if all(s is not None for s in member_seconds) else None
        return row
    summary = json.loads(files.summary.read_text()) if files.summary.is_file() else {}
    monitor = summary.get("monitor") or (cfg.train.monitor if cfg else "val_accuracy")
    best = _best_row(files, summary.get("best_epoch"), monitor)
    if best is not None:
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            row[k] = float(best[k]) if best.get(k) not in (None, "") else None
    row["train_seconds"] = summary.get("train_seconds", info["wall_seconds"])
    return row


def compare_runs(runs: Sequence[Path], out_dir: Path, progress: bool = True) -> list[dict[str, Any]]:
    """Compare runs (trained or ensemble; any run ``medclass runs`` lists: finished, interrupted or
    failed, with or without checkpoints) and write ``comparison.md``, ``comparison.csv`` and
    ``comparison.png`` (test accuracy, balanced accuracy and AUROC per run) to ``out_dir``.

    Train/validation loss and accuracy are the best epoch's (the checkpoint evaluated); an
    ensemble has none, so its are from evaluating the train and valid splits. Test figures come
    from ``<run>/eval-test/metrics.json`` (evaluated first where missing).

    Raises:
        RunError: a path is not a run folder (:func:`medclass.core.run_index.is_run_folder`).
    """
    for r in runs:
        if not is_run_folder(Path(r)):
            raise RunError(f"{r} is not a medclass run folder (no config.yaml, model_spec.json, train_summary.json "
                           "or ensemble.json); `medclass runs` lists the runs of a folder")
    rows = [_row(Path(r), progress) for r in runs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COMPARE_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    atomic_write(out / "comparison.csv", write_csv)

    def fmt(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        "| run | status | model | parameters | loss | accuracy | val_loss | val_accuracy | test accuracy | balanced accuracy | AUROC | training time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['status']} | {r['model']} | "
            f"{'n/a' if r['parameters'] is None else format(r['parameters'], ',')} | {fmt(r['loss'])} | "
            f"{fmt(r['accuracy'])} | {fmt(r['val_loss'])} | {fmt(r['val_accuracy'])} | {fmt(r['test_accuracy'])} | "
            f"{fmt(r['balanced_accuracy'])} | {fmt(r['auroc'])} | "
            f"{'n/a' if r['train_seconds'] is None else format(r['train_seconds'] / 60, '.1f') + ' min'} |"
        )
    atomic_write_text(out / "comparison.md", "\n".join(lines) + "\n")

    keys = ("test_accuracy", "balanced_accuracy", "auroc")
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
    for i, k in enumerate(keys):
        vals = [r[k] if r[k] is not None else 0.0 for r in rows]
        bars = ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=k.replace("_", " "))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [r["run"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test split")
    ax.legend(loc="lower right")
    ax.set_title("Runs compared")
    fig.tight_layout()
    atomic_write(out / "comparison.png", lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return rows
