"""Collect committed result runs (results/<id>/) into one Markdown table and results/table.json.

Each results/<id>/ holds what ``scripts/run_results.sh`` copied from a run: command.txt,
config.yaml, train_summary.json, metrics.csv and eval-test/metrics.json, plus hardware.json.
Usage: python scripts/collect_results.py  (prints the table for README.md)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1] / "results"


def row(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "train_summary.json").read_text())
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    hardware = json.loads((run / "hardware.json").read_text())
    model = cfg["model"]["arch"].replace("resnet", "ResNet-")
    model += f" ({'single logit' if cfg['model']['single_logit'] else 'softmax'}, {cfg['model']['stem']} stem)"
    return {
        "run": run.name,
        "data": metrics["data"].replace("../shared/data/", "").split("/")[0].replace("bundled breastmnist", "breastmnist (bundled)"),
        "model": model,
        "resolution_px": cfg["data"]["image_size"],
        "epochs": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "wall_seconds": round(summary["train_seconds"] + metrics["seconds"], 1),
        "hardware": hardware["summary"],
        "test_n": metrics["n"],
        "test_accuracy": round(metrics["accuracy"], 4),
        "balanced_accuracy": round(metrics["balanced_accuracy"], 4),
        "auroc": None if metrics["auroc"] is None else round(metrics["auroc"], 4),
        "command": (run / "command.txt").read_text().strip(),
    }


def main() -> None:
    runs = sorted(p for p in ROOT.iterdir() if (p / "eval-test" / "metrics.json").is_file() and (p / "train_summary.json").is_file())
    rows = [row(r) for r in runs]
    (ROOT / "table.json").write_text(json.dumps(rows, indent=1))
    out = sys.stdout
    out.write("| run | data | model | resolution | epochs (best) | wall time | hardware | test n | test accuracy | balanced accuracy | AUROC |\n")
    out.write("|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        out.write(
            f"| [{r['run']}](results/{r['run']}) | {r['data']} | {r['model']} | {r['resolution_px']} px | {r['epochs']} ({r['best_epoch']}) | "
            f"{r['wall_seconds'] / 60:.1f} min | {r['hardware']} | {r['test_n']} | {r['test_accuracy']:.3f} | "
            f"{r['balanced_accuracy']:.3f} | {r['auroc']:.3f} |\n"
        )


if __name__ == "__main__":
    main()
