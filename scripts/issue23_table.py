#!/usr/bin/env python
"""The README's three-way table (issue 23) from the committed JSON of ``benchmarks/run_issue23.sh``:
one row per side and set, test figures with their bootstrap 95 % intervals, the seconds each side trained (reading the images
and the epochs with validation), plus medclass's "as deployed" row where its decision rule is not
the arg-max, and the share of the cores busy during each side.

    python scripts/issue23_table.py benchmarks/results/recipe_vs_monai-{chest-ct,breastmnist}.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = {"monai": "(a) MONAI ResNet-50, scratch", "finetune": "(b) plain Lite0 fine-tune",
          "medclass": "(c) medclass default"}


def _ci(value, ci) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def rows(path: Path) -> list[list[str]]:
    record = json.loads(path.read_text())
    name = path.stem.replace("recipe_vs_monai-", "")
    out = []
    for side in ("monai", "finetune", "medclass"):
        r = record["results"].get(side)
        if not r:
            continue
        arch = r.get("model") or ""
        arch = {"monai": "ResNet-50", "finetune": "Lite0 (reference)"}.get(side, arch)
        load = (r.get("machine_during_run") or {}).get("machine_busy_fraction")
        taken = " (earlier run)" if r.get("taken_from") else ""
        cells = [f"{name} ({r.get('test_n')})", f"{record['budget_min']:g} min", LABELS[side] + taken,
                 f"{arch} {r.get('image_size')} px", str(r.get("epochs_run")),
                 f"{r['train_s']:.0f}" if isinstance(r.get("train_s"), (int, float)) else "-",
                 _ci(r.get("test_accuracy"), r.get("test_accuracy_ci95")),
                 _ci(r.get("test_balanced_accuracy"), r.get("test_balanced_accuracy_ci95")),
                 _ci(r.get("test_auroc"), r.get("test_auroc_ci95")),
                 f"{load:.2f}" if isinstance(load, (int, float)) else "-"]
        out.append(cells)
        dep = r.get("as_deployed")
        if side == "medclass" and dep and dep.get("rule") not in (None, "argmax"):
            out.append(["", "", f"(c) as deployed ({dep['rule']})", "", "", "",
                        _ci(dep.get("test_accuracy"), dep.get("test_accuracy_ci95")),
                        _ci(dep.get("test_balanced_accuracy"), dep.get("test_balanced_accuracy_ci95")),
                        _ci(r.get("test_auroc"), r.get("test_auroc_ci95")), ""])
    return out


def main(paths: list[str]) -> int:
    head = ["data (test n)", "budget", "side", "model, px", "epochs", "training s", "accuracy [95 % CI]",
            "balanced accuracy", "AUROC", "cores busy"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for p in paths:
        for r in rows(Path(p)):
            print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
