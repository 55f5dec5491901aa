#!/usr/bin/env python
"""The tables of ``docs/results.md``, ``docs/benchmarks.md`` and the README's headline table, generated
from the committed JSON.

The pages are written by hand (prose, commands, conclusions); each table sits between two markers
and is made here from the files it reports, with their paths under the table::

    <!-- generated: three-sides (scripts/docs_results.py) -->
    ... (replaced on every run) ...
    <!-- end generated: three-sides -->

Usage, from the repository root (no torch needed, a second or so)::

    python scripts/docs_results.py            # rewrite the generated blocks of the pages
    python scripts/docs_results.py --check    # exit 1 when a committed page differs (CI)

Rerun it by hand after a benchmark or results run has written new JSON, and commit the pages.
A page marker without a table here, or a table whose marker is missing, is an error (exit 2).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import re
import sys
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import collect_results
import issue23_table

BEGIN = re.compile(r"<!-- generated: (?P<name>[\w-]+) \(scripts/docs_results\.py\) -->\n")
END = "<!-- end generated: {name} -->"


# -- helpers -------------------------------------------------------------------------------------

def load(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text())


def code(rel: str) -> str:
    return f"`{rel}`"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def sources(paths: Sequence[str]) -> str:
    unique = list(dict.fromkeys(paths))
    return "Source: " + ", ".join(code(p) for p in unique) + "."


def n0(x: float) -> str:
    """A whole number with thousands separators, halves rounded up (358.5 -> 359), as typed by hand."""
    return f"{int(Decimal(str(x)).quantize(Decimal(1), rounding=ROUND_HALF_UP)):,}"


def f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def ci(value, low_high) -> str:
    """``0.641 [0.579, 0.695]``."""
    if value is None:
        return "-"
    return f"{value:.3f} [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else f"{value:.3f}"


def ci_metric(metrics: dict, name: str) -> str:
    """A metrics.json figure with its bootstrap interval (``confidence_intervals.metrics``)."""
    c = metrics["confidence_intervals"]["metrics"].get(name) or {}
    return ci(metrics.get(name), (c["low"], c["high"]) if "low" in c else None)


def ablation_row(rel: str, config: str) -> dict:
    for r in load(rel)["rows"]:
        if r["config"] == config:
            return r
    raise KeyError(f"{rel}: no row with config {config!r}")


def val3(r: dict) -> str:
    """``epochs: accuracy / balanced accuracy / AUROC`` of one ablation row."""
    return (f"{r['epochs_run']}: {r['val_accuracy']:.3f} / {r['val_balanced_accuracy']:.3f} / "
            f"{r['val_auroc']:.3f}")


def test3(r: dict) -> str:
    """The same for one side of a recipe_vs_monai JSON (test split)."""
    return (f"{r['epochs_run']}: {r['test_accuracy']:.3f} / {r['test_balanced_accuracy']:.3f} / "
            f"{r['test_auroc']:.3f}")


# -- results.md ----------------------------------------------------------------------------------

def runs_table() -> list[str]:
    runs = sorted(p for p in collect_results.ROOT.iterdir()
                  if (p / "eval-test" / "metrics.json").is_file() and (p / "train_summary.json").is_file())
    rows = []
    for run in runs:
        r = collect_results.row(run)
        rows.append([r["run"], r["data"], r["model"], f"{r['resolution_px']} px",
                     f"{r['epochs']} ({r['best_epoch']})", f"{r['wall_seconds'] / 60:.1f} min", r["hardware"],
                     r["test_n"], f"{r['test_accuracy']:.3f}", f"{r['balanced_accuracy']:.3f}", f"{r['auroc']:.3f}"])
    head = ["run", "data", "model", "resolution", "epochs (best)", "wall time", "hardware", "test n",
            "test accuracy", "balanced accuracy", "AUROC"]
    return table(head, rows) + ["", ("Source: each run's `results/<run>/config.yaml`, `train_summary.json`, "
                                "`eval-test/metrics.json` and `hardware.json` (the rows of "
                                "`python scripts/collect_results.py`, which also writes `results/table.json`).")]


def compare_table(folder: str = "results/chest-ct-compare") -> list[str]:
    rel = f"{folder}/comparison.csv"
    with open(ROOT / rel, newline="") as fh:
        rows = list(csv.DictReader(fh))
    md = (ROOT / f"{folder}/comparison.md").read_text().strip().splitlines()
    # comparison.md is what `medclass compare` wrote from the runs; check it agrees with its CSV
    if len(md) != len(rows) + 2:
        raise SystemExit(f"{rel} and comparison.md disagree ({len(rows)} rows against {len(md) - 2})")
    return md + ["", sources([f"{folder}/comparison.md", rel])
                 + f" Written by `medclass compare` (commands in `{folder}/commands.txt`)."]


def leakage_table() -> list[str]:
    rows, paths = [], []
    for label, rel in (("all", "results/chest-ct-report/metrics-test.json"),
                       ("duplicates removed (`--dedupe`)", "results/chest-ct-report/metrics-test-dedupe.json")):
        m = load(rel)
        cal = m["calibration"]
        cis = m["confidence_intervals"]["metrics"]
        cells = [label, m["n"]]
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
            cells.append(f"{m[name]:.3f} ({cis[name]['low']:.3f}-{cis[name]['high']:.3f})")
        cells.append(f"{cal['ece_before']:.3f} / {cal['ece_after']:.3f}")
        rows.append(cells)
        paths.append(rel)
    temp = load(paths[0])["calibration"]["temperature"]
    head = ["test images", "n", "accuracy", "balanced accuracy", "macro F1", "AUROC",
            f"ECE before / after T={temp:.2f}"]
    return table(head, rows) + ["", sources(paths)]


ABL = "results/ablation/"
R18 = "ResNet-18, ImageNet stem"
BUDGET_TABLE = [  # (json, config, label) in the order of the table
    (ABL + "brain-tumor-mri-yn-2min.json", "today", "ResNet-50, ImageNet stem (the old default)"),
    (ABL + "brain-tumor-mri-yn-2min.json", "r18-imagenet", R18),
    (ABL + "brain-tumor-mri-yn-2min.json", "r18-small", "ResNet-18, small stem"),
    (ABL + "brain-tumor-mri-yn-2min.json", "r18-small+ema", "ResNet-18, small stem, EMA"),
    (ABL + "brain-tumor-mri-yn-2min.json", "r18-small+ema+ta", "ResNet-18, small stem, EMA, TrivialAugment"),
    (ABL + "brain-tumor-mri-yn-2min.json", "r18-small+ema+mix", "ResNet-18, small stem, EMA, mixup/CutMix"),
    (ABL + "chest-ct-3min.json", "today", "ResNet-50, ImageNet stem (the old default)"),
    (ABL + "chest-ct-3min.json", "r18-imagenet", "**ResNet-18, ImageNet stem (the new default)**"),
    (ABL + "chest-ct-3min-r18-additions.json", "r18-imagenet+ema", R18 + ", EMA"),
    (ABL + "chest-ct-3min-r18-additions.json", "r18-imagenet+ema+ta", R18 + ", EMA, TrivialAugment"),
    (ABL + "chest-ct-3min-r18-additions.json", "r18-imagenet+ema+mix", R18 + ", EMA, mixup/CutMix"),
]


def _grouped(spec, cells: Callable[[dict, dict, tuple], list[str]], first: Callable[[dict, dict], list[str]]):
    """Rows of a table over ablation JSON: the data cells only on the first row of each data set."""
    rows, last = [], None
    for item in spec:
        rel, config = item[0], item[1]
        record, r = load(rel), ablation_row(rel, config)
        key = record["data"]
        lead = first(record, r) if key != last else [""] * len(first(record, r))
        last = key
        rows.append(lead + cells(record, r, item) + [code(rel)])
    return rows


def _data_name(record: dict) -> str:
    data = record["data"].replace("../shared/data/", "").split("/")[0]
    return {"breastmnist": "BreastMNIST"}.get(data, data)


def budget_table() -> list[str]:
    rows = _grouped(
        BUDGET_TABLE,
        lambda rec, r, item: [item[2], r["epochs_run"], f3(r["val_accuracy"]), f3(r["val_balanced_accuracy"]),
                              f3(r["val_auroc"])],
        lambda rec, r: [f"{_data_name(rec)} ({r['val_n']})", f"{rec['budget_minutes']:g} min"])
    head = ["data (validation n)", "budget", "configuration", "epochs", "val accuracy", "val balanced accuracy",
            "val AUROC", "source"]
    return table(head, rows)


SIZE_TABLE = [  # (json, config, px label, stem label)
    (ABL + "brain-tumor-mri-yn-5min-size.json", "default", "64", "ImageNet"),
    (ABL + "brain-tumor-mri-yn-5min-size.json", "px96", "**96**", "ImageNet"),
    (ABL + "brain-tumor-mri-yn-5min-size.json", "px128", "128", "ImageNet"),
    (ABL + "chest-ct-5min-size.json", "default", "**64**", "ImageNet"),
    (ABL + "chest-ct-5min-size.json", "px96", "96", "ImageNet"),
    (ABL + "chest-ct-5min-size.json", "px128", "128", "ImageNet"),
    (ABL + "breastmnist-5min-size.json", "default", "28", "ImageNet"),
    (ABL + "breastmnist-5min-size.json", "px64", "64 (upsampled)", "ImageNet"),
    (ABL + "breastmnist-5min-size.json", "small", "**28**", "**small**"),
    (ABL + "breastmnist-5min-balance.json", "small-balanced-loss", "28", "small, class-balanced loss"),
    (ABL + "ham10000-subset-5min-balance.json", "default", "64", "ImageNet"),
    (ABL + "ham10000-subset-5min-balance.json", "balanced-loss", "64", "ImageNet, class-balanced loss"),
]


def size_table() -> list[str]:
    rows, last = [], None
    for rel, config, px, stem in SIZE_TABLE:
        rec, r = load(rel), ablation_row(rel, config)
        if px.strip("*").split()[0] != str(r["image_size"]):
            raise SystemExit(f"{rel} {config}: image size {r['image_size']}, the table says {px}")
        name = _data_name(rec)
        lead = f"{name} ({r['val_n']})" if name != last else ""
        last = name
        rows.append([lead, px, stem, r["epochs_run"], f3(r["val_accuracy"]), f3(r["val_balanced_accuracy"]),
                     f3(r["val_auroc"]), code(rel)])
    head = ["data (validation n)", "px", "stem", "epochs in 5 min", "val accuracy", "val balanced accuracy",
            "val AUROC", "source"]
    return table(head, rows)


TECHNIQUES = [
    (ABL + "all-leukemia-3min-techniques.json", "default", "default (64 px)"),
    (ABL + "all-leukemia-3min-techniques.json", "px96", "96 px"),
    (ABL + "all-leukemia-3min-techniques.json", "ema", "EMA"),
    (ABL + "all-leukemia-3min-techniques.json", "mix", "mixup 0.2 / CutMix 1.0"),
    (ABL + "all-leukemia-3min-techniques.json", "ta", "TrivialAugment"),
    (ABL + "all-leukemia-3min-techniques.json", "erasing", "random erasing 0.25"),
    (ABL + "breastmnist-3min-techniques.json", "default", "default (28 px)"),
    (ABL + "breastmnist-3min-techniques.json", "ema", "EMA"),
    (ABL + "breastmnist-3min-techniques.json", "mix", "mixup / CutMix"),
    (ABL + "breastmnist-3min-techniques.json", "ta", "TrivialAugment"),
    (ABL + "ham10000-subset-3min-techniques.json", "default", "default (64 px)"),
    (ABL + "ham10000-subset-3min-techniques.json", "ema", "EMA"),
    (ABL + "ham10000-subset-3min-techniques.json", "mix", "mixup / CutMix"),
    (ABL + "ham10000-subset-3min-techniques.json", "ta", "TrivialAugment"),
]


def techniques_table() -> list[str]:
    rows = _grouped(
        TECHNIQUES,
        lambda rec, r, item: [item[2], r["epochs_run"], f3(r["val_accuracy"]), f3(r["val_balanced_accuracy"]),
                              f3(r["val_auroc"])],
        lambda rec, r: [f"{_data_name(rec)} ({r['val_n']})"])
    head = ["data (validation n)", "configuration", "epochs", "val accuracy", "val balanced accuracy", "val AUROC",
            "source"]
    return table(head, rows)


def _pairs(spec, title: str, other: str) -> list[str]:
    """One row per data set: its default row and the variant, as ``epochs: acc / bal / AUROC``."""
    rows = []
    for (drel, dcfg), (vrel, vcfg) in spec:
        d, v = ablation_row(drel, dcfg), ablation_row(vrel, vcfg)
        bold = "**" if v["val_balanced_accuracy"] < d["val_balanced_accuracy"] - 0.2 else ""
        vcell = val3(v)
        if bold:  # a collapse of balanced accuracy, as the page's prose says
            e, rest = vcell.split(": ")
            a, b, c = rest.split(" / ")
            vcell = f"{e}: {a} / **{b}** / {c}"
        rows.append([f"{_data_name(load(drel))} ({d['val_n']})", val3(d), vcell,
                     ", ".join(dict.fromkeys([code(drel), code(vrel)]))])
    return table(["data (validation n)", f"{title}: epochs, accuracy / balanced accuracy / AUROC", other, "source"],
                 rows)


def intensity_table() -> list[str]:
    return _pairs([
        ((ABL + "chest-ct-3min-intensity.json", "default"), (ABL + "chest-ct-3min-intensity.json", "per-image")),
        ((ABL + "brain-tumor-mri-yn-3min-intensity.json", "default"),
         (ABL + "brain-tumor-mri-yn-3min-intensity.json", "per-image")),
        ((ABL + "breastmnist-3min-techniques.json", "default"), (ABL + "breastmnist-3min-intensity.json", "per-image")),
        ((ABL + "all-leukemia-3min-techniques.json", "default"),
         (ABL + "all-leukemia-3min-intensity.json", "per-image")),
        ((ABL + "ham10000-subset-3min-techniques.json", "default"),
         (ABL + "ham10000-subset-3min-intensity.json", "per-image")),
    ], "default", "per-image")


def intensity_auto_table() -> list[str]:
    rows = []
    for name in ("chest-ct", "brain-tumor-mri-yn", "breastmnist"):
        frel = f"benchmarks/results/before-issue23/recipe_vs_monai-{name}.json"
        arel = f"benchmarks/results/intensity-auto/recipe_vs_monai-{name}.json"
        f, a = load(frel), load(arel)
        fm, am = f["results"]["medclass"], a["results"]["medclass"]
        acell = test3(am)
        if am["test_balanced_accuracy"] < fm["test_balanced_accuracy"] - 0.05:
            e, rest = acell.split(": ")
            x, y, z = rest.split(" / ")
            acell = f"{e}: {x} / **{y}** / {z}"
        label = {"breastmnist": "BreastMNIST"}.get(name, name)
        rows.append([f"{label} ({fm['test_n']})", f"{f['budget_min']:g} min", test3(fm), acell,
                     f"{code(frel)}, {code(arel)}"])
    head = ["data (test n)", "budget", "`fixed`: epochs, accuracy / balanced accuracy / AUROC",
            "`auto` (per-image here)", "source"]
    return table(head, rows)


def pad_table() -> list[str]:
    return _pairs([((ABL + f"{n}-3min-pad.json", "default"), (ABL + f"{n}-3min-pad.json", "pad"))
                   for n in ("chest-ct", "brain-tumor-mri-yn", "ham10000-subset")], "default", "`pad`")


def crop_table() -> list[str]:
    return _pairs([((ABL + f"{n}-3min-pad.json", "default"), (ABL + f"{n}-3min-crop.json", "crop035"))
                   for n in ("chest-ct", "brain-tumor-mri-yn", "ham10000-subset")],
                  "default (the `pad` table's)", "`data.crop_scale=[0.35,1.0]`")


def jitter_table() -> list[str]:
    return _pairs([
        ((ABL + "chest-ct-5min-size.json", "default"), (ABL + "chest-ct-5min-jitter.json", "jitter04")),
        ((ABL + "brain-tumor-mri-yn-5min-size.json", "px96"),
         (ABL + "brain-tumor-mri-yn-5min-jitter.json", "jitter04")),
        ((ABL + "breastmnist-5min-size.json", "small"), (ABL + "breastmnist-5min-jitter.json", "jitter04")),
        ((ABL + "ham10000-subset-5min-balance.json", "default"),
         (ABL + "ham10000-subset-5min-jitter.json", "jitter04")),
    ], "default (brightness/contrast 0.1)", "jitter 0.4")


THREE_SIDES = [f"benchmarks/results/recipe_vs_monai-{n}.json"
               for n in ("chest-ct", "chest-ct-dedupe", "breastmnist", "brain-tumor-mri-yn", "all-leukemia",
                         "ham10000-subset")]


def three_sides_table() -> list[str]:
    head = ["data (test n)", "budget", "side", "model, px", "epochs", "training s", "accuracy [95 % CI]",
            "balanced accuracy", "AUROC", "cores busy"]
    rows = [r for rel in THREE_SIDES for r in issue23_table.rows(ROOT / rel)]
    return table(head, rows) + ["", sources(THREE_SIDES) + " Rows made by `scripts/issue23_table.py`."]


def readme_three_sides_table() -> list[str]:
    """The README's headline: the three-sides table without the intervals and the timings."""
    head = ["data (test n)", "budget", "side", "model, px", "epochs", "accuracy", "balanced accuracy", "AUROC"]
    rows, last = [], None
    for rel in THREE_SIDES:
        for r in issue23_table.rows(ROOT / rel):
            cells = [r[0], r[1], r[2], r[3], r[4]] + [c.split(" [")[0] for c in r[6:9]]
            if not cells[0] or cells[0] == last:
                cells[0] = cells[1] = ""
            else:
                last = cells[0]
            rows.append(cells)
    names = ",".join(Path(rel).stem.removeprefix("recipe_vs_monai-") for rel in THREE_SIDES)
    return table(head, rows) + ["", f"Source: `benchmarks/results/recipe_vs_monai-{{{names}}}.json`."]


