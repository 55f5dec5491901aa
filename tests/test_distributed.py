"""DDP through torchrun: 2 gloo processes reach the weights of 1 process with the same global
batch and seed; only rank 0 writes; the sampler's shards make up the single-process batches."""

import os
import subprocess
import sys

import pytest
import torch

from medclass.engine import load_checkpoint
from medclass.engine.distributed import ShardedSampler, all_gather_rows, DistContext

from helpers import make_folder_dataset


def _dataset(root, per_class=24, size=16):
    return make_folder_dataset(root, size=size, splits={"train": per_class, "valid": 7, "test": 4}, seed=1,
                               levels=(60, 180), noise=30, stripe=4, name="{i}.png")


def test_sharded_sampler_steps_match_single_process_batches():
    n, batch, world = 37, 8, 2
    single = list(ShardedSampler(n, torch.Generator().manual_seed(5)))
    shards = [list(ShardedSampler(n, torch.Generator().manual_seed(5), r, world)) for r in range(world)]
    local = batch // world
    for step in range(n // batch):
        joint = sorted(i for s in shards for i in s[step * local : (step + 1) * local])
        assert joint == sorted(single[step * batch : (step + 1) * batch])
    assert len(shards[0]) == len(shards[1]) == n // world
    assert set(shards[0]).isdisjoint(shards[1])


def test_all_gather_rows_is_identity_in_a_world_of_one():
    t = torch.randn(5, 3)
    assert torch.equal(all_gather_rows(t, torch.arange(5), 5, DistContext()), t)


def _train_cmd(data, runs, name, launcher):
    return launcher + [
        "-m", "medclass", "train", str(data), "--name", name, "--runs-dir", str(runs), "--no-eval",
        "--epochs", "2", "--batch-size", "8", "--image-size", "16", "--arch", "resnet18",
        "--set", "model.stem=small", "--set", "data.augment=false", "--set", "train.optimizer=sgd",
        "--set", "train.lr=0.05", "--set", "train.sync_bn=true", "--set", "train.device=cpu",
        "--set", "train.warmup_epochs=0",
    ]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    data = _dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    one = subprocess.run(_train_cmd(data, runs, "one", [sys.executable]), env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run(_train_cmd(data, runs, "two", torchrun), env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, (two.stdout[-3000:], two.stderr[-3000:])
    assert "x 2 processes (DDP, global batch 8)" in two.stdout

    a = load_checkpoint(runs / "one" / "checkpoints" / "last.pt")
    b = load_checkpoint(runs / "two" / "checkpoints" / "last.pt")
    assert a["model"].keys() == b["model"].keys()  # SyncBN leaves the state dict keys as they were
    moved = 0
    for k, va in a["model"].items():
        vb = b["model"][k]
        if va.is_floating_point():
            torch.testing.assert_close(vb, va, atol=2e-4, rtol=1e-3, msg=lambda m: f"{k}: {m}")
            moved += 1
        else:
            assert torch.equal(va, vb), k
    assert moved > 50
    # metrics are reduced across ranks: the same loss and validation figures, logged once
    for ra, rb in zip(a["history"], b["history"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-3), key
    rows = (runs / "two" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + 2 epochs: one writer
    assert two.stdout.count("epoch   1/2") == 1  # only rank 0 prints
    # the weights moved away from the start: the comparison is not of two untouched models
    assert a["history"][-1]["loss"] != a["history"][0]["loss"]
