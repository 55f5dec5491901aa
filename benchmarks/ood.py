"""Out-of-distribution scores measured: each model against the other data sets' images and corruptions.

``python benchmarks/ood.py RUN [RUN ...] --foreign DATA [DATA ...] [--per-set N] [--out JSON]``

For every trained run (``medclass train`` folders, e.g. one per shared data set):

1. the features: the logits and the global-average-pooled output of every stage of the run's
   model (:meth:`medclass.models.ClassifierModel.feature_stages`: ``layer1`` .. ``layer4`` of a
   ResNet; the last is the penultimate features) of its training, validation and test images,
   in one forward pass per batch (:func:`medclass.engine.inference.logits_and_layer_features`);
2. the foreign images: up to ``--per-set`` images of each ``--foreign`` data set that is not the
   run's own (decoded as the run takes its inputs: its size, channels and resize rule), and three
   corruptions of its own test images: blank (all zeros), uniform noise, and inverted (255 - x);
3. the detector variants, each fitted by :func:`medclass.core.ood.fit_detector` (the function
   ``medclass train`` / ``ood-fit`` use) and scored by :meth:`medclass.core.ood.OODDetector.score`
   (what every prediction path uses), nothing written to the run folder:

   - ``energy``: the energy of the logits (Liu et al. 2020);
   - ``penultimate``: the Mahalanobis distance of the penultimate features (Lee et al. 2018;
     version 1 of ``ood.json``);
   - ``stages-max`` / ``stages-sum``: Lee et al.'s feature ensemble, one Mahalanobis score per
     stage, each standardised by its validation median and IQR, combined by max or sum;
   - ``stages+std-max`` / ``stages+std-sum``: the same with, besides each stage's average-pooled
     map, its spatial standard deviation (``"<stage>:std"``) as further layers;
   - each Mahalanobis variant with the threshold at the 95 % validation quantile (``quantile``)
     and at the conformal rank ``ceil((n + 1) 0.95)`` (``conformal``); and the ensembles with
     ``split``: the standardisation from half of the validation images (even positions) and the
     threshold from the other half, so that the two are not fitted on the same images.

Per run, per variant and per foreign set it reports the share flagged at the variant's threshold
and the AUROC (foreign = positive, against the run's own test images), the share of the run's own
test images flagged, and per layer the AUROC of its raw score. The targets: at least 95 % of
other modalities flagged for every model, at most 5 % of its own test images. Prints Markdown
tables (every run and variant; then each variant's worst case over the runs) and writes JSON
(``--out``, default ``benchmarks/results/ood.json``) with the machine's description.
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

from medclass.core.config import DataConfig  # noqa: E402
from medclass.data import build_index, decode_split  # noqa: E402
from medclass.data.sources import read_manifest  # noqa: E402
from medclass.engine.inference import logits_and_layer_features, model_feature_layers  # noqa: E402
from medclass.engine.run import load_run  # noqa: E402
from medclass.core.ood import OODDetector, energy_score, fit_detector, fit_threshold, ood_auroc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CORRUPTIONS = ("blank", "noise", "inverted")
#: name -> (layers: "penultimate" or "stages", combine, threshold rule, split validation)
VARIANTS: dict[str, tuple[str, str, str, bool]] = {
    "penultimate/quantile": ("penultimate", "max", "quantile", False),
    "penultimate/conformal": ("penultimate", "max", "conformal", False),
    "stages-max/quantile": ("stages", "max", "quantile", False),
    "stages-max/conformal": ("stages", "max", "conformal", False),
    "stages-max/split": ("stages", "max", "quantile", True),
    "stages-sum/quantile": ("stages", "sum", "quantile", False),
    "stages-sum/conformal": ("stages", "sum", "conformal", False),
    "stages-sum/split": ("stages", "sum", "quantile", True),
    "stages+std-max/quantile": ("stages+std", "max", "quantile", False),
    "stages+std-max/conformal": ("stages+std", "max", "conformal", False),
    "stages+std-max/split": ("stages+std", "max", "quantile", True),
    "stages+std-sum/quantile": ("stages+std", "sum", "quantile", False),
    "stages+std-sum/conformal": ("stages+std", "sum", "conformal", False),
}


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


def _spread(samples: list, n: int) -> list:
    return samples[:: max(1, len(samples) // n)][:n]


def _features(run, names, images: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits ``(N, K)`` and the pooled features of every stage ``names`` (numpy)."""
    z, f = logits_and_layer_features(run.model, images, run.preprocess, run.device, names)
    return z.numpy(), [t.numpy() for t in f]