RULES = {"threshold": "Youden threshold", "logit_adjustment": "logit adjustment"}


def _monai_vs_medclass(paths: Sequence[str], medclass_label: str, with_monai: bool = True) -> list[str]:
    rows = []
    for rel in paths:
        rec = load(rel)
        name = Path(rel).stem.replace("recipe_vs_monai-", "")
        name = name.replace("-dedupe", " `--dedupe`").replace("breastmnist", "BreastMNIST")
        res = rec["results"]
        first = True
        for side in (("monai", "medclass") if with_monai else ("medclass",)):
            r = res[side]
            if side == "monai":
                label, px = "MONAI ResNet-50", str(r["image_size"])
            else:
                label, px = medclass_label, f"{r['image_size']}" + (f" ({r['stem']})" if with_monai else "")
            lead = [f"{name} ({r['test_n']})", f"{rec['budget_min']:g} min"] if first else ["", ""]
            first = False
            rows.append(lead + [label, px, r["epochs_run"], ci(r["test_accuracy"], r["test_accuracy_ci95"]),
                                ci(r["test_balanced_accuracy"], r["test_balanced_accuracy_ci95"]),
                                ci(r["test_auroc"], r["test_auroc_ci95"]),
                                code(rel) if side == "monai" or not with_monai else ""])
            dep = r.get("as_deployed") or {}
            if side == "medclass" and dep.get("rule") not in (None, "argmax"):
                rows.append(["", "", f"medclass, as deployed ({RULES.get(dep['rule'], dep['rule'])})", px,
                             r["epochs_run"], ci(dep["test_accuracy"], dep["test_accuracy_ci95"]),
                             ci(dep["test_balanced_accuracy"], dep["test_balanced_accuracy_ci95"]),
                             ci(r["test_auroc"], r["test_auroc_ci95"]), ""])
    head = ["data (test n)", "budget", "side", "px (stem)" if with_monai else "px", "epochs", "accuracy [95 % CI]",
            "balanced accuracy", "AUROC", "source"]
    return table(head, rows)


