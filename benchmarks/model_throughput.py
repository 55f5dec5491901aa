#!/usr/bin/env python
"""Training and inference throughput (images/s) of medclass' ResNet-50 against MONAI's, on CPU.

Both networks are built in this process with the same ImageNet ResNet-50 layout (7x7/2 conv,
3x3/2 max-pool, bottleneck stages [3, 4, 6, 3] with the stride in the 3x3 conv, projection
shortcuts without bias), get the *same* weights (MONAI's state dict is filled from medclass' in
order; the script checks that their eval-mode logits agree) and see the same random batches.

* training step: ``model.train()``, forward, cross-entropy, backward, AdamW step;
* inference: ``model.eval()`` and a forward under ``torch.inference_mode()``.

Measurements are taken in rounds; in each round every model runs ``--steps`` timed steps, and the
order of the models alternates between rounds, so a burst of load from elsewhere hits both. The
reported figure is the median images/s over the rounds; the ratio is medclass / MONAI.

Prints a Markdown table on stdout (progress on stderr) and writes JSON (``--out``).

    python benchmarks/model_throughput.py --sizes 64 224 --batch-size 16
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RunMonitor, log, markdown_table, median, run_metadata, set_threads, time_once, write_json,
)

from medclass.models import count_parameters, resnet50  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "model_throughput.json"
MONAI_KWARGS = dict(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2,
                    no_max_pool=False, shortcut_type="B", bias_downsample=False, feed_forward=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="image sizes (px)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model and mode before the rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=7, help="measurement rounds (median taken over them)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (None: torch's default)")
    p.add_argument("--num-classes", type=int, default=3, help="classifier outputs K")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="add a row for medclass with channels_last memory format (model and input); "
                        "on CPU it sped up 224 px inference by ~25%% in a first check")
    p.add_argument("--modes", nargs="+", choices=["inference", "train"], default=["inference", "train"],
                   help="what to measure")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="weights and inputs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "rounds", "num_classes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or min(args.sizes) < 32:
        p.error("--warmup must be >= 0 and every size >= 32 (the network divides by 32)")
    return args


def build_models(num_classes: int, seed: int) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """medclass ResNet-50 and MONAI ResNet-50 with identical layout and identical weights."""
    from monai.networks.nets import resnet50 as monai_resnet50

    torch.manual_seed(seed)
    ours = resnet50(num_classes=num_classes, in_channels=3)
    theirs = monai_resnet50(num_classes=num_classes, **MONAI_KWARGS)
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    shapes_match = len(sd_ours) == len(sd_theirs) and all(
        a.shape == b.shape for a, b in zip(sd_ours.values(), sd_theirs.values()))
    if shapes_match:
        theirs.load_state_dict(dict(zip(sd_theirs.keys(), sd_ours.values())))
    monai_default = count_parameters(monai_resnet50(spatial_dims=2, n_input_channels=3, num_classes=num_classes))
    info = {
        "medclass": {"constructor": f"medclass.models.resnet50(num_classes={num_classes}, in_channels=3)",
                     "parameters": count_parameters(ours)},
        "monai": {"constructor": "monai.networks.nets.resnet50(num_classes=%d, %s)" % (
                      num_classes, ", ".join(f"{k}={v!r}" for k, v in MONAI_KWARGS.items())),
                  "parameters": count_parameters(theirs),
                  "parameters_with_monai_defaults": monai_default},
        "same_weights": shapes_match,
    }
    return ours, theirs, info


class Runner:
    """One model under test: its inference and training step on fixed inputs."""

    def __init__(self, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
                 channels_last: bool = False) -> None:
        self.name = name
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
        self.y = y
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.loss_fn = nn.CrossEntropyLoss()

    def inference_step(self) -> None:
        with torch.inference_mode():
            self.model(self.x)

    def train_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()

    def step_fn(self, mode: str) -> Callable[[], None]:
        self.model.train(mode == "train")
        return self.train_step if mode == "train" else self.inference_step


def measure(runners: list[Runner], mode: str, batch: int, warmup: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Images/s per runner per round, with the runner order alternating between rounds."""
    for r in runners:
        fn = r.step_fn(mode)
        for _ in range(warmup):
            fn()
    per_round: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(rounds):
        order = runners if i % 2 == 0 else runners[::-1]
        for r in order:
            fn = r.step_fn(mode)
            seconds = time_once(lambda: [fn() for _ in range(steps)])
            per_round[r.name].append(batch * steps / seconds)
        log(f"  {mode} round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in per_round.items()))
    return per_round


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    meta = run_metadata()
    monitor = RunMonitor()
    ours, theirs, model_info = build_models(args.num_classes, args.seed)
    init_ours, init_theirs = copy.deepcopy(ours.state_dict()), copy.deepcopy(theirs.state_dict())
    notes = [
        "MONAI's resnet50 defaults are a 3D/video layout: conv1_t_stride=1 (no stride in the stem) "
        "and bias_downsample=True (a bias on each of the 4 projection-shortcut convs, +"
        f"{model_info['monai']['parameters_with_monai_defaults'] - model_info['medclass']['parameters']:,} "
        "parameters). They are set to conv1_t_stride=2, bias_downsample=False (7x7/2 conv, 3x3/2 max-pool, "
        "shortcut B) so both networks are the standard ImageNet ResNet-50 v1.5 with the same parameter count.",
        "MONAI's model gets medclass' initial weights (state dicts are in the same order and shapes), so both "
        "compute the same function; the models are reset to these weights before each size.",
        "img/s = batch * steps / wall time of the steps; figures are medians over rounds, the model order "
        "alternating between rounds. ratio = medclass / MONAI (> 1: medclass faster) = ratio of the medians; "
        "ratio_vs_monai_paired_median = median over rounds of the same round's ratio (robust to slow drifts).",
        "'medclass channels_last': the same network and weights with model and input in "
        "torch.channels_last memory format (oneDNN's preferred layout on CPU); its ratio is also vs MONAI "
        "(NCHW). Turn it off with --no-channels-last.",
        "machine_during_run: process CPU time / wall time well below the thread count, or a matmul canary "
        "that dropped between start and end, means other load shared the cores; repeat the run.",
    ]
    if model_info["medclass"]["parameters"] != model_info["monai"]["parameters"]:
        notes.append("WARNING: parameter counts differ; the installed MONAI builds another layout.")

    results: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, float]] = {}
    gen = torch.Generator().manual_seed(args.seed)
    for size in args.sizes:
        log(f"size {size} px, batch {args.batch_size}, {threads} threads")
        ours.load_state_dict(init_ours)
        theirs.load_state_dict(init_theirs)
        x = torch.randn(args.batch_size, 3, size, size, generator=gen)
        y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen)
        ours.eval(), theirs.eval()
        with torch.inference_mode():
            diff = (ours(x) - theirs(x)).abs().max().item()
        model_info.setdefault("max_abs_logit_diff_same_weights", {})[str(size)] = diff
        runners = [Runner("medclass", ours, x, y, args.lr), Runner("monai", theirs, x, y, args.lr)]
        if args.channels_last:
            cl_model = resnet50(num_classes=args.num_classes, in_channels=3)
            cl_model.load_state_dict(init_ours)
            runners.append(Runner("medclass channels_last", cl_model, x, y, args.lr, channels_last=True))
        for mode in args.modes:
            per_round = measure(runners, mode, args.batch_size, args.warmup, args.steps, args.rounds)
            monai_median = median(per_round["monai"])
            for name, values in per_round.items():
                med = median(values)
                results.append({
                    "size": size, "mode": mode, "model": name, "batch_size": args.batch_size,
                    "images_per_s_median": med, "images_per_s_rounds": values,
                    "ratio_vs_monai": med / monai_median,
                    "ratio_vs_monai_paired_median": median(a / b for a, b in zip(values, per_round["monai"])),
                })
            ratios.setdefault(str(size), {})[mode] = median(per_round["medclass"]) / monai_median
        del runners

    meta["hardware"]["threads_used"] = threads
    meta["machine_during_run"] = monitor.summary()
    record = {
        **meta,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": model_info,
        "results": results,
        "ratio_medclass_over_monai": ratios,
        "notes": notes,
    }
    params = {"medclass": model_info["medclass"]["parameters"], "monai": model_info["monai"]["parameters"]}
    rows = [(r["size"], r["mode"], r["model"], params.get(r["model"], params["medclass"]),
             r["images_per_s_median"], min(r["images_per_s_rounds"]), max(r["images_per_s_rounds"]),
             "" if r["model"] == "monai" else f"{r['ratio_vs_monai']:.3f}") for r in results]
    print(f"ResNet-50 throughput, CPU ({meta['hardware']['cpu_model']}, {threads} threads, torch "
          f"{torch.__version__}), batch {args.batch_size}, median of {args.rounds} rounds x {args.steps} steps\n")
    print(markdown_table(["size (px)", "mode", "model", "params", "img/s (median)", "min", "max",
                          "ratio vs MONAI"], rows))
    busy = meta["machine_during_run"]
    print(f"\nmachine during the run: process CPU time / wall time {busy['process_cpu_per_wall']} "
          f"({threads} threads), matmul canary {busy['matmul_gflops_start']} -> {busy['matmul_gflops_end']} "
          f"GFLOP/s, load average at the end {busy['load_average_end'][0]:.2f}")
    out = write_json(args.out, record)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
