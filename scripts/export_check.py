#!/usr/bin/env python
"""Export a run to ONNX and TorchScript and record size, time and the difference from PyTorch (JSON).

    python scripts/export_check.py runs/chest-ct-64 results/serving/export.json

For each format, :func:`medclass.serving.export.export_run` writes ``RUN/export/model.*``, loads
it back and compares its probabilities with the PyTorch model's (``max_prob_diff``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import torch

from medclass.engine import load_run
from medclass.serving.export import export_run


def main(run_dir: str, out: str) -> None:
    run = load_run(Path(run_dir), device="cpu")
    rows = []
    for fmt in ("onnx", "torchscript"):
        r = export_run(run, fmt)
        rows.append({"format": fmt, "path": str(r.path), "megabytes": round(r.path.stat().st_size / 1e6, 1),
                     "seconds": round(r.seconds, 2), "max_prob_diff_vs_pytorch": r.max_prob_diff})
        print(rows[-1])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({
        "command": [sys.executable, *sys.argv], "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "run": run_dir, "image_size": run.cfg.data.image_size, "arch": run.cfg.model.arch, "exports": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