BEFORE = [f"benchmarks/results/before-issue23/recipe_vs_monai-{n}.json"
          for n in ("brain-tumor-mri-yn", "breastmnist", "chest-ct", "all-leukemia", "chest-ct-dedupe",
                    "ham10000-subset")]


def before_issue23_table() -> list[str]:
    return _monai_vs_medclass(BEFORE, "medclass default")


def previous_default_table() -> list[str]:
    return _monai_vs_medclass([f"benchmarks/results/previous-default/recipe_vs_monai-{n}.json"
                               for n in ("brain-tumor-mri-yn", "breastmnist")], "medclass, earlier default",
                              with_monai=False)


def seed1_table() -> list[str]:
    return _monai_vs_medclass(["benchmarks/results/seed1/recipe_vs_monai-chest-ct.json"], "medclass default")


def subgroups_table() -> list[str]:
    rel = "results/clinical/ham10000-subset-lesion-and-subgroups.json"
    m = load(rel)

    def cells(label, n, d, with_ci=True):
        c = d.get("ci95") or {}
        if not with_ci:
            return [label, n] + [f3(d[k]) for k in ("accuracy", "balanced_accuracy", "auroc")]
        return [label, n] + [ci(d[k], c.get(k)) for k in ("accuracy", "balanced_accuracy", "auroc")]

    rows = [[ "image", f"{m['n']} images", ci_metric(m, "accuracy"), ci_metric(m, "balanced_accuracy"),
              ci_metric(m, "auroc")]]
    g = m["group_level"]
    rows.append([f"lesion (`lesion_id`, {g['aggregation']} of its images)", f"{g['n']} lesions",
                 ci_metric(g, "accuracy"), ci_metric(g, "balanced_accuracy"), ci_metric(g, "auroc")])
    for column in ("sex", "age"):
        sub = m["subgroups"][column]
        items = list(sub["subgroups"].items())
        if sub.get("bins"):  # numeric bins in their order, `unknown` last
            items.sort(key=lambda kv: (kv[0] == "unknown", float(kv[0].split("-")[0]) if kv[0] != "unknown" else 0))
        for value, d in items:
            small = d["too_small"]
            label = f"{column}: {value}" if column == "sex" else f"{column} {value}"
            if small:
                label += f" (flagged: under {sub['min_n']})"
            rows.append(cells(label, d["n"], d, with_ci=not small))
    return table(["level / subgroup", "n", "accuracy [95 % CI]", "balanced accuracy", "AUROC"], rows) + [
        "", sources([rel])]


