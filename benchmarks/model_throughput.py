#!/usr/bin/env python
"""Training and inference throughput (images/s), FLOPs per image and fraction of the machine's
matmul rate of medclass' networks (and MONAI's ResNet-50), on CPU or on a CUDA GPU.

What is measured, for every model of ``--models`` and every size of ``--sizes``:

* training step: ``model.train()``, forward, cross-entropy, backward, AdamW step;
* inference: ``model.eval()`` and a forward under ``torch.inference_mode()``;
* images/s = batch * steps / wall time of the steps (on CUDA the device is synchronised before and
  after). After ``--warmup`` untimed steps per model, ``--rounds`` rounds: in each round every model
  runs ``--steps`` timed steps, and the order of the models alternates between rounds, so a burst
  of load from elsewhere hits all of them. The reported figure is the median over the rounds;
* FLOPs per image: one forward of a batch of 1 (eval mode, no grad) counted by
  ``torch.utils.flop_counter.FlopCounterMode(display=False).get_total_flops()``. FlopCounterMode
  counts matrix multiplications and convolutions (depthwise and grouped ones by their real
  weight shape) at 2 FLOPs per multiply-accumulate, and nothing else (batch norm, activations,
  pooling, adds and the optimiser are not counted). Training FLOPs per image = 3 x forward
  (forward + backward, the backward pass costing about twice the forward: the usual rule);
* achieved GFLOP/s = FLOPs per image * images/s / 1e9, and its fraction of the machine's matmul
  rate: on CPU ``_common.matmul_gflops()`` (a float32 1024 x 1024 matmul with the threads in use),
  on CUDA a 4096 x 4096 matmul on that device in ``--dtype``. The rate is measured at the start and
  at the end of the run; both are reported and the fraction uses their mean. It is a measured
  rate, not the hardware's peak: a fraction above 1 is possible (e.g. TF32 convolutions against a
  strict float32 matmul on CUDA, or convolution kernels faster than a 1024 matmul on CPU).

Models: any name of ``medclass.models.list_models()``, built with
``medclass.models.create_model(name, num_classes=K, in_channels=3)`` from random initial weights
(EfficientNet-Lite's ImageNet weights do not matter for speed), and ``monai_resnet50``:
``monai.networks.nets.resnet50`` built with the ImageNet ResNet-50 layout of medclass'
(7x7/2 conv, 3x3/2 max-pool, bottleneck stages [3, 4, 6, 3] with the stride in the 3x3 conv,
projection shortcuts without bias). When both ``resnet50`` and ``monai_resnet50`` are measured,
MONAI's state dict is filled from medclass' in order (the script checks that their eval-mode
logits agree), they see the same random batches, and the ratios medclass / MONAI are reported
(``--compare-monai``: only these two, the former default run, with a ``resnet50 channels_last``
row). ``--channels-last`` adds a ``<model> channels_last`` row for each medclass model: the same
network and weights with model and input in ``torch.channels_last`` memory format.

``--device cuda`` runs the same on the GPU; with ``--dtype bf16`` the steps (and the FLOP count)
run under ``torch.autocast('cuda', dtype=torch.bfloat16)`` and the matmul rate is measured in
bfloat16 on that GPU. ``--flops-only`` counts parameters and FLOPs without timing anything.

Prints a Markdown table on stdout (progress on stderr) and writes JSON (``--out``), whose
``layout`` is ``"model_throughput/2"``: one ``results`` entry per (model, size), with ``train``
and ``inference`` sub-records (the older files, without ``layout``, had one entry per
(size, mode, model) for the ResNet-50 pair only).

    python benchmarks/model_throughput.py                       # all default models and sizes, CPU
    python benchmarks/model_throughput.py --compare-monai --sizes 64 224 --batch-size 16
    python benchmarks/model_throughput.py --models efficientnet_lite0 resnet50 --sizes 128 224 --flops-only
    python benchmarks/model_throughput.py --device cuda --dtype bf16 --batch-size 64
    python benchmarks/model_throughput.py --sizes 64 --rounds 1 --steps 1 --warmup 0 --batch-size 2 --out /tmp/mt.json

The full default run (4 models, 5 sizes, batch 16, 7 rounds x 3 steps) takes well over 20 minutes
on 2 CPU cores; the 224 px ResNet-50 training steps dominate.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RunMonitor, log, markdown_table, matmul_gflops, median, run_metadata, set_threads, write_json,
)

from medclass.models import count_parameters, create_model, list_models  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "model_throughput.json"
LAYOUT = "model_throughput/2"
DEFAULT_MODELS = ["efficientnet_lite0", "resnet18", "resnet50", "monai_resnet50"]
DEFAULT_SIZES = [64, 96, 128, 160, 224]
COMPARE_MONAI_MODELS = ["resnet50", "monai_resnet50"]
COMPARE_MONAI_SIZES = [64, 224]
MONAI_NAME = "monai_resnet50"
MONAI_PARTNER = "resnet50"  # the medclass model whose weights MONAI's ResNet-50 gets
MONAI_KWARGS = dict(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2,
                    no_max_pool=False, shortcut_type="B", bias_downsample=False, feed_forward=True)
CL_SUFFIX = " channels_last"
TRAIN_FLOPS_FACTOR = 3  # forward + backward ~ 3 x forward
CUDA_CANARY_N, CUDA_CANARY_REPEATS = 4096, 20
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=None,
                   help=f"models to measure: names of medclass.models.list_models() and {MONAI_NAME!r} "
                        f"(default {' '.join(DEFAULT_MODELS)}; with --compare-monai "
                        f"{' '.join(COMPARE_MONAI_MODELS)})")
    p.add_argument("--compare-monai", action="store_true",
                   help=f"the medclass vs MONAI ResNet-50 comparison only: --models "
                        f"{' '.join(COMPARE_MONAI_MODELS)}, --sizes {' '.join(map(str, COMPARE_MONAI_SIZES))} "
                        "and --channels-last unless given")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help=f"image sizes (px) (default {' '.join(map(str, DEFAULT_SIZES))}; with --compare-monai "
                        f"{' '.join(map(str, COMPARE_MONAI_SIZES))})")
    p.add_argument("--batch-size", type=int, default=16, help="images per step")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model and mode before the rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=7, help="measurement rounds (median taken over them)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (None: torch's default)")
    p.add_argument("--num-classes", type=int, default=3, help="classifier outputs K")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the models run")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="fp32, or bf16 (CUDA only): steps under torch.autocast('cuda', dtype=torch.bfloat16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="add a '<model> channels_last' row for each medclass model (model and input in "
                        "torch.channels_last memory format); default off, on with --compare-monai")
    p.add_argument("--modes", nargs="+", choices=["inference", "train"], default=["inference", "train"],
                   help="what to measure")
    p.add_argument("--flops-only", action="store_true", help="count parameters and FLOPs only, time nothing")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="weights and inputs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    args = p.parse_args(argv)
    if args.models is None:
        args.models = list(COMPARE_MONAI_MODELS if args.compare_monai else DEFAULT_MODELS)
    if args.sizes is None:
        args.sizes = list(COMPARE_MONAI_SIZES if args.compare_monai else DEFAULT_SIZES)
    if args.channels_last is None:
        args.channels_last = bool(args.compare_monai)
    if args.compare_monai and not set(COMPARE_MONAI_MODELS) <= set(args.models):
        p.error(f"--compare-monai needs {' and '.join(COMPARE_MONAI_MODELS)} in --models")
    for name in ("batch_size", "steps", "rounds", "num_classes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or min(args.sizes) < 32:
        p.error("--warmup must be >= 0 and every size >= 32 (the networks divide by 32)")
    known = list(list_models()) + [MONAI_NAME]
    unknown = [m for m in args.models if m not in known]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if len(set(args.models)) != len(args.models):
        p.error("--models lists a model twice")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            p.error(f"--device cuda: torch.cuda.is_available() is False (torch {torch.__version__}, "
                    f"built for CUDA {torch.version.cuda}); run on a machine with a CUDA GPU or use --device cpu")
        if args.dtype == "bf16" and not torch.cuda.is_bf16_supported():
            p.error(f"--dtype bf16: {torch.cuda.get_device_name()} does not support bfloat16")
    elif args.dtype != "fp32":
        p.error("--dtype bf16 is for --device cuda (on CPU the benchmark runs float32)")
    return args


# --- models -----------------------------------------------------------------------------------

def build_models(names: list[str], num_classes: int, seed: int) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Every model of ``names`` from seed ``seed``; MONAI's ResNet-50 gets medclass' ResNet-50
    weights when both are built. Returns the models (float32, CPU) and their description."""
    models: dict[str, nn.Module] = {}
    info: dict[str, Any] = {}
    for name in names:
        torch.manual_seed(seed)
        if name == MONAI_NAME:
            continue
        models[name] = create_model(name, num_classes=num_classes, in_channels=3)
        info[name] = {"source": "medclass",
                      "constructor": f"medclass.models.create_model({name!r}, num_classes={num_classes}, in_channels=3)",
                      "parameters": count_parameters(models[name])}
    if MONAI_NAME in names:
        try:
            from monai.networks.nets import resnet50 as monai_resnet50
        except ImportError as e:
            raise SystemExit(f"{MONAI_NAME} needs MONAI (pip install monai): {e}")
        torch.manual_seed(seed)
        theirs = monai_resnet50(num_classes=num_classes, **MONAI_KWARGS)
        same_weights = False
        if MONAI_PARTNER in models:
            sd_ours, sd_theirs = models[MONAI_PARTNER].state_dict(), theirs.state_dict()
            same_weights = len(sd_ours) == len(sd_theirs) and all(
                a.shape == b.shape for a, b in zip(sd_ours.values(), sd_theirs.values()))
            if same_weights:
                theirs.load_state_dict(dict(zip(sd_theirs.keys(), sd_ours.values())))
        monai_default = count_parameters(monai_resnet50(spatial_dims=2, n_input_channels=3, num_classes=num_classes))
        info[MONAI_NAME] = {
            "source": "monai",
            "constructor": "monai.networks.nets.resnet50(num_classes=%d, %s)" % (
                num_classes, ", ".join(f"{k}={v!r}" for k, v in MONAI_KWARGS.items())),
            "parameters": count_parameters(theirs),
            "parameters_with_monai_defaults": monai_default,
            f"same_weights_as_{MONAI_PARTNER}": same_weights,
        }
        models[MONAI_NAME] = theirs
    return {name: models[name] for name in names}, info


