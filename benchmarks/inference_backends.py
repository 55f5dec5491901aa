#!/usr/bin/env python
"""Inference with PyTorch eager against ONNX Runtime (CPU) for medclass' ResNet-50.

For each image size the model is exported once with :func:`medclass.serving.export_onnx` and
opened with :func:`medclass.serving.onnx_session`. For each batch size both backends get the
same input batch: after ``--warmup`` untimed calls each, ``--runs`` timed calls alternate
between the backends (PyTorch first on even runs, ONNX Runtime first on odd ones); the table
reports the median latency per batch and images/s = batch / median latency.

Both backends use the same number of intra-op threads (``--threads``, default PyTorch's) and the
ONNX Runtime session is opened with thread spinning off: with spinning on, its idle threads keep
the cores busy for a while after each run and slow the PyTorch call that follows (on 2 cores it
raised PyTorch's batch-1 latency by a third).

Correctness: the largest absolute difference between the backends' logits and between their
softmax probabilities over all measured batches. The script exits with status 1 (after writing
the table and the JSON) if the probability difference exceeds ``--tolerance`` (1e-4).

Weights: a freshly initialised ResNet-50 whose batch-norm running statistics are calibrated on
the benchmark inputs (the first max(16, largest batch) of them, training-mode passes), so that activations and logits have
realistic magnitudes instead of those of an untrained eval-mode network.

Inputs: with ``--images DIR`` real images (every image file under DIR, sorted, a deterministic
evenly spaced subset; read with Pillow, converted to RGB, resized to size x size bilinear,
scaled to [0, 1] and normalised with the ImageNet mean/std); otherwise standard-normal noise.

    python benchmarks/inference_backends.py --size 224 --batch-sizes 1 32 --images ../shared/data/chest-ct/test
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RunMonitor, log, markdown_table, median, run_metadata, set_threads, time_once, write_json,
)

from medclass.models import count_parameters, resnet50  # noqa: E402
from medclass.serving import export_onnx, onnx_session  # noqa: E402
from medclass.serving.export import INPUT_NAME, OUTPUT_NAME  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "inference_backends.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", "--sizes", dest="sizes", type=int, nargs="+", default=[224],
                   help="image size(s) in px; the model is exported once per size")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="images per call")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per backend per batch size")
    p.add_argument("--runs", type=int, default=20, help="timed calls per backend per batch size (median)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for both backends (None: PyTorch's default)")
    p.add_argument("--images", type=Path, default=None, help="folder of images (searched recursively)")
    p.add_argument("--num-classes", type=int, default=3, help="classifier outputs K")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest allowed |difference| of softmax probabilities")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset of the export")
    p.add_argument("--seed", type=int, default=0, help="weights and random inputs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    args = p.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.runs < 1 or args.warmup < 0 or args.num_classes < 2:
        p.error("batch sizes and --runs must be >= 1, --warmup >= 0, --num-classes >= 2")
    if min(args.sizes) < 32:
        p.error("every size must be >= 32 (the network divides by 32)")
    if args.images is not None and not args.images.is_dir():
        p.error(f"--images: no folder {args.images}")
    return args


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_images(files: list[Path], count: int, size: int) -> tuple[np.ndarray, list[str]]:
    """``count`` images (an evenly spaced subset of ``files``, repeated if there are fewer) as a
    normalised float32 array ``(count, 3, size, size)``, and the paths used."""
    from PIL import Image

    idx = np.linspace(0, len(files) - 1, num=min(count, len(files))).round().astype(int)
    chosen = [files[i] for i in idx]
    arrays = []
    for path in chosen:
        with Image.open(path) as im:
            arrays.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
    batch = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    batch = (batch - IMAGENET_MEAN) / IMAGENET_STD
    reps = -(-count // len(chosen))
    return np.ascontiguousarray(np.tile(batch, (reps, 1, 1, 1))[:count]), [str(p) for p in chosen]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, chunk: int = 16) -> None:
    """Set every batch norm's running statistics to the average over ``x`` (train-mode passes)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        if len(part) > 1:
            model(part)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def time_alternating(fns: dict[str, Callable[[], Any]], warmup: int, runs: int) -> dict[str, list[float]]:
    """Seconds per call for each function, calls alternating (order flipped every run)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        for name in (names if i % 2 == 0 else names[::-1]):
            seconds[name].append(time_once(fns[name]))
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    meta = run_metadata()
    monitor = RunMonitor()
    files = list_images(args.images) if args.images is not None else []
    if args.images is not None and not files:
        log(f"no image files under {args.images}")
        return 2
    max_batch = max(args.batch_sizes)
    n_inputs = max(max_batch, 16)  # at least 16 images for the batch-norm calibration
    results: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    inputs_info: dict[str, Any] = {"source": str(args.images) if files else "random normal (seeded)"}

    for size in args.sizes:
        log(f"size {size} px: inputs, batch-norm calibration, ONNX export")
        if files:
            x_np, used = load_images(files, n_inputs, size)
            inputs_info.setdefault("files", used)
        else:
            rng = np.random.default_rng(args.seed)
            x_np = rng.standard_normal((n_inputs, 3, size, size), dtype=np.float32)
        x_all = torch.from_numpy(x_np)
        torch.manual_seed(args.seed)
        model = resnet50(num_classes=args.num_classes, in_channels=3)
        calibrate_batchnorm(model, x_all)

        with tempfile.TemporaryDirectory(prefix="medclass-bench-") as tmp:
            start = time.perf_counter()
            onnx_path = export_onnx(model, Path(tmp) / "resnet50.onnx", image_size=size, channels=3,
                                    opset=args.opset)
            export_s = time.perf_counter() - start
            onnx_mb = onnx_path.stat().st_size / 2**20
            session = onnx_session(onnx_path, threads=threads, spinning=False)

            for batch in args.batch_sizes:
                xt = x_all[:batch].contiguous()
                xn = np.ascontiguousarray(x_np[:batch])
                with torch.inference_mode():
                    ref = model(xt).numpy()
                got = session.run([OUTPUT_NAME], {INPUT_NAME: xn})[0]
                logit_diff = float(np.abs(ref - got).max())
                prob_diff = float(np.abs(softmax64(ref) - softmax64(got)).max())
                checks.append({"size": size, "batch_size": batch, "max_abs_logit_diff": logit_diff,
                               "max_abs_prob_diff": prob_diff, "logit_abs_max": float(np.abs(ref).max()),
                               "logit_std": float(ref.std()), "passed": prob_diff <= args.tolerance})

                def torch_call(xt=xt):
                    with torch.inference_mode():
                        model(xt)

                fns = {"pytorch-eager": torch_call,
                       "onnxruntime-cpu": lambda xn=xn: session.run([OUTPUT_NAME], {INPUT_NAME: xn})}
                log(f"  batch {batch}: {args.warmup} warm-up + {args.runs} timed calls per backend")
                seconds = time_alternating(fns, args.warmup, args.runs)
                eager_median = median(seconds["pytorch-eager"])
                for backend, values in seconds.items():
                    med = median(values)
                    results.append({
                        "size": size, "batch_size": batch, "backend": backend,
                        "latency_ms_median": med * 1e3, "latency_ms_min": min(values) * 1e3,
                        "latency_ms_max": max(values) * 1e3, "images_per_s": batch / med,
                        "speedup_vs_eager": eager_median / med,
                        "max_abs_logit_diff": logit_diff, "max_abs_prob_diff": prob_diff,
                    })
            inputs_info.setdefault("onnx", {})[str(size)] = {"export_s": round(export_s, 2),
                                                             "file_mib": round(onnx_mb, 1)}
        del session, model

    passed = all(c["passed"] for c in checks)
    meta["hardware"]["threads_used"] = threads
    meta["machine_during_run"] = monitor.summary()
    record = {
        **meta,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"constructor": f"medclass.models.resnet50(num_classes={args.num_classes}, in_channels=3)",
                  "parameters": count_parameters(resnet50(num_classes=args.num_classes)),
                  "weights": "random init (seeded), batch-norm statistics calibrated on the inputs"},
        "inputs": inputs_info,
        "results": results,
        "checks": checks,
        "tolerance_prob": args.tolerance,
        "passed": passed,
        "notes": [
            "latency = wall time of one call on a whole batch; median over --runs calls that alternate "
            "between the backends; images_per_s = batch / median latency.",
            "ONNX Runtime: CPUExecutionProvider, default graph optimisations, intra-op threads = "
            "PyTorch's threads, spinning off (see the script's docstring).",
            "max_abs_prob_diff: softmax of each backend's float32 logits, computed in float64.",
        ],
    }
    rows = [(r["size"], r["batch_size"], r["backend"], r["latency_ms_median"], r["images_per_s"],
             f"{r['speedup_vs_eager']:.2f}", r["max_abs_logit_diff"], r["max_abs_prob_diff"]) for r in results]
    print(f"ResNet-50 inference, CPU ({meta['hardware']['cpu_model']}, {threads} threads, torch "
          f"{torch.__version__}, onnxruntime {meta['hardware'].get('onnxruntime')}), inputs: "
          f"{inputs_info['source']}, median of {args.runs} runs\n")
    print(markdown_table(["size (px)", "batch", "backend", "latency ms (median)", "img/s",
                          "speed-up vs eager", "max abs Δ logit", "max abs Δ prob"], rows))
    busy = meta["machine_during_run"]
    print(f"\nmachine during the run: process CPU time / wall time {busy['process_cpu_per_wall']} "
          f"({threads} threads), matmul canary {busy['matmul_gflops_start']} -> {busy['matmul_gflops_end']} "
          f"GFLOP/s, load average at the end {busy['load_average_end'][0]:.2f}")
    out = write_json(args.out, record)
    log(f"wrote {out}")
    if not passed:
        worst = max(c["max_abs_prob_diff"] for c in checks)
        log(f"FAILED: probabilities differ by up to {worst:.2e} > tolerance {args.tolerance:.0e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