CV = [("results/clinical/cv-brain.json", "results/clinical/single-split-brain.json",
       "brain-tumor-mri-yn (64 px, 30 epochs)"),
      ("results/clinical/cv-breast.json", "results/clinical/single-split-breast.json",
       "BreastMNIST (28 px, 30 epochs)"),
      ("results/clinical/cv-chest.json", "results/clinical/single-split-chest.json", "chest-ct (64 px, 20 epochs)")]


def cv_table() -> list[str]:
    rows = []
    keys = ("accuracy", "balanced_accuracy", "auroc")
    for cv_rel, single_rel, label in CV:
        cv, single = load(cv_rel), load(single_rel)
        spread = []
        for k in keys:
            vals = [f[k] for f in cv["folds"]]
            s = cv["fold_mean_std"][k]
            spread.append(f"{s['mean']:.3f} +- {s['std']:.3f} ({min(vals):.3f}-{max(vals):.3f})")
        rows.append([label, f"{cv['n_pool']} ({cv['n_groups']} groups)", *spread, code(cv_rel)])
        rows.append(["", "out-of-fold, pooled", *(ci_metric(cv["out_of_fold"], k) for k in keys), ""])
        e = cv["ensemble_test"]
        rows.append(["", f"test ({e['n']}): {cv['settings']['folds']}-fold ensemble",
                     *(ci_metric(e, k) for k in keys), ""])
        rows.append(["", f"test ({single['n']}): one model, the given split", *(ci_metric(single, k) for k in keys),
                     code(single_rel)])
    return table(["data (recipe)", "images", "accuracy", "balanced accuracy", "AUROC", "source"], rows)


