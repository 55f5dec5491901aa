"""Comparing runs side by side: one Markdown and CSV table and a bar chart."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..engine import load_run  # noqa: E402
from ..models import count_parameters  # noqa: E402
from .evaluate import evaluate_run  # noqa: E402

__all__ = ["compare_runs", "COMPARE_COLUMNS"]

COMPARE_COLUMNS = (
    "run", "model", "parameters", "loss", "accuracy", "val_loss", "val_accuracy",
    "test_accuracy", "balanced_accuracy", "auroc", "train_seconds",
)


def _describe(run) -> str:
    m = run.cfg.model
    if run.files.ensemble.is_file():
        spec = json.loads(run.files.ensemble.read_text())
        parts = ", ".join(f"{Path(p).name} x{w:.2f}" for p, w in zip(spec["members"], spec["weights"]))
        return f"soft-voting ensemble ({parts})"
    if m.arch == "custom_cnn":
        return f"custom CNN {m.cnn_widths}"
    if m.arch == "chained":
        return f"chained: ResNet-50 to layer{m.chain_stage} -> CNN {m.cnn_widths}" + (" (ResNet frozen)" if m.chain_freeze_resnet else "")
    start = f", from {Path(m.pretrained).name}" if m.pretrained else ", from scratch"
    return m.arch.replace("resnet", "ResNet-") + start


def _row(run_dir: Path, progress: bool) -> dict[str, Any]:
    run = load_run(run_dir)
    test_json = run.files.root / "eval-test" / "metrics.json"
    test = json.loads(test_json.read_text()) if test_json.is_file() else evaluate_run(run_dir, progress=progress)
    row: dict[str, Any] = {
        "run": run.files.root.name, "model": _describe(run), "parameters": count_parameters(run.model),
        "test_accuracy": test["accuracy"], "balanced_accuracy": test["balanced_accuracy"], "auroc": test["auroc"],
    }
    if run.files.ensemble.is_file():
        # no training history: loss/accuracy from evaluating the train and valid splits (no augmentation)
        for split, prefix in (("train", ""), ("valid", "val_")):
            m = evaluate_run(run_dir, split=split, progress=progress)
            row[f"{prefix}loss"], row[f"{prefix}accuracy"] = m["loss"], m["accuracy"]
        spec = json.loads(run.files.ensemble.read_text())
        row["train_seconds"] = sum(
            json.loads((Path(p) / "train_summary.json").read_text())["train_seconds"] for p in spec["members"]
        )
    else:
        summary = json.loads(run.files.summary.read_text())
        with open(run.files.metrics_csv) as f:
            best = next(r for r in csv.DictReader(f) if int(r["epoch"]) == summary["best_epoch"])
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            row[k] = float(best[k])
        row["train_seconds"] = summary["train_seconds"]
    return row


def compare_runs(runs: Sequence[Path], out_dir: Path, progress: bool = True) -> list[dict[str, Any]]:
    """Compare runs (trained or ensemble) and write ``comparison.md``, ``comparison.csv`` and
    ``comparison.png`` (test accuracy, balanced accuracy and AUROC per run) to ``out_dir``.

    Train/validation loss and accuracy are the best epoch's (the checkpoint evaluated); an
    ensemble has none, so its are from evaluating the train and valid splits. Test figures come
    from ``<run>/eval-test/metrics.json`` (evaluated first where missing).

    Raises:
        RunError, CheckpointError: a path is not a run.
    """
    rows = [_row(Path(r), progress) for r in runs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COMPARE_COLUMNS)
        w.writeheader()
        w.writerows(rows)

    def fmt(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        "| run | model | parameters | loss | accuracy | val_loss | val_accuracy | test accuracy | balanced accuracy | AUROC | training time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['model']} | {r['parameters']:,} | {fmt(r['loss'])} | {fmt(r['accuracy'])} | "
            f"{fmt(r['val_loss'])} | {fmt(r['val_accuracy'])} | {fmt(r['test_accuracy'])} | "
            f"{fmt(r['balanced_accuracy'])} | {fmt(r['auroc'])} | {r['train_seconds'] / 60:.1f} min |"
        )
    (out / "comparison.md").write_text("\n".join(lines) + "\n")

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
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)
    return rows
