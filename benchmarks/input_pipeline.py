"""Input pipeline throughput and peak memory on real files, against the model's own consumption.

For each data set (default: ``../shared/data/all-leukemia`` and ``../shared/data/chest-ct``, every
image of every split) at ``--size`` pixels:

- ``first epoch``: decode + resize + write the memory-mapped cache (a fresh temporary cache
  folder), then one epoch through the training DataLoader with the batched kornia augmentation and
  normalisation on the CPU (what the trainer does before the forward pass);
- ``cached``: a later run: hash the files, map the cache, one epoch of loading + augmentation;
- ``model``: the medclass ResNet-50's training rate (forward + backward + AdamW) at the same size
  on this CPU, the consumer the pipeline must keep fed.

Peak memory: each data set is also decoded and iterated in a child process that reports its peak
resident set size (VmHWM from /proc/self/status; anonymous and file-backed parts at the end), next
to the decoded size of the original images (width x height x 3 bytes, from the file headers) and
the cache's size. Run ``python benchmarks/input_pipeline.py --help`` for the options; it prints a
Markdown table and writes JSON (command, hardware, figures).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_info, write_json  # noqa: E402

from medclass.core.config import RunConfig  # noqa: E402
from medclass.data import Preprocess, build_augmentation, build_index, decode_split  # noqa: E402
from medclass.engine.trainer import make_loader  # noqa: E402
from medclass.models import resnet50  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = [HERE.parent.parent / "shared" / "data" / "all-leukemia", HERE.parent.parent / "shared" / "data" / "chest-ct"]


def _config(source: Path, size: int, batch: int) -> RunConfig:
    cfg = RunConfig()
    cfg.data.source = str(source)
    cfg.data.image_size = size
    cfg.train.batch_size = batch
    cfg.train.num_workers = 0
    cfg.train.progress = False
    return cfg


def _all_samples(cfg: RunConfig):
    index = build_index(cfg.data)
    return [s for split in ("train", "valid", "test") for s in index.splits[split]]


def _epoch(cfg: RunConfig, split) -> tuple[float, int]:
    """(seconds, images) of one epoch of DataLoader + augmentation + normalisation (CPU, as the trainer)."""
    pre, aug = Preprocess.from_config(cfg.data), build_augmentation(cfg.data)
    loader = make_loader(cfg, split, torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    n = 0
    for images, labels in loader:
        x = pre.normalize_(aug(pre.to_unit(images)))
        n += len(x)
    return time.perf_counter() - t0, n


def measure_pipeline(source: Path, size: int, batch: int) -> dict:
    cfg = _config(source, size, batch)
    samples = _all_samples(cfg)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        first = decode_split(samples, 3, size, progress=False, cache_dir=cache)
        t_decode = time.perf_counter() - t0
        t_aug1, n1 = _epoch(cfg, first)
        t0 = time.perf_counter()
        again = decode_split(samples, 3, size, progress=False, cache_dir=cache)
        t_map = time.perf_counter() - t0
        assert again.cache_hit
        t_aug2, n2 = _epoch(cfg, again)
        cache_bytes = sum(p.stat().st_size for p in Path(cache).iterdir())
    n = len(first)
    return {
        "images": n,
        "decode_resize_cache_write_img_s": n / t_decode,
        "first_epoch_img_s": n / (t_decode + t_aug1 * n / n1),
        "cache_open_seconds": t_map,
        "cached_epoch_img_s": n2 / (t_map + t_aug2),
        "augment_only_img_s": n2 / t_aug2,
        "cache_bytes": cache_bytes,
    }


def measure_model(size: int, batch: int, steps: int, warmup: int) -> float:
    """Training images/s of the medclass ResNet-50 at ``size`` px on this CPU."""
    torch.manual_seed(0)
    model = resnet50(num_classes=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 4, (batch,))
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def _proc_status() -> dict[str, str]:
    return dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)


def rss_child(source: str, size: int, batch: int) -> None:
    """In a fresh process: decode into a fresh cache, one augmented epoch; print memory JSON."""
    base = _proc_status()
    cfg = _config(Path(source), size, batch)
    samples = _all_samples(cfg)
    original = 0
    for s in samples:
        with Image.open(s.path) as im:  # header only: no pixels decoded
            original += im.size[0] * im.size[1] * 3
    with tempfile.TemporaryDirectory() as cache:
        split = decode_split(samples, 3, size, progress=False, cache_dir=cache)
        _epoch(cfg, split)
        status = _proc_status()
        kib = lambda k: int(status[k].split()[0]) * 1024  # noqa: E731
        print(json.dumps({
            "images": len(split), "size": size,
            "rss_after_imports_bytes": int(base["VmRSS"].split()[0]) * 1024,
            "peak_rss_bytes": kib("VmHWM"), "rss_anon_end_bytes": kib("RssAnon"),
            "rss_file_end_bytes": kib("RssFile"),
            "decoded_at_training_size_bytes": len(split) * 3 * size * size,
            "originals_decoded_bytes": original,
        }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32, help="loader batch (augmentation is batched)")
    ap.add_argument("--model-batch", type=int, default=8)
    ap.add_argument("--model-steps", type=int, default=3)
    ap.add_argument("--model-warmup", type=int, default=1)
    ap.add_argument("--rss-sizes", nargs="*", type=int, default=[224, 64])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "input_pipeline.json")
    ap.add_argument("--rss-child", nargs=3, metavar=("SOURCE", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2]))
        return

    model_rate = measure_model(args.size, args.model_batch, args.model_steps, args.model_warmup)
    print(f"model (ResNet-50 training, {args.size} px, batch {args.model_batch}): {model_rate:.2f} img/s")
    rows = {}
    for source in args.data:
        r = measure_pipeline(source, args.size, args.batch_size)
        r["first_epoch_x_model"] = r["first_epoch_img_s"] / model_rate
        r["cached_x_model"] = r["cached_epoch_img_s"] / model_rate
        memory = {}
        for size in args.rss_sizes:
            out = subprocess.run([sys.executable, __file__, "--rss-child", str(source), str(size), str(args.batch_size)],
                                 capture_output=True, text=True, check=True)
            memory[str(size)] = json.loads(out.stdout.strip().splitlines()[-1])
        r["memory"] = memory
        rows[source.name] = r
        print(f"{source.name}: {json.dumps(r, indent=1)}", flush=True)

    print(f"\n| data ({args.size} px) | images | decode+resize img/s | first epoch img/s | cached epoch img/s "
          f"| model img/s | cached / model | peak RSS {args.rss_sizes[0]} px | originals decoded |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        m = r["memory"][str(args.rss_sizes[0])]
        print(f"| {name} | {r['images']} | {r['decode_resize_cache_write_img_s']:.0f} | {r['first_epoch_img_s']:.0f} | "
              f"{r['cached_epoch_img_s']:.0f} | {model_rate:.2f} | {r['cached_x_model']:.0f}x | "
              f"{m['peak_rss_bytes'] / 2**20:.0f} MiB | {m['originals_decoded_bytes'] / 2**20:.0f} MiB |")
    write_json(args.out, {
        "benchmark": "input_pipeline", "command": [sys.executable, *sys.argv], "hardware": hardware_info(),
        "size": args.size, "loader_batch": args.batch_size, "model_train_img_s": model_rate,
        "model_batch": args.model_batch, "data": rows,
        "targets": {"cached_x_model_min": 5.0, "first_epoch_x_model_min": 1.0},
        "notes": "first epoch reads files through the OS page cache as it stands (not dropped); "
                 "augmentation runs on the CPU here, on the training device in medclass train.",
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