def _pick(feats: list[np.ndarray], layers: str) -> list[np.ndarray]:
    """The features of ``layers`` among those of every stage then every stage's ``:std``."""
    half = len(feats) // 2
    return {"penultimate": feats[half - 1: half], "stages": feats[:half], "stages+std": feats}[layers]


def model_feature_layers_of(names: tuple[str, ...], layers: str) -> tuple[str, ...]:
    """The names of ``layers`` among ``names`` (every stage, then every stage's ``:std``)."""
    half = len(names) // 2
    return {"penultimate": ("penultimate",), "stages": names[:half], "stages+std": names}[layers]


def fit_variant(name: str, train, valid, num_classes: int, names: tuple[str, ...]) -> OODDetector:
    """The detector of variant ``name`` (:data:`VARIANTS`) fitted on ``train = (labels, feats)``
    and ``valid = (logits, feats)``: :func:`medclass.core.ood.fit_detector`; ``split`` variants then
    take the threshold from the odd validation positions, after standardising on the even ones."""
    layers, combine, rule, split = VARIANTS[name]
    labels, tf = train
    vz, vf = valid
    chosen = model_feature_layers_of(names, layers)
    if not split:
        return fit_detector(_pick(tf, layers), labels, _pick(vf, layers), vz, num_classes, chosen,
                            combine=combine, threshold_rule=rule)
    even, odd = slice(0, None, 2), slice(1, None, 2)
    d = fit_detector(_pick(tf, layers), labels, [f[even] for f in _pick(vf, layers)], vz[even], num_classes, chosen,
                     combine=combine, threshold_rule=rule)
    d.threshold = fit_threshold(d.score(vz[odd], [f[odd] for f in _pick(vf, layers)]), d.quantile, rule)
    return d


