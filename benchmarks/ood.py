"""Out-of-distribution scores measured: each model against the other data sets' images and corruptions.

``python benchmarks/ood.py RUN [RUN ...] --foreign DATA [DATA ...] [--per-set N] [--out JSON]``

For every trained run (``medclass train`` folders, e.g. one per shared data set):

1. the in-distribution scores: the run's own validation images fit the threshold
   (:data:`medclass.evaluation.ood.IN_DISTRIBUTION_QUANTILE`, 95 %), its test images say how many of
   its own images are flagged (target: at most 5 %);
2. the foreign images: up to ``--per-set`` images of each ``--foreign`` data set that is not the
   run's own (decoded as the run takes its inputs: its size, channels and resize rule), and three
   corruptions of its own test images: blank (all zeros), uniform noise, and inverted (255 - x);
3. both scores of :mod:`medclass.evaluation.ood`: energy of the logits (Liu et al. 2020) and the
   Mahalanobis distance of the penultimate features (Lee et al. 2018; class means and Ledoit-Wolf
   covariance fitted on the run's training images).

Per run, per score and per foreign set it reports the AUROC (foreign = positive) and the share
flagged at the stored threshold; the target is at least 95 % of other modalities flagged for every
model. Prints a Markdown table and writes JSON (``--out``, default
``benchmarks/results/ood.json``) with the machine's description.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, markdown_table, run_metadata, write_json  # noqa: E402

from medclass.config import DataConfig  # noqa: E402
from medclass.data import build_index, decode_split  # noqa: E402
from medclass.data.sources import read_manifest  # noqa: E402
from medclass.engine.inference import logits_and_features  # noqa: E402
from medclass.engine.run import load_run  # noqa: E402
from medclass.evaluation.ood import energy_score, fit_mahalanobis, fit_threshold, ood_auroc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CORRUPTIONS = ("blank", "noise", "inverted")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="medclass run folders")
    p.add_argument("--foreign", nargs="+", required=True,
                   help="data sets (folder, CSV, .npz) whose images are foreign to every run not trained on them")
    p.add_argument("--per-set", type=int, default=200, help="images taken from each foreign set (spread evenly)")
    p.add_argument("--seed", type=int, default=0, help="noise corruption and image choice")
    p.add_argument("--out", type=Path, default=RESULTS / "ood.json")
    return p.parse_args(argv)


def _decode(run, samples):
    """``samples`` as the run takes its inputs (a :class:`medclass.data.DecodedSplit`; unreadable
    files are left out)."""
    s = run.spec
    return decode_split(samples, s.channels, s.image_size, True, "decode", False, cache_dir=None,
                        dicom_window=s.dicom_window, resize=s.resize)


def set_name(data: str) -> str:
    """A data set's short name: a folder's name, or the folder of a CSV or ``.npz``."""
    p = Path(data.rstrip("/"))
    return p.parent.name if p.suffix.lower() in (".csv", ".npz") else p.name


def _scores(run, maha, images: torch.Tensor) -> dict[str, np.ndarray]:
    logits, feats = logits_and_features(run.model, images, run.preprocess, run.device)
    return {"energy": energy_score(logits.numpy()), "mahalanobis": maha.score(feats.numpy())}


def _spread(samples: list, n: int) -> list:
    return samples[:: max(1, len(samples) // n)][:n]


def measure(run_dir: Path, foreign: list[str], per_set: int, seed: int) -> dict[str, Any]:
    """The scores of one run: thresholds on valid, flag rates and AUROCs on test, foreign sets and corruptions."""
    run = load_run(run_dir)
    own = read_manifest(run.files.manifest)
    source = str(Path(run.cfg.data.source).resolve()) if run.cfg.data.source else None
    train = _decode(run, own.splits["train"])
    _, train_feats = logits_and_features(run.model, train.images, run.preprocess, run.device)
    maha = fit_mahalanobis(train_feats.numpy(), train.labels.numpy(), len(run.class_names))
    valid = _scores(run, maha, _decode(run, own.splits["valid"]).images)
    test_images = _decode(run, own.splits["test"]).images
    test = _scores(run, maha, test_images)
    thresholds = {m: fit_threshold(v) for m, v in valid.items()}
    rng = np.random.default_rng(seed)
    sets: dict[str, torch.Tensor] = {
        "blank": torch.zeros_like(test_images),
        "noise": torch.from_numpy(rng.integers(0, 256, tuple(test_images.shape), dtype=np.uint8)),
        "inverted": 255 - test_images,
    }
    for data in foreign:
        if source is not None and Path(data).resolve() == Path(source):
            continue
        index = build_index(DataConfig(source=data, skip_corrupt=True))
        samples = [x for split in index.splits.values() for x in split]
        sets[set_name(data)] = _decode(run, _spread(samples, per_set)).images
    out: dict[str, Any] = {"run": str(run_dir), "image_size": run.spec.image_size, "channels": run.spec.channels,
                           "thresholds": thresholds, "n_valid": int(len(valid["energy"])), "methods": {}}
    for m in ("energy", "mahalanobis"):
        row = {"own_test_flagged": float(np.mean(test[m] > thresholds[m])), "foreign": {}}
        for name, images in sets.items():
            s = _scores(run, maha, images)[m]
            row["foreign"][name] = {"n": int(len(s)), "flagged": float(np.mean(s > thresholds[m])),
                                    "auroc": ood_auroc(test[m], s)}
        out["methods"][m] = row
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    record = {**run_metadata(), "runs": []}
    rows = []
    for run_dir in args.runs:
        log(f"{run_dir}: scoring")
        r = measure(run_dir, args.foreign, args.per_set, args.seed)
        record["runs"].append(r)
        for m, v in r["methods"].items():
            for name, f in v["foreign"].items():
                rows.append([run_dir.name, m, f"{v['own_test_flagged']:.3f}", name, f["n"], f"{f['flagged']:.3f}",
                             f"{f['auroc']:.3f}" if f["auroc"] is not None else "n/a"])
        write_json(args.out, record)
    print(markdown_table(["run", "score", "own test flagged", "foreign set", "n", "flagged", "AUROC"], rows))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
