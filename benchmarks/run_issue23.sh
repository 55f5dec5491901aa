#!/usr/bin/env bash
# Issue 23's three-way comparison at equal wall-clock, one run after the other with nothing else running:
# (a) MONAI ResNet-50 from scratch (taken from the runs before issue 23 on byte-identical splits: the MONAI
# script did not change), (b) the plain EfficientNet-Lite0 ImageNet fine-tune, (c) `medclass train
# --time-budget` with its default (model.arch auto: the pretrained EfficientNet-Lite0).
# Usage (repository root, venv active): bash benchmarks/run_issue23.sh [SET ...]   (default: all, in order)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
B=benchmarks/results/before-issue23
run() {  # name, then recipe_vs_monai arguments
    local name=$1; shift
    echo "=== $name $(date -u +%FT%TZ)"
    $PY benchmarks/recipe_vs_monai.py "$@" > "benchmarks/results/recipe_vs_monai-$name.log" 2>&1
    echo "=== $name exit $? $(date -u +%FT%TZ)"
}
sets=${*:-chest-ct breastmnist brain-tumor-mri-yn all-leukemia ham10000-subset}
for s in $sets; do
    case $s in
        chest-ct) run chest-ct ../shared/data/chest-ct --budget 15 --monai-from $B/recipe_vs_monai-chest-ct.json ;;
        breastmnist) run breastmnist ../shared/data/breastmnist/breastmnist.npz --budget 10 \
            --monai-from $B/recipe_vs_monai-breastmnist.json ;;
        brain-tumor-mri-yn) run brain-tumor-mri-yn ../shared/data/brain-tumor-mri-yn --budget 5 \
            --monai-from $B/recipe_vs_monai-brain-tumor-mri-yn.json ;;
        all-leukemia) run all-leukemia ../shared/data/all-leukemia --budget 15 \
            --monai-from $B/recipe_vs_monai-all-leukemia.json ;;
        ham10000-subset) run ham10000-subset ../shared/data/ham10000-subset/HAM10000_metadata.csv --budget 15 \
            --skip-corrupt --monai-from $B/recipe_vs_monai-ham10000-subset.json ;;
        chest-ct-dedupe) run chest-ct-dedupe ../shared/data/chest-ct --budget 15 --dedupe \
            --monai-from $B/recipe_vs_monai-chest-ct-dedupe.json ;;
        *) echo "unknown set $s"; exit 2 ;;
    esac
done