def autocast_context(device: torch.device, dtype: torch.dtype) -> Callable[[], contextlib.AbstractContextManager]:
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def forward_flops(model: nn.Module, size: int, device: torch.device,
                  autocast: Callable[[], contextlib.AbstractContextManager]) -> int:
    """FLOPs of one forward of one ``3 x size x size`` image (eval mode), by FlopCounterMode."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), autocast(), counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


# --- timing -----------------------------------------------------------------------------------

def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn: Callable[[], None], steps: int, sync: Callable[[], None]) -> float:
    """Wall-clock seconds of ``steps`` calls of ``fn``, the device synchronised before and after."""
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return time.perf_counter() - start


def matmul_canary(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The machine's matmul rate in GFLOP/s: ``_common.matmul_gflops()`` on CPU (float32, 1024),
    a ``CUDA_CANARY_N`` square matmul in ``dtype`` on a CUDA device."""
    if device.type == "cpu":
        return {"gflops": matmul_gflops(), "how": "_common.matmul_gflops(): float32 1024 x 1024 matmul, 5 repeats, "
                                                  f"{torch.get_num_threads()} threads"}
    n, repeats = CUDA_CANARY_N, CUDA_CANARY_REPEATS
    sync = synchronizer(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ a
    seconds = timed(lambda: a @ a, repeats, sync)
    del a
    return {"gflops": 2 * n**3 * repeats / seconds / 1e9,
            "how": f"{n} x {n} {str(dtype).removeprefix('torch.')} matmul on {device} "
                   f"({torch.cuda.get_device_name(device)}), {repeats} repeats, synchronised"}


class Runner:
    """One model under test: its inference and training step on fixed inputs."""

    def __init__(self, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
                 autocast: Callable[[], contextlib.AbstractContextManager], channels_last: bool = False) -> None:
        self.name = name
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
        self.y = y
        self.autocast = autocast
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.loss_fn = nn.CrossEntropyLoss()

    def inference_step(self) -> None:
        with torch.inference_mode(), self.autocast():
            self.model(self.x)

    def train_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()

    def step_fn(self, mode: str) -> Callable[[], None]:
        self.model.train(mode == "train")
        return self.train_step if mode == "train" else self.inference_step


def measure(runners: list[Runner], mode: str, batch: int, warmup: int, steps: int, rounds: int,
            sync: Callable[[], None]) -> dict[str, list[float]]:
    """Images/s per runner per round, with the runner order alternating between rounds."""
    for r in runners:
        fn = r.step_fn(mode)
        for _ in range(warmup):
            fn()
    sync()
    per_round: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(rounds):
        order = runners if i % 2 == 0 else runners[::-1]
        for r in order:
            per_round[r.name].append(batch * steps / timed(r.step_fn(mode), steps, sync))
        log(f"  {mode} round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in per_round.items()))
    return per_round


# --- main -------------------------------------------------------------------------------------

def _fraction(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.3f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    autocast = autocast_context(device, dtype)
    sync = synchronizer(device)
    meta = run_metadata()
    monitor = RunMonitor()
    canary_start = matmul_canary(device, dtype)
    log(f"matmul canary at the start: {canary_start['gflops']:.1f} GFLOP/s ({canary_start['how']})")

    models, model_info = build_models(args.models, args.num_classes, args.seed)
    for m in models.values():
        m.to(device)
    init = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
    monai_pair = MONAI_NAME in models and model_info[MONAI_NAME][f"same_weights_as_{MONAI_PARTNER}"]
    cl_models = [n for n in args.models if args.channels_last and model_info[n]["source"] == "medclass"]
    timed_modes = [] if args.flops_only else list(args.modes)

    notes = [
        "img/s = batch * steps / wall time of the steps (CUDA: synchronised); figures are medians over rounds, "
        "the model order alternating between rounds.",
        "forward_flops_per_image: torch.utils.flop_counter.FlopCounterMode on one eval-mode forward of a batch of 1 "
        "(matmul and convolution FLOPs = 2 x multiply-accumulates; batch norm, activations, pooling not counted). "
        f"train_flops_per_image = {TRAIN_FLOPS_FACTOR} x forward (forward + backward); the optimiser step is not counted.",
        "achieved_gflops = flops_per_image * images_per_s_median / 1e9; fraction_of_matmul = achieved_gflops / "
        "matmul_canary.gflops_mean (a measured matmul rate, not the hardware peak: above 1 is possible).",
        "machine_during_run: process CPU time / wall time well below the thread count, or a matmul canary "
        "that dropped between start and end, means other load shared the cores; repeat the run.",
    ]
    if MONAI_NAME in models:
        extra = model_info[MONAI_NAME]["parameters_with_monai_defaults"] - model_info[MONAI_NAME]["parameters"]
        notes.append(
            "MONAI's resnet50 defaults are a 3D/video layout: conv1_t_stride=1 (no stride in the stem) "
            f"and bias_downsample=True (a bias on each of the 4 projection-shortcut convs, +{extra:,} parameters). "
            "They are set to conv1_t_stride=2, bias_downsample=False (7x7/2 conv, 3x3/2 max-pool, shortcut B): the "
            "standard ImageNet ResNet-50 v1.5.")
    if monai_pair:
        notes.append(
            f"{MONAI_NAME} gets {MONAI_PARTNER}'s initial weights (state dicts in the same order and shapes), so both "
            "compute the same function; all models are reset to their initial weights before each size. "
            f"monai_comparison: ratio = {MONAI_PARTNER} / {MONAI_NAME} of the medians (> 1: medclass faster); "
            "paired_median = median over rounds of the same round's ratio (robust to slow drifts).")
        if model_info[MONAI_PARTNER]["parameters"] != model_info[MONAI_NAME]["parameters"]:
            notes.append("WARNING: parameter counts differ; the installed MONAI builds another layout.")
    elif MONAI_NAME in models:
        notes.append(f"{MONAI_NAME} has its own random initial weights ({MONAI_PARTNER} not measured alongside, "
                     "or its state dict does not match).")
    if cl_models:
        notes.append("'<model> channels_last': the same network and weights with model and input in "
                     "torch.channels_last memory format; its monai ratio is against MONAI in NCHW.")

    results: list[dict[str, Any]] = []
    comparison: dict[str, dict[str, Any]] = {}
    gen = torch.Generator().manual_seed(args.seed)
    for size in args.sizes:
        log(f"size {size} px, batch {args.batch_size}, {args.device} {args.dtype}, {threads} threads")
        for name, m in models.items():
            m.load_state_dict(init[name])
        x = torch.randn(args.batch_size, 3, size, size, generator=gen).to(device)
        y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(device)
        flops = {name: forward_flops(m, size, device, autocast) for name, m in models.items()}
        if monai_pair:
            ours, theirs = models[MONAI_PARTNER].eval(), models[MONAI_NAME].eval()
            with torch.inference_mode():
                diff = (ours(x) - theirs(x)).abs().max().item()
            comparison.setdefault(str(size), {})["max_abs_logit_diff_same_weights_fp32"] = diff
        per_mode: dict[str, dict[str, list[float]]] = {}
        if timed_modes:
            runners = [Runner(name, m, x, y, args.lr, autocast) for name, m in models.items()]
            for name in cl_models:
                cl_model = create_model(name, num_classes=args.num_classes, in_channels=3).to(device)
                cl_model.load_state_dict(init[name])
                runners.append(Runner(name + CL_SUFFIX, cl_model, x, y, args.lr, autocast, channels_last=True))
            for mode in timed_modes:
                per_mode[mode] = measure(runners, mode, args.batch_size, args.warmup, args.steps, args.rounds, sync)
            del runners
        for name in list(models) + [n + CL_SUFFIX for n in cl_models]:
            base = name.removesuffix(CL_SUFFIX)
            fwd = flops[base]
            entry: dict[str, Any] = {
                "model": name, "base_model": base, "source": model_info[base]["source"],
                "channels_last": name != base, "size": size, "batch_size": args.batch_size,
                "device": args.device, "dtype": args.dtype, "parameters": model_info[base]["parameters"],
                "forward_flops_per_image": fwd, "train_flops_per_image": TRAIN_FLOPS_FACTOR * fwd,
            }
            for mode, per_round in per_mode.items():
                values = per_round[name]
                flops_per_image = fwd * (TRAIN_FLOPS_FACTOR if mode == "train" else 1)
                rec = {"images_per_s_median": median(values), "images_per_s_rounds": values,
                       "flops_per_image": flops_per_image,
                       "achieved_gflops": flops_per_image * median(values) / 1e9}
                if monai_pair and name != MONAI_NAME:
                    ref = per_round[MONAI_NAME]
                    rec["ratio_vs_monai"] = median(values) / median(ref)
                    rec["ratio_vs_monai_paired_median"] = median(a / b for a, b in zip(values, ref))
                entry[mode] = rec
            results.append(entry)
        if monai_pair:
            for mode, per_round in per_mode.items():
                ours_v, theirs_v = per_round[MONAI_PARTNER], per_round[MONAI_NAME]
                comparison[str(size)][mode] = {
                    "ratio": median(ours_v) / median(theirs_v),
                    "paired_median": median(a / b for a, b in zip(ours_v, theirs_v))}

    canary_end = matmul_canary(device, dtype)
    log(f"matmul canary at the end: {canary_end['gflops']:.1f} GFLOP/s")
    peak = (canary_start["gflops"] + canary_end["gflops"]) / 2
    for entry in results:
        for mode in timed_modes:
            entry[mode]["fraction_of_matmul"] = entry[mode]["achieved_gflops"] / peak

    meta["hardware"]["threads_used"] = threads
    if device.type == "cuda":
        meta["hardware"]["cuda_device"] = torch.cuda.get_device_name(device)
        meta["hardware"]["cuda_version"] = torch.version.cuda
        meta["hardware"]["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        meta["hardware"]["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        meta["hardware"]["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    meta["machine_during_run"] = monitor.summary()
    record = {
        "layout": LAYOUT,
        "layout_description": "results: one entry per (model, size) with parameters, forward_flops_per_image, "
                              "train_flops_per_image and, per timed mode, a 'train' / 'inference' record "
                              "(images_per_s_median, images_per_s_rounds, flops_per_image, achieved_gflops, "
                              "fraction_of_matmul; ratio_vs_monai* when the ResNet-50 pair is measured); "
                              "matmul_canary: start, end, mean GFLOP/s; monai_comparison: per size.",
        **meta,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "matmul_canary": {"device": args.device, "dtype": args.dtype, "how": canary_start["how"],
                          "gflops_start": canary_start["gflops"], "gflops_end": canary_end["gflops"],
                          "gflops_mean": peak},
        "flop_rule": {"counter": "torch.utils.flop_counter.FlopCounterMode(display=False).get_total_flops()",
                      "forward": "one eval-mode forward, batch 1, no grad; matmul/conv FLOPs = 2 x MACs",
                      "train_factor": TRAIN_FLOPS_FACTOR},
        "models": model_info,
        "results": results,
        "monai_comparison": comparison,
        "notes": notes,
    }

    if device.type == "cuda":
        where = f"CUDA ({torch.cuda.get_device_name(device)}), {args.dtype}"
    else:
        where = f"CPU ({meta['hardware']['cpu_model']}, {threads} threads)"
    how = ("FLOPs only, nothing timed" if not timed_modes else
           f"batch {args.batch_size}, median of {args.rounds} rounds x {args.steps} steps")
    print(f"Model throughput, {where}, torch {torch.__version__}, {how}; matmul canary "
          f"{canary_start['gflops']:.1f} -> {canary_end['gflops']:.1f} GFLOP/s (mean {peak:.1f})\n")
    rows = []
    for e in results:
        tr, inf = e.get("train"), e.get("inference")
        rows.append((e["model"], e["size"], e["parameters"], f"{e['forward_flops_per_image'] / 1e9:.3f}",
                     "" if tr is None else tr["images_per_s_median"],
                     "" if inf is None else inf["images_per_s_median"],
                     _fraction(tr and tr["fraction_of_matmul"]), _fraction(inf and inf["fraction_of_matmul"])))
    print(markdown_table(["model", "size (px)", "params", "GFLOPs/img (forward)", "train img/s", "infer img/s",
                          "train fraction of matmul peak", "infer fraction"], rows))
    print(f"\nTraining FLOPs per image = {TRAIN_FLOPS_FACTOR} x forward; fraction = FLOPs/img x img/s / "
          f"matmul canary mean ({record['matmul_canary']['how']}).")
    if monai_pair and timed_modes:
        print(f"\n{MONAI_PARTNER} (medclass) / {MONAI_NAME} images/s, same weights "
              "(ratio of medians; median of per-round ratios):\n")
        print(markdown_table(["size (px)", "mode", "ratio", "paired median", "max |logit diff|"],
                             [(int(s), mode, c[mode]["ratio"], c[mode]["paired_median"],
                               c["max_abs_logit_diff_same_weights_fp32"])
                              for s, c in comparison.items() for mode in timed_modes]))
    busy = meta["machine_during_run"]
    print(f"\nmachine during the run: process CPU time / wall time {busy['process_cpu_per_wall']} "
          f"({threads} threads), CPU matmul canary {busy['matmul_gflops_start']} -> {busy['matmul_gflops_end']} "
          f"GFLOP/s, load average at the end {busy['load_average_end'][0]:.2f}")
    out = write_json(args.out, record)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
