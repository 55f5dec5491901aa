"""The learning-rate range test (medclass.engine.lr_find, `medclass lr-find`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from helpers import make_folder_dataset, tiny_config
from medclass.cli.app import app
from medclass.engine import lr_find as L


def _blob_step(seed: int = 0):
    """One AdamW step of a small MLP on 4 Gaussian blobs (batch 32) at a given LR: a problem whose
    good Adam learning rates are known to lie around 1e-3..1e-2."""
    torch.manual_seed(seed)
    n, d, k = 2048, 20, 4
    y = torch.randint(0, k, (n,))
    x = torch.randn(k, d)[y] + torch.randn(n, d)
    net = nn.Sequential(nn.Linear(d, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                        nn.ReLU(), nn.Linear(64, k))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)

    def step(lr: float) -> float:
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (32,), generator=gen)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _least_squares_step(seed: int = 0):
    """One SGD step of least squares with standard-normal inputs (Hessian ~ identity): it
    diverges once the LR passes about 2."""
    torch.manual_seed(seed)
    n, d = 512, 10
    x = torch.randn(n, d)
    y = x @ torch.randn(d) + 0.1 * torch.randn(n)
    w = torch.zeros(d, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0)
    gen = torch.Generator().manual_seed(seed)

    def step(lr: float) -> float:
        opt.param_groups[0]["lr"] = lr
        idx = torch.randint(0, n, (64,), generator=gen)
        loss = 0.5 * ((x[idx] @ w - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def test_schedule_and_smoothing():
    lrs = L.exponential_lrs(1e-7, 10, 100)
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(10)
    assert np.allclose(np.diff(np.log(lrs)), np.log(1e8) / 99)  # geometric
    s = L.smooth_losses([2.0, 2.0, 2.0])
    assert np.allclose(s, 2.0)  # bias correction: no pull towards 0 at the start
    s = L.smooth_losses([1.0, 3.0], beta=0.5)
    assert s[0] == 1.0 and s[1] == pytest.approx((0.25 + 1.5) / 0.75)
    for bad in ((0, 1, 10), (1e-3, 1e-4, 10), (1e-7, 10, 1)):
        with pytest.raises(ValueError):
            L.exponential_lrs(*bad)
    with pytest.raises(ValueError, match="beta"):
        L.range_test(lambda lr: 1.0, beta=1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suggestions_lie_in_a_sensible_range(seed):
    lrs, losses, smoothed, stopped = L.range_test(_blob_step(seed))
    assert stopped in ("diverged", "completed") and len(lrs) >= 90
    assert smoothed == pytest.approx(list(L.smooth_losses(losses)))
    sug = L.suggest_lrs(lrs, smoothed, 100)
    for name in L.SUGGESTIONS:
        assert 1e-4 <= sug[name] <= 0.1, (name, sug)
    # the suggestion sits where the loss is still falling: below the LR of the lowest smoothed loss
    assert sug["steep"] < lrs[int(np.argmin(smoothed))]


def test_sweep_stops_on_divergence():
    lrs, losses, smoothed, stopped = L.range_test(_least_squares_step())
    assert stopped == "diverged"
    assert len(lrs) < 100 and lrs[-1] < 10
    assert 0.5 < lrs[-1]  # SGD on this problem diverges only past an LR of about 1..2
    assert smoothed[-1] > 4 * min(smoothed) and all(s <= 4 * min(smoothed[: i + 1]) for i, s in enumerate(smoothed[:-1]))


def test_sweep_stops_on_a_non_finite_loss():
    lrs, losses, smoothed, stopped = L.range_test(lambda lr: 1.0 if lr < 1e-3 else float("nan"), num_iter=50)
    assert stopped == "non-finite"
    assert lrs and max(lrs) < 1e-3 and all(math.isfinite(v) for v in losses + smoothed)


def test_suggestion_rules_on_a_drawn_curve():
    lrs = list(L.exponential_lrs(1e-5, 1, 11))  # one decade per two points
    curve = [1.0, 1.0, 0.99, 0.9, 0.5, 0.45, 0.44, 0.43, 0.6, 1.5, 3.0]
    assert L.suggest_steep(lrs, curve) == pytest.approx(lrs[3])  # 0.9 -> 0.5: the steepest fall
    assert L.suggest_minimum(lrs, curve) == pytest.approx(lrs[7] / 10)
    valley = L.suggest_valley(lrs, curve)
    assert lrs[1] <= valley <= lrs[7]
    assert L.suggest_steep(lrs, sorted(curve)) is None  # never falls
    assert L.suggest_steep(lrs[:1], curve[:1]) is None and L.suggest_minimum([], []) is None


def _result(**kw) -> L.LRFindResult:
    lrs = list(L.exponential_lrs(1e-6, 1, 40))
    losses = [1.0 - 0.5 * math.tanh(math.log10(lr) + 3) for lr in lrs]
    smoothed = list(L.smooth_losses(losses))
    sug = L.suggest_lrs(lrs, smoothed, 40)
    fields = dict(lrs=lrs, losses=losses, smoothed=smoothed, stopped="completed", suggestions=sug,
                  suggested_by="steep", suggested_lr=sug["steep"], start_lr=1e-6, end_lr=1.0, num_iter=40,
                  beta=0.98, stop_div=4.0)
    fields.update(kw)
    return L.LRFindResult(**fields)


def test_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    result = _result()
    json_path, png_path = L.write_lr_find(result, tmp_path / "out")
    saved = json.loads(json_path.read_text())
    assert saved["suggested_lr"] == result.suggested_lr and saved["lrs"] == result.lrs
    assert set(saved["suggestions"]) == set(L.SUGGESTIONS) and saved["suggested_by"] == "steep"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = png_path.read_bytes()

    import matplotlib.figure

    def broken_savefig(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        L.write_lr_find(_result(stopped="diverged"), tmp_path / "out")
    assert png_path.read_bytes() == before  # the old plot is intact
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lr_find.json", "lr_find.png"]  # no temp file


def test_default_out_dir(tmp_path):
    cfg = tiny_config(tmp_path / "my-data")
    out = L.default_out_dir(cfg, tmp_path / "runs", now=0)
    assert out.parent == tmp_path / "runs" and out.name.startswith("lr-find-my-data-")


def test_cli_on_a_tiny_folder(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=16, size=20)
    out = tmp_path / "lrf"
    result = CliRunner().invoke(app, [
        "lr-find", str(data), "--image-size", "16", "--arch", "resnet18", "--batch-size", "8",
        "--set", "model.stem=small", "--set", "train.lr=0.5", "--num-iter", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").stat().st_size > 0
    assert 1 < len(saved["lrs"]) <= 20 and saved["stopped"] in ("completed", "diverged", "non-finite")
    assert saved["settings"]["image_size"] == 16 and saved["settings"]["arch"] == "resnet18"
    lr = saved["suggested_lr"]
    assert lr is not None and saved["start_lr"] <= lr <= saved["end_lr"]
    assert f"suggested learning rate: {lr:.1e} (valley)" in result.output
    command = next(line for line in result.output.splitlines() if line.startswith("train with it:"))
    assert command.endswith(f"--lr {lr:.1e}") and "--set model.stem=small" in command
    assert "train.lr" not in command  # --lr replaces it


def test_cli_bad_setting_is_one_error_line(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=4, size=16)
    result = CliRunner().invoke(app, ["lr-find", str(data), "--suggest", "median", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "suggest_by must be one of steep, valley, minimum" in result.output
    assert not (tmp_path / "o").exists()


def test_lr_find_needs_a_pixel_size(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.data.image_size = "big"
    with pytest.raises(ValueError, match="image_size"):
        L.lr_find(cfg, None)


def test_lr_find_uses_the_training_step_of_the_recipe(tmp_path, monkeypatch):
    """Mixup's soft targets reach the loss and the gradients are clipped, as in `medclass train`."""
    data = make_folder_dataset(tmp_path / "data", per_class=8, size=16)
    cfg = tiny_config(data)
    cfg.train.mixup_alpha, cfg.train.clip_grad_norm = 0.4, 0.5
    seen, norms = [], []
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *a, **kw):
        norms.append(max_norm)
        return real_clip(params, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    import medclass.engine.fit as fit_module

    real_loss = fit_module.make_loss

    def make_loss(*a, **kw):
        loss = real_loss(*a, **kw)
        forward = loss.forward
        loss.forward = lambda logits, target: (seen.append(target.dtype), forward(logits, target))[1]
        return loss

    monkeypatch.setattr(fit_module, "make_loss", make_loss)
    result = L.lr_find(cfg, None, num_iter=6, log=lambda m: None)
    assert len(result.lrs) >= 1 and set(seen) == {torch.float32} and norms == [0.5] * len(seen)
    assert result.settings["mixup_alpha"] == 0.4
