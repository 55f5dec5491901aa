#!/usr/bin/env python
"""INT8 against FP32 ONNX for a trained run: accuracy on the validation and test splits, images/s.

``python benchmarks/quantize_int8.py RUN [--tolerance 1] [--out JSON]``

It does what ``medclass export RUN --format onnx --quantize int8`` does (the FP32 export, then
:func:`medclass.serving.quantize.quantize_run`: static QDQ, U8S8, Percentile calibration on the
run's validation images) into a temporary folder, so the run folder is not touched, and records
both models' accuracy (``spec.decide``: the run's deployed decision rule) per split, and images/s
at batch 32 on the test split with ONNX Runtime's default threads, with the machine's load
(``machine_during_run``). The target of issue 14: INT8 at least 2x FP32's images/s with at most
1 point of test accuracy lost (chest-ct).

    python benchmarks/quantize_int8.py runs/serve/chest-ct --out benchmarks/results/quantize_int8_chest-ct.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RunMonitor, log, markdown_table, run_metadata, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a medclass run folder")
    p.add_argument("--tolerance", type=float, default=1.0, help="accuracy points INT8 may lose (recorded)")
    p.add_argument("--out", type=Path, default=RESULTS / "quantize_int8.json")
    a = p.parse_args(argv)

    from medclass.engine import load_run
    from medclass.serving.export import export_run
    from medclass.serving.quantize import quantize_run

    meta = run_metadata()
    monitor = RunMonitor()
    run = load_run(a.run)
    with tempfile.TemporaryDirectory(prefix="medclass-q-bench-") as tmp:
        log(f"exporting {a.run} to FP32 ONNX ...")
        fp32 = export_run(run, "onnx", out=Path(tmp) / "model.onnx").path
        log("quantizing (static QDQ, calibrated on the validation images) and measuring ...")
        r = quantize_run(run, fp32, out=Path(tmp) / "model.int8.onnx", tolerance_points=a.tolerance, force=True)
        sizes = {"fp32_mib": round(fp32.stat().st_size / 2**20, 1),
                 "int8_mib": round(r.path.stat().st_size / 2**20, 1)}
    speed = r.images_per_second
    record = {
        **meta,
        "settings": {"run": str(a.run), "tolerance_points": a.tolerance, "arch": run.spec.arch,
                     "image_size": run.spec.image_size, "classes": list(run.spec.class_names)},
        "results": {
            "accuracy": r.accuracy,
            "images_per_second": speed,
            "speedup": round(speed["int8"] / speed["fp32"], 2),
            "worst_loss_points": round(r.worst_loss_points(), 2),
            "within_tolerance": r.worst_loss_points() <= a.tolerance,
            "calibration_images": r.calibration_images,
            "file_sizes": sizes,
            "notes": r.notes,
        },
        "machine_during_run": monitor.summary(),
    }
    rows = [[split, v["n"], f"{v['fp32']:.4f}", f"{v['int8']:.4f}", f"{100 * (v['int8'] - v['fp32']):+.2f}"]
            for split, v in r.accuracy.items()]
    print(markdown_table(["split", "n", "FP32 accuracy", "INT8 accuracy", "points"], rows))
    print(f"\nimages/s (batch 32, {speed['split']}): FP32 {speed['fp32']:.0f}, INT8 {speed['int8']:.0f} "
          f"({record['results']['speedup']}x); files {sizes['fp32_mib']} -> {sizes['int8_mib']} MiB")
    log(f"written to {write_json(a.out, record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