OOD_VARIANTS = [("penultimate/quantile", "penultimate, 95 % quantile (version 1)"),
                ("stages-max/conformal", "stages, max, conformal"),
                ("stages-sum/conformal", "stages, sum, conformal"),
                ("stages+std-sum/conformal", "**stages+std, sum, conformal (default)**")]
OOD_NAMES = {"brain-tumor-mri-yn": "brain MRI", "breastmnist": "BreastMNIST"}


def ood_table() -> list[str]:
    rel = "benchmarks/results/ood.json"
    rec = load(rel)
    head = ["model (val / test images)"] + [label for _, label in OOD_VARIANTS]
    rows = [[""] + ["own / other modalities / blank"] + ["own / other / blank"] * (len(OOD_VARIANTS) - 1)]
    for run in rec["runs"]:
        data = re.sub(r"-\d{8}-\d{6}$", "", Path(run["run"]).parent.name)
        cells = [f"{OOD_NAMES.get(data, data)}, {run['image_size']} px ({run['n_valid']} / {run['n_test']})"]
        for key, _ in OOD_VARIANTS:
            v = run["variants"][key]
            cells.append(f"{v['own_test_flagged']:.3f} / {v['min_modality_flagged']:.3f} / "
                         f"{v['foreign']['blank']['flagged']:.2f}")
        rows.append(cells)
    return table(head, rows) + ["", sources([rel]) + " (all 14 variants, per foreign set and per layer; "
                                "the printed tables: `benchmarks/results/ood.log`)."]