def measure(run_dir: Path, foreign: list[str], per_set: int, seed: int) -> dict[str, Any]:
    """All variants of one run: thresholds on valid, flag rates and AUROCs on test, foreign sets and corruptions."""
    run = load_run(run_dir, ood=False)
    names = model_feature_layers(run.model, "stages+std")
    own = read_manifest(run.files.manifest)
    source = str(Path(run.cfg.data.source).resolve()) if run.cfg.data.source else None
    train = _decode(run, own.splits["train"])
    _, train_feats = _features(run, names, train.images)
    valid = _features(run, names, _decode(run, own.splits["valid"]).images)
    test_images = _decode(run, own.splits["test"]).images
    test = _features(run, names, test_images)
    rng = np.random.default_rng(seed)
    sets: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {
        "blank": _features(run, names, torch.zeros_like(test_images)),
        "noise": _features(run, names, torch.from_numpy(rng.integers(0, 256, tuple(test_images.shape),
                                                                      dtype=np.uint8))),
        "inverted": _features(run, names, 255 - test_images),
    }
    for data in foreign:
        if source is not None and Path(data).resolve() == Path(source):
            continue
        index = build_index(DataConfig(source=data, skip_corrupt=True))
        samples = [x for split in index.splits.values() for x in split]
        sets[set_name(data)] = _features(run, names, _decode(run, _spread(samples, per_set)).images)
    k = len(run.class_names)
    out: dict[str, Any] = {"run": str(run_dir), "image_size": run.spec.image_size, "channels": run.spec.channels,
                           "layers": list(names), "n_train": int(len(train)), "n_valid": int(len(valid[0])),
                           "n_test": int(len(test[0])), "variants": {}, "layer_auroc": {}}
    variants: dict[str, Any] = {"energy/quantile": None, **{v: None for v in VARIANTS}}
    for v in variants:
        if v == "energy/quantile":
            threshold = fit_threshold(energy_score(valid[0]))
            score = (lambda z, f: energy_score(z))
            extra: dict[str, Any] = {}
        else:
            d = fit_variant(v, (train.labels.numpy(), train_feats), valid, k, names)
            threshold, layers = d.threshold, VARIANTS[v][0]
            score = (lambda z, f, d=d, layers=layers: d.score(z, _pick(f, layers)))
            extra = {"centre": d.centre, "scale": d.scale}
        s_test = score(*test)
        row = {"threshold": threshold, "own_test_flagged": float(np.mean(s_test > threshold)), "foreign": {}, **extra}
        for name, feats in sets.items():
            s = score(*feats)
            row["foreign"][name] = {"n": int(len(s)), "flagged": float(np.mean(s > threshold)),
                                    "auroc": ood_auroc(s_test, s)}
        modal = [f["flagged"] for n, f in row["foreign"].items() if n not in CORRUPTIONS]
        row["min_modality_flagged"] = min(modal) if modal else None
        row["min_modality_auroc"] = min((f["auroc"] for n, f in row["foreign"].items() if n not in CORRUPTIONS),
                                        default=None)
        out["variants"][v] = row
    # each layer alone: the AUROC of its raw Mahalanobis score (a diagnosis of what each stage sees)
    out["layers"] = list(names)
    one = fit_detector(train_feats, train.labels.numpy(), valid[1], valid[0], k, names)
    test_layers = one.layer_scores(test[1])
    for i, layer in enumerate(names):
        out["layer_auroc"][layer] = {name: ood_auroc(test_layers[i], one.layer_scores(f)[i]) for name, (_, f) in
                                     sets.items()}
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, over the runs: the largest own-test share flagged, the smallest share of a
    foreign modality flagged, the smallest blank share, and how many (run, modality) pairs and
    runs miss the targets (>= 95 % flagged; <= 5 % own test)."""
    out = {}
    for v in runs[0]["variants"]:
        rows = [r["variants"][v] for r in runs]
        pairs = [(f["flagged"]) for row in rows for n, f in row["foreign"].items() if n not in CORRUPTIONS]
        out[v] = {"max_own_test_flagged": max(row["own_test_flagged"] for row in rows),
                  "min_modality_flagged": min(pairs) if pairs else None,
                  "modality_pairs_below_95": int(sum(p < 0.95 for p in pairs)), "modality_pairs": len(pairs),
                  "min_blank_flagged": min(row["foreign"]["blank"]["flagged"] for row in rows),
                  "min_corruption_flagged": min(row["foreign"][c]["flagged"] for row in rows for c in CORRUPTIONS),
                  "runs_over_5pct_own_test": int(sum(row["own_test_flagged"] > 0.05 for row in rows)),
                  "mean_own_test_flagged": float(np.mean([row["own_test_flagged"] for row in rows]))}
    return out


def _short(run: dict[str, Any]) -> str:
    p = Path(run["run"])
    return f"{p.parent.name if p.name == 'medclass' else p.name} ({run['image_size']} px)"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    record: dict[str, Any] = {**run_metadata(), "variants": {k: dict(zip(("layers", "combine", "threshold_rule",
                                                                           "split_valid"), v))
                                                              for k, v in VARIANTS.items()}, "runs": []}
    for run_dir in args.runs:
        log(f"{run_dir}: scoring")
        record["runs"].append(measure(run_dir, args.foreign, args.per_set, args.seed))
        record["summary"] = summarise(record["runs"])
        write_json(args.out, record)
    rows = []
    for r in record["runs"]:
        for v, row in r["variants"].items():
            f = row["foreign"]
            rows.append([_short(r), v, f"{row['own_test_flagged']:.3f}",
                         "n/a" if row["min_modality_flagged"] is None else f"{row['min_modality_flagged']:.3f}",
                         "n/a" if row["min_modality_auroc"] is None else f"{row['min_modality_auroc']:.3f}",
                         " / ".join(f"{f[c]['flagged']:.2f}" for c in CORRUPTIONS)])
    print(markdown_table(["run", "variant", "own test flagged", "min other modality flagged",
                          "min AUROC vs other modalities", "blank / noise / inverted flagged"], rows))
    print()
    print(markdown_table(["variant", "max own test flagged", "runs > 5 % own test", "min modality flagged",
                          "(run, modality) pairs < 95 %", "min blank flagged", "min corruption flagged"],
                         [[v, f"{s['max_own_test_flagged']:.3f}", s["runs_over_5pct_own_test"],
                           "n/a" if s["min_modality_flagged"] is None else f"{s['min_modality_flagged']:.3f}",
                           f"{s['modality_pairs_below_95']} of {s['modality_pairs']}", f"{s['min_blank_flagged']:.2f}",
                           f"{s['min_corruption_flagged']:.2f}"] for v, s in record["summary"].items()]))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
