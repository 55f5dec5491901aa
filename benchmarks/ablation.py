"""Ablation of the training recipe at a fixed time budget, scored on the VALIDATION split only.

``python benchmarks/ablation.py DATA --budget MIN [--configs a,b,c] [--image-size N] [--out JSON]``
trains one ``medclass train DATA --time-budget MIN`` run per named configuration (one after the
other, never at once), each on the same split (the first run's ``manifest.csv``), then scores each
best checkpoint on the validation split with ``medclass evaluate --split valid`` and writes a JSON
and a Markdown table: validation accuracy, balanced accuracy and AUROC (with bootstrap 95 % CIs),
epochs run and seconds, plus the machine's load during each run (``_common.RunMonitor``).
The test split is never read here: the default recipe is chosen from these figures, and test
figures are made once, afterwards, by ``recipe_vs_monai.py``.

Configurations are cumulative steps from today's default (``CONFIGS``); each is a list of
``--set`` overrides, so anything the config accepts can be ablated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import RunMonitor, hardware_info, log, markdown_table, write_json

#: name -> ``--set`` overrides. ``today`` is medclass's default before issue 12 (ResNet-50,
#: ImageNet stem); the others change one thing at a time from the row they name in ``BASE``.
CONFIGS: dict[str, list[str]] = {
    "today": [],  # ResNet-50, ImageNet stem (the default before issue 12)
    "r50-small": ["model.stem=small"],
    "r18-small": ["model.arch=resnet18", "model.stem=small"],
    "r18-imagenet": ["model.arch=resnet18", "model.stem=imagenet"],
    "r18-small+ema": ["model.arch=resnet18", "model.stem=small", "train.ema=true"],
    "r18-small+ema+ls": ["model.arch=resnet18", "model.stem=small", "train.ema=true", "train.label_smoothing=0.1"],
    "r18-small+ema+mix": ["model.arch=resnet18", "model.stem=small", "train.ema=true", "train.mixup_alpha=0.2",
                          "train.cutmix_alpha=1.0", "train.mix_prob=0.5"],
    "r18-small+ema+ta": ["model.arch=resnet18", "model.stem=small", "train.ema=true",
                         "data.auto_augment=trivialaugment"],
    "r18-small+ema+prog": ["model.arch=resnet18", "model.stem=small", "train.ema=true",
                           "train.progressive_resize=0.5"],
    "r18-imagenet+ema": ["model.arch=resnet18", "train.ema=true"],
    "r18-imagenet+ema+ta": ["model.arch=resnet18", "train.ema=true", "data.auto_augment=trivialaugment"],
    "r18-imagenet+ema+mix": ["model.arch=resnet18", "train.ema=true", "train.mixup_alpha=0.2", "train.cutmix_alpha=1.0",
                             "train.mix_prob=0.5"],
    "r18-imagenet+ema+ls": ["model.arch=resnet18", "train.ema=true", "train.label_smoothing=0.1"],
    "r18-small+ema+dp": ["model.arch=resnet18", "model.stem=small", "train.ema=true", "model.drop_path_rate=0.05"],
    # resolution and stem at today's default (ResNet-18): a data.image_size here replaces --image-size
    "default": [],
    "px96": ["data.image_size=96"],
    "px128": ["data.image_size=128"],
    "px160": ["data.image_size=160"],
    "px224": ["data.image_size=224"],
    "small": ["model.stem=small"],
    "small-px32": ["model.stem=small", "data.image_size=32"],
    "px64": ["data.image_size=64"],
    "balanced-loss": ["data.class_balance=loss"],
    "balanced-sampler": ["data.class_balance=sampler"],
    "small-balanced-loss": ["model.stem=small", "data.class_balance=loss"],
    "px128+balanced-loss": ["data.image_size=128", "data.class_balance=loss"],
    # intensity robustness: brightness/contrast jitter at timm's ImageNet default strength (0.4) against 0.1
    "jitter04": ["data.brightness=0.4", "data.contrast=0.4"],
    "pad": ["data.resize=pad"],
    # stronger scale augmentation: random resized crops down to 35 % of the area (fastbook's
    # RandomResizedCrop(min_scale=0.35)) against the default 80 %
    "crop035": ["data.crop_scale=[0.35,1.0]"],
    # each image standardised by its own mean/std (MONAI NormalizeIntensity; chest-ct's darker test split)
    "per-image": ["data.intensity=per_image"],
    # one recipe technique at a time on top of today's default (ResNet-18, ImageNet stem)
    "ema": ["train.ema=true"],
    "mix": ["train.mixup_alpha=0.2", "train.cutmix_alpha=1.0"],
    "ta": ["data.auto_augment=trivialaugment"],
    "erasing": ["data.random_erasing=0.25"],
    "ls": ["train.label_smoothing=0.1"],
    "dp": ["model.drop_path_rate=0.05"],
    # issue 23: fine-tuning the ImageNet EfficientNet-Lite0 (model.arch auto), size chosen for the budget
    "ft": ["data.image_size=auto"],
    "ft-r18": ["model.arch=resnet18", "data.image_size=auto"],  # the from-scratch default before issue 23
    "ft-bnfrozen": ["data.image_size=auto", "model.bn_stats=frozen"],
    "ft-lr1e-3": ["data.image_size=auto", "train.lr=0.00099"],  # ~1e-3 (1e-3 itself reads as unset under auto)
    "ft-ema": ["data.image_size=auto", "train.ema=true"],
    "ft-mix": ["data.image_size=auto", "train.mixup_alpha=0.2", "train.cutmix_alpha=1.0", "train.mix_prob=0.5"],
    "ft-two-phase": ["data.image_size=auto", "model.finetune=two_phase", "model.head_epochs=2"],
    "ft-blr01": ["data.image_size=auto", "model.backbone_lr_mult=0.1"],
    "ft-px128": ["data.image_size=128"],
    "ft-px224": ["data.image_size=224"],
    "ft-probe": ["model.finetune=linear_probe", "data.image_size=224"],
    "ft-grey-sum": ["data.image_size=auto", "data.channels=1"],  # greyscale stem summed over RGB (vs replicated)
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="folder, CSV or MedMNIST .npz, as for `medclass train`")
    p.add_argument("--budget", type=float, required=True, help="minutes per run (training + validation)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated names from {list(CONFIGS)}")
    p.add_argument("--image-size", type=int, default=None, help="pixels (default: 28 for a .npz, else 64)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="default 1 for a .npz, else 3")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra override for every run")
    p.add_argument("--runs-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def _name(data: str) -> str:
    p = Path(data.rstrip("/"))
    return p.parent.name if p.suffix.lower() in (".csv", ".npz") else p.name


def run_one(args, name: str, overrides: list[str], runs_dir: Path, manifest: Path | None) -> dict[str, Any]:
    """Train one configuration under the budget, then evaluate its best checkpoint on valid."""
    npz = args.data.lower().endswith(".npz")
    size = args.image_size or (28 if npz else 64)
    for o in overrides:  # a configuration's own size (pixels or auto) replaces --image-size
        if o.startswith("data.image_size="):
            value = o.split("=", 1)[1]
            size = value if value == "auto" else int(value)
    overrides = [o for o in overrides if not o.startswith("data.image_size=")]
    channels = args.channels or (1 if npz else 3)
    cmd = [sys.executable, "-m", "medclass", "train", args.data, "--time-budget", f"{args.budget * 60:.0f}s",
           "--image-size", str(size), "--name", name, "--runs-dir", str(runs_dir), "--no-eval",
           "--set", f"data.channels={channels}"]
    if manifest is not None:
        cmd += ["--set", f"data.manifest={manifest}"]
    for s in [*args.sets, *overrides]:
        cmd += ["--set", s]
    log(f"[{name}] {' '.join(cmd[2:])}")
    monitor = RunMonitor()
    t0 = time.perf_counter()
    with open(runs_dir / f"{name}.log", "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    machine = monitor.summary()
    if rc != 0:
        raise SystemExit(f"[{name}] training failed; see {runs_dir / (name + '.log')}")
    ev = subprocess.run([sys.executable, "-m", "medclass", "evaluate", str(runs_dir / name), "--split", "valid",
                         "--bootstrap", "500"], capture_output=True, text=True)
    if ev.returncode != 0:
        raise SystemExit(f"[{name}] evaluation failed: {ev.stdout}{ev.stderr}")
    metrics = json.loads((runs_dir / name / "eval-valid" / "metrics.json").read_text())
    summary = json.loads((runs_dir / name / "train_summary.json").read_text())
    ci = metrics.get("confidence_intervals", {}).get("metrics", {})
    spec = json.loads((runs_dir / name / "model_spec.json").read_text())  # auto: the size and model chosen
    row = {
        "config": name, "overrides": CONFIGS[name], "image_size": spec.get("image_size", size),
        "arch": spec.get("arch"), "train_wall_s": round(wall, 1),
        "epochs_run": summary.get("epochs_run"), "best_epoch": summary.get("best_epoch"),
        "budget": summary.get("budget"),
        "val_accuracy": metrics.get("accuracy"), "val_balanced_accuracy": metrics.get("balanced_accuracy"),
        "val_auroc": metrics.get("auroc"),
        "val_ci95": {k: [ci[k].get("low"), ci[k].get("high")] for k in ("accuracy", "balanced_accuracy", "auroc")
                     if k in ci},
        "val_n": metrics.get("n"), "machine_during_run": machine,
    }
    log(f"[{name}] epochs {row['epochs_run']}, {wall:.0f} s: val accuracy {row['val_accuracy']:.3f}, "
        f"balanced {row['val_balanced_accuracy']:.3f}, AUROC {row['val_auroc']:.3f}")
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    data = _name(args.data)
    runs_dir = args.runs_dir or Path("runs") / "ablation" / f"{data}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MEDCLASS_CACHE_DIR", str(runs_dir / "decode-cache"))
    rows, manifest = [], None
    out = args.out or Path("results") / "ablation" / f"{data}-{args.budget:g}min.json"
    for name in names:
        rows.append(run_one(args, name, CONFIGS[name], runs_dir, manifest))
        manifest = manifest or (runs_dir / name / "manifest.csv")
        write_json(out, {"data": args.data, "budget_minutes": args.budget, "split": "valid", "rows": rows,
                         "command": " ".join(sys.argv), "hardware": hardware_info()})  # after every run
    print(markdown_table(
        ["config", "px", "epochs", "s", "val acc", "val bal. acc", "val AUROC", "busy"],
        [[r["config"], r["image_size"], r["epochs_run"], r["train_wall_s"], r["val_accuracy"],
          r["val_balanced_accuracy"], r["val_auroc"], r["machine_during_run"].get("machine_busy_fraction")]
         for r in rows]))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