# -- benchmarks.md -------------------------------------------------------------------------------

def _rate(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def throughput_table() -> list[str]:
    rel = "benchmarks/results/model_throughput.json"
    rec = load(rel)
    by = {(r["size"], r["mode"], r["model"]): r for r in rec["results"]}
    rows = []
    for size in rec["settings"]["sizes"]:
        for mode in ("train", "inference"):
            m, c, cl = (by[(size, mode, k)] for k in ("monai", "medclass", "medclass channels_last"))
            rows.append([f"{size} px", "training" if mode == "train" else mode, _rate(m["images_per_s_median"]),
                         f"{_rate(c['images_per_s_median'])} ({c['ratio_vs_monai']:.2f}x)",
                         f"{_rate(cl['images_per_s_median'])} ({cl['ratio_vs_monai']:.2f}x)"])
    head = ["size", "mode", "MONAI", "medclass, contiguous", "medclass, channels_last (`train` default from 64 px)"]
    params = rec["models"]["medclass"]["parameters"]
    return table(head, rows) + ["", f"Median img/s of {rec['settings']['rounds']} rounds, batch "
                                f"{rec['settings']['batch_size']}, both models {params:,} parameters. "
                                + sources([rel])]


def model_speed_table() -> list[str]:
    """Issue 23, point 5: training and inference img/s of each model and size, with the fraction of the
    machine's matmul rate (``benchmarks/model_throughput.py``, layout model_throughput/2)."""
    rel = "benchmarks/results/model_throughput_issue23.json"
    rec = load(rel)
    rows = []
    for e in rec["results"]:
        tr, inf = e.get("train") or {}, e.get("inference") or {}
        rows.append([e["model"], f"{e['size']} px", f"{e['parameters'] / 1e6:.1f} M",
                     f"{e['forward_flops_per_image'] / 1e9:.2f}",
                     _rate(tr["images_per_s_median"]) if tr else "-",
                     f"{100 * tr['fraction_of_matmul']:.1f} %" if tr else "-",
                     _rate(inf["images_per_s_median"]) if inf else "-",
                     f"{100 * inf['fraction_of_matmul']:.1f} %" if inf else "-"])
    c, s = rec["matmul_canary"], rec["settings"]
    head = ["model", "size", "parameters", "forward GFLOPs/image", "training img/s", "of matmul rate",
            "inference img/s", "of matmul rate"]
    return table(head, rows) + ["", f"Median of {s['rounds']} rounds x {s['steps']} steps, batch {s['batch_size']}, "
                                f"{rec['hardware']['cpu_model']} ({rec['hardware']['usable_cores']} cores), "
                                f"{s['dtype']}; FLOPs per image from a counted forward "
                                f"(`torch.utils.flop_counter.FlopCounterMode`, training = 3 x forward) over the "
                                f"matmul canary's mean {c['gflops_mean']:.1f} GFLOP/s ({c['gflops_start']:.1f} at "
                                f"the start, {c['gflops_end']:.1f} at the end). " + sources([rel])]


def _ms(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{n0(x)}"


def backends_table() -> list[str]:
    rel = "benchmarks/results/inference_backends.json"
    rec = load(rel)
    by = {(r["batch_size"], r["backend"]): r for r in rec["results"]}
    rows = []
    for b in rec["settings"]["batch_sizes"]:
        e, o = by[(b, "pytorch-eager")], by[(b, "onnxruntime-cpu")]
        rows.append([b, f"{_ms(e['latency_ms_median'])} ms ({e['images_per_s']:.1f} img/s)",
                     f"{_ms(o['latency_ms_median'])} ms ({o['images_per_s']:.1f} img/s)",
                     f"{o['speedup_vs_eager']:.1f}x"])
    worst = max(c["max_abs_prob_diff"] for c in rec["checks"])
    return table(["batch", "PyTorch eager", "ONNX Runtime", "speed-up"], rows) + [
        "", f"Largest probability difference {worst:.1e} (the script fails above {rec['tolerance_prob']:g}). "
        + sources([rel])]


PIPELINE_DATA = {"all-leukemia": "all-leukemia (224x224 JPEG)",
                 "chest-ct": "chest-ct (PNG, 168-1,200 px wide, mostly RGBA)"}
MIB = 2 ** 20


def pipeline_table() -> list[str]:
    rel = "benchmarks/results/input_pipeline.json"
    rec = load(rel)
    rows = []
    for name, d in rec["data"].items():
        mem = d["memory"]
        rows.append([PIPELINE_DATA.get(name, name), f"{d['images']:,}",
                     f"{n0(d['decode_resize_cache_write_img_s'])} img/s",
                     f"{n0(d['first_epoch_img_s'])} img/s", f"{n0(d['cached_epoch_img_s'])} img/s",
                     f"{d['cached_x_model']:.0f}x",
                     f"{n0(mem['224']['peak_rss_bytes'] / MIB)} MiB ({n0(mem['64']['peak_rss_bytes'] / MIB)})",
                     f"{n0(d['cache_bytes'] / MIB)} MiB"])
    head = ["data", "images", "decode+resize", "first epoch", "cached epoch", "cached / model",
            f"peak RSS at {rec['size']} px (64 px)", "cache"]
    return table(head, rows) + ["", f"The model consumes {rec['model_train_img_s']:.1f} img/s (batch "
                                f"{rec['model_batch']}). " + sources([rel])]


def quantize_table() -> list[str]:
    rel = "benchmarks/results/quantize_int8_chest-ct.json"
    res = load(rel)["results"]
    ips = res["images_per_second"]
    rows = []
    for split in ("valid", "test"):
        a = res["accuracy"][split]
        diff = (a["int8"] - a["fp32"]) * 100
        int8 = f"{a['int8']:.4f}" + (f" ({diff:+.2f} points)" if abs(diff) >= 0.005 else "")
        speed = (f"FP32 {n0(ips['fp32'])}, INT8 {n0(ips['int8'])} (**{res['speedup']:.1f}x**)"
                 if split == ips["split"] else "")
        rows.append([f"{split} ({a['n']})", f"{a['fp32']:.4f}", int8, speed])
    sizes = res["file_sizes"]
    return table(["split (n)", "FP32 accuracy", "INT8 accuracy", "images/s, batch 32"], rows) + [
        "", f"File size {sizes['fp32_mib']} MiB (FP32) and {sizes['int8_mib']} MiB (INT8). " + sources([rel])]


SERVE = [("torch", "torch"), ("onnx-fp32", "ONNX FP32"), ("onnx-int8", "ONNX INT8")]


def serve_load_table() -> list[str]:
    rows = []
    for key, label in SERVE:
        for clients in (8, 32, 64):
            for batch, on in ((1, "off"), (8, "on")):
                rel = f"benchmarks/results/serve_load/{key}-batch{batch}-c{clients}.json"
                r = load(rel)
                rows.append([label, on, r["clients"], f"{r['requests']:,}", r["errors"],
                             f"{r['requests_per_second']:.1f}",
                             f"{n0(r['latency_ms']['p50'])}", f"{n0(r['latency_ms']['p99'])}",
                             f"{n0(r['server_peak_rss_mib'])}"])
    head = ["backend", "batching", "clients", "requests", "errors", "req/s", "p50 ms", "p99 ms", "server peak RSS MiB"]
    return table(head, rows) + ["", ("Source: `benchmarks/results/serve_load/{torch,onnx-fp32,onnx-int8}-batch{1,8}"
                                "-c{8,32,64}.json` (batching off: `--max-batch 1`; on: `--max-batch 8`).")]


def bombs_table() -> list[str]:
    rows, paths = [], []
    for key, label in (("torch", "torch"), ("onnx", "ONNX")):
        rel = f"benchmarks/results/serve_load/bombs40-{key}.json"
        r = load(rel)
        c = r["server_counters"]
        rows.append([label, r["requests"], f"{r['bombs']['side']:,} x {r['bombs']['side']:,}", r["completed"],
                     r["errors"], c["failed"], c["rejected"], f"{n0(r['server_peak_rss_mib'])}"])
        paths.append(rel)
    head = ["backend", "uploads at once", "16-bit PNG, px", "answered", "errors", "failed (500)", "rejected",
            "server peak RSS MiB"]
    return table(head, rows) + ["", sources(paths)]


TABLES: dict[str, Callable[[], list[str]]] = {
    "runs": runs_table, "chest-ct-compare": compare_table,
    "chest-ct-compare-lite0": lambda: compare_table("results/chest-ct-compare-lite0"), "leakage": leakage_table,
    "ablation-budget": budget_table, "ablation-size": size_table, "ablation-techniques": techniques_table,
    "ablation-intensity": intensity_table, "intensity-auto": intensity_auto_table, "ablation-pad": pad_table,
    "ablation-crop": crop_table, "ablation-jitter": jitter_table, "three-sides": three_sides_table,
    "before-issue23": before_issue23_table, "previous-default": previous_default_table, "seed1": seed1_table,
    "subgroups": subgroups_table, "cv": cv_table, "ood": ood_table,
    "model-throughput": throughput_table, "model-speed": model_speed_table, "inference-backends": backends_table, "input-pipeline": pipeline_table,
    "quantize-int8": quantize_table, "serve-load": serve_load_table, "serve-bombs": bombs_table,
    "readme-three-sides": readme_three_sides_table,
}
PAGES = ("docs/results.md", "docs/benchmarks.md", "README.md")


def render(text: str, page: str, used: set[str]) -> str:
    """``text`` with every generated block replaced by the table made now."""
    out, pos = [], 0
    for m in BEGIN.finditer(text):
        name = m.group("name")
        if name not in TABLES:
            raise KeyError(f"{page}: marker for an unknown table {name!r} (known: {', '.join(TABLES)})")
        end = text.find(END.format(name=name), m.end())
        if end < 0:
            raise KeyError(f"{page}: no end marker for {name!r}")
        out.append(text[pos:m.end()])
        out.append("\n".join(TABLES[name]()) + "\n")
        pos = end
        used.add(name)
    out.append(text[pos:])
    return "".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a page differs from what would be written")
    args = ap.parse_args(argv)
    used: set[str] = set()
    stale = []
    try:
        for page in PAGES:
            path = ROOT / page
            old = path.read_text()
            new = render(old, page, used)
            if new == old:
                continue
            if args.check:
                stale.append(page)
                sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                           f"{page} (committed)", f"{page} (generated)"))
            else:
                path.write_text(new)
                print(f"wrote {page}")
        missing = sorted(set(TABLES) - used)
        if missing:
            raise KeyError(f"no page has a marker for: {', '.join(missing)}")
    except (KeyError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if stale:
        print(f"\n{', '.join(stale)}: out of date; run `python scripts/docs_results.py` and commit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
