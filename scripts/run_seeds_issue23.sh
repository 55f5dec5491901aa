#!/usr/bin/env bash
# Issue 23, point 4: the seeds re-made with real ImageNet weights (EfficientNet-Lite0 in place of the
# ResNet-50 whose weights cannot be had offline). Each run goes through scripts/run_results.sh into results/<id>/.
# Seed 003 (chest-ct): custom CNN, the pretrained network, a chained model on it, their ensembles, the comparison.
# Seed 002 (all-leukemia): pretrained backbone + GAP + BatchNorm + Dense head, Adam 1e-4 with exponential decay
# 0.96 every 40 steps (Keras ExponentialDecay), as the seed's notebook.
# Usage (repository root, venv active): bash scripts/run_seeds_issue23.sh
set -euo pipefail
E=${EPOCHS:-30}
S=${SIZE:-128}
R=scripts/run_results.sh
$R chest-ct-$S-cnn medclass train ../shared/data/chest-ct --image-size $S --epochs $E --arch custom_cnn --name chest-ct-$S-cnn
$R chest-ct-$S-lite0 medclass train ../shared/data/chest-ct --image-size $S --epochs $E --arch efficientnet_lite0 \
    --pretrained imagenet --lr 3e-4 --name chest-ct-$S-lite0
$R chest-ct-$S-chained-lite0 medclass train ../shared/data/chest-ct --image-size $S --epochs $E --arch chained \
    --set model.chain_base=efficientnet_lite0 --set model.chain_stage=3 --set model.cnn_widths=[256,256] \
    --pretrained imagenet --lr 3e-4 --name chest-ct-$S-chained-lite0
medclass ensemble runs/chest-ct-$S-cnn runs/chest-ct-$S-lite0 runs/chest-ct-$S-chained-lite0 \
    --name chest-ct-$S-ensemble-lite0 --weights auto
medclass ensemble runs/chest-ct-$S-cnn runs/chest-ct-$S-lite0 runs/chest-ct-$S-chained-lite0 \
    --name chest-ct-$S-ensemble-lite0-equal --weights equal
medclass compare runs/chest-ct-$S-cnn runs/chest-ct-$S-lite0 runs/chest-ct-$S-chained-lite0 \
    runs/chest-ct-$S-ensemble-lite0 runs/chest-ct-$S-ensemble-lite0-equal --out results/chest-ct-compare-lite0
$R all-leukemia-$S-seed002-lite0 medclass train ../shared/data/all-leukemia --image-size $S --epochs $E \
    --arch efficientnet_lite0 --pretrained imagenet --set model.head_kind=bn --set train.optimizer=adam \
    --lr 1e-4 --set train.weight_decay=0 --set train.schedule=exponential --set train.decay_steps=40 \
    --set train.decay_rate=0.96 --set train.warmup_epochs=0 --name all-leukemia-$S-seed002-lite0
