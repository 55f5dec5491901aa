"""The training recipe of issue 12: EMA of the weights, mixup/CutMix with soft targets,
RandAugment/TrivialAugment and random erasing, stochastic depth, gradient clipping and progressive
resizing; each off by default, each checked on its own and in a tiny run, with exact resume."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medclass.core.config import ConfigError, DataConfig, ModelConfig, RunConfig, check_recipe
from medclass.data.transforms import Preprocess, build_augmentation, progressive_size, resize_batch
from medclass.engine import load_checkpoint, train
from medclass.engine import trainer as trainer_module
from medclass.engine.ema import ModelEma, ema_decay_at
from medclass.engine.mixup import Mixup, build_mixup, cutmix_box, dominant_labels, soft_targets
from medclass.engine import fit as fit_module
from medclass.engine.fit import Fit, SoftTargetCE, _BCEOneLogit, make_loss
from medclass.engine.trainer import validate
from medclass.models import build_model
from medclass.models.resnet import DropPath, resnet18, resnet50

from helpers import make_folder_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("recipe") / "data")


# --------------------------------------------------------------------------- config


def test_recipe_keys_are_off_by_default_and_checked():
    cfg = RunConfig()
    assert (cfg.train.ema, cfg.train.mixup_alpha, cfg.train.cutmix_alpha, cfg.train.clip_grad_norm,
            cfg.train.progressive_resize, cfg.data.auto_augment, cfg.data.random_erasing,
            cfg.model.drop_path_rate) == (False, 0.0, 0.0, None, None, "none", 0.0, 0.0)
    check_recipe(cfg)
    cfg.set("train.clip_grad_norm", "1.0")
    cfg.set("train.progressive_resize", "0.5")
    cfg.set("data.auto_augment", "trivialaugment")
    assert (cfg.train.clip_grad_norm, cfg.train.progressive_resize) == (1.0, 0.5)
    for key, bad in [("train.ema_decay", "1.5"), ("train.mixup_alpha", "-1"), ("train.mix_prob", "2"),
                     ("train.clip_grad_norm", "0"), ("train.progressive_resize", "1.5"),
                     ("data.auto_augment", "autoaugment"), ("data.randaugment_m", "30"),
                     ("data.random_erasing", "1.2"), ("model.drop_path_rate", "1")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            cfg.set(key, bad)
    cfg.train.ema_decay = 0  # set in Python: train() checks before any work
    with pytest.raises(ConfigError, match=r"train\.ema_decay"):
        check_recipe(cfg)


def test_defaults_keep_the_augmentation_and_loss_of_before():
    import kornia.augmentation as K

    assert isinstance(build_augmentation(DataConfig(image_size=16)), K.AugmentationSequential)
    cfg = RunConfig()
    cfg.train.label_smoothing = 0.1
    cfg.data.class_balance = "loss"
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    loss = make_loss(cfg, labels, 3)
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    ref = nn.CrossEntropyLoss(weight=loss.weight, label_smoothing=0.1)
    assert torch.equal(loss(logits, target), ref(logits, target))


# --------------------------------------------------------------------------- EMA


def test_ema_decay_warmup_follows_timm_model_ema_v3():
    assert ema_decay_at(1, 0.999) == 0.0  # the first update copies
    assert ema_decay_at(2, 0.999) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema_decay_at(101, 0.999) == pytest.approx(1 - 101 ** (-2 / 3))
    assert ema_decay_at(10**7, 0.999) == 0.999  # capped at the decay
    assert ema_decay_at(1, 0.9, warmup=False) == 0.0 and ema_decay_at(2, 0.9, warmup=False) == 0.9
    decays = [ema_decay_at(t, 0.999) for t in range(1, 2000)]
    assert decays == sorted(decays)


def test_ema_update_averages_floats_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEma(model, decay=0.9, warmup=False)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(8, 3))  # batch norm statistics and num_batches_tracked move
    ema.update(model)  # update 1: a copy
    for k, v in model.state_dict().items():
        assert torch.equal(ema.module.state_dict()[k], v), k
    snapshot = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    model(torch.randn(8, 3))
    ema.update(model)  # update 2: decay 0.9
    for k, v in model.state_dict().items():
        e = ema.module.state_dict()[k]
        if v.is_floating_point():
            assert torch.allclose(e, 0.9 * snapshot[k] + 0.1 * v, atol=1e-6), k
        else:
            assert torch.equal(e, v), k
    assert ema.updates == 2 and before.keys() == snapshot.keys()
    # state round trip
    other = ModelEma(model, decay=0.9, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 2
    for k, v in ema.module.state_dict().items():
        assert torch.equal(other.module.state_dict()[k], v)
    with pytest.raises(ValueError, match=r"train\.ema_decay"):
        ModelEma(model, decay=1.0)


def test_validation_scores_the_ema_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    ema = ModelEma(model, 0.99)
    with torch.no_grad():
        model[1].weight[0].add_(5.0)  # the raw weights move away from the average
    fit = Fit(model=model, net=model, criterion=nn.CrossEntropyLoss(), optimizer=None, schedule=None,
               preprocess=Preprocess(), augment=None, device=torch.device("cpu"), amp_dtype=None,
               channels_last=False, ema=ema)
    images = torch.randint(0, 256, (10, 3, 2, 2), dtype=torch.uint8)
    labels = torch.randint(0, 2, (10,))
    ctx = trainer_module.DistContext()
    val_loss, _, _ = validate(fit, images, torch.arange(10), labels, ctx, 4)
    x = images.float() / 255
    assert val_loss == pytest.approx(F.cross_entropy(ema.module(x), labels).item(), rel=1e-5)
    assert val_loss != pytest.approx(F.cross_entropy(model(x), labels).item(), rel=1e-3)


def test_best_checkpoint_holds_the_ema_weights(data, tmp_path):
    cfg = tiny_config(data, epochs=1, ema=True, ema_decay=0.99)
    result = train(cfg, tmp_path / "run")
    best, last = load_checkpoint(result.files.best), load_checkpoint(result.files.last)
    assert best["weights"] == "ema" and last["ema"]["updates"] == 3  # 12 train images, batch 4
    assert best["model"].keys() == last["model"].keys() == last["ema"]["module"].keys()
    for k, v in best["model"].items():
        assert torch.equal(v, last["ema"]["module"][k]), k
    assert any(not torch.equal(v, last["model"][k]) for k, v in best["model"].items() if v.is_floating_point())
    from medclass.engine import load_run

    loaded = load_run(result.files.root)  # evaluate/export/serve read best.pt as it is
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, best["model"][k]), k


def _crash_after_epoch(monkeypatch, n):
    real_write = trainer_module.write_metrics_csv

    def crash(history, path):
        real_write(history, path)
        if len(history) == n:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(trainer_module, "write_metrics_csv", crash)
    return real_write


def _everything_on(cfg):
    t = cfg.train
    t.ema, t.ema_decay = True, 0.9
    t.mixup_alpha, t.cutmix_alpha, t.mix_prob = 0.4, 1.0, 0.9
    t.clip_grad_norm = 1.0
    t.progressive_resize = 0.5
    t.label_smoothing = 0.1
    cfg.data.auto_augment = "randaugment"
    cfg.data.random_erasing = 0.5
    cfg.model.drop_path_rate = 0.2
    return cfg


def test_resume_with_the_whole_recipe_equals_an_uninterrupted_run(data, tmp_path, monkeypatch):
    straight = train(_everything_on(tiny_config(data, epochs=3)), tmp_path / "straight")
    real_write = _crash_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(_everything_on(tiny_config(data, epochs=3)), tmp_path / "resumed")
    monkeypatch.setattr(trainer_module, "write_metrics_csv", real_write)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 2

    cfg = RunConfig.load(tmp_path / "resumed" / "config.yaml")
    assert cfg.train.ema and cfg.data.auto_augment == "randaugment" and cfg.model.drop_path_rate == 0.2
    resumed = train(cfg, tmp_path / "resumed", resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history, resumed.history):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    sa, sb = load_checkpoint(straight.files.last), load_checkpoint(resumed.files.last)
    assert sa["ema"]["updates"] == sb["ema"]["updates"] == 9
    for part in ("model", "ema"):
        a = sa[part] if part == "model" else sa[part]["module"]
        b = sb[part] if part == "model" else sb[part]["module"]
        for k, v in a.items():
            assert torch.allclose(v.float(), b[k].float(), atol=1e-5), (part, k)
    ba, bb = load_checkpoint(straight.files.best), load_checkpoint(resumed.files.best)
    assert ba["epoch"] == bb["epoch"]


# --------------------------------------------------------------------------- mixup / CutMix


def test_soft_targets_sum_to_one_and_mix_the_partner():
    labels = torch.tensor([0, 2, 1, 1])
    t = soft_targets(labels, 3, lam=0.7, smoothing=0.1)
    assert t.shape == (4, 3) and t.dtype == torch.float32
    assert torch.allclose(t.sum(1), torch.ones(4))
    on, off = 1 - 0.1 + 0.1 / 3, 0.1 / 3
    one_hot = torch.full((4, 3), off).scatter_(1, labels.view(-1, 1), on)
    assert torch.allclose(t, 0.7 * one_hot + 0.3 * one_hot.flip(0))
    single = soft_targets(torch.tensor([1, 0, 0]), 1, lam=0.8, smoothing=0.2)
    assert single.shape == (3,)
    assert torch.allclose(single, torch.tensor([0.8 * 0.8 + 0.1, 0.1, 0.2 * 0.8 + 0.1]))


def test_mixup_mixes_images_and_targets_with_the_same_lam():
    torch.manual_seed(0)
    mix = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, mix_prob=1.0, num_outputs=3)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    out = mix(x, y)
    assert out.kind == "mixup" and out.images.shape == x.shape and out.targets.shape == (6, 3)
    assert torch.allclose(out.images, out.lam * x + (1 - out.lam) * x.flip(0))
    assert torch.allclose(out.targets, soft_targets(y, 3, out.lam))
    assert torch.allclose(out.targets.sum(1), torch.ones(6))
    assert torch.equal(dominant_labels(y, 0.7), y) and torch.equal(dominant_labels(y, 0.3), y.flip(0))


def test_mixup_lam_is_drawn_from_beta_alpha_alpha():
    from scipy import stats

    torch.manual_seed(1)
    mix = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, mix_prob=1.0, num_outputs=2)
    lams = [mix.draw()[0] for _ in range(2000)]
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > 0.01
    assert stats.kstest(lams, stats.beta(1.0, 1.0).cdf).pvalue < 1e-6  # not just any distribution


def test_cutmix_lam_is_the_pasted_area_corrected_to_the_box():
    torch.manual_seed(0)
    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mix_prob=1.0, num_outputs=4)
    n, h, w = 4, 10, 14
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()
    y = torch.tensor([0, 1, 2, 3])
    seen_clipped = False
    for _ in range(30):
        out = mix(x, y)
        assert out.kind == "cutmix"
        pasted = (out.images[0, 0] == n - 1).float().mean().item()  # image 0's partner is image n-1
        assert pasted == pytest.approx(1 - out.lam)
        assert torch.allclose(out.targets, soft_targets(y, 4, out.lam))
        assert torch.equal(x[:, :, 0, 0], torch.arange(n, dtype=torch.float32).view(n, 1).expand(n, 3))  # input kept
    # the correction: a box clipped at the border pastes less than 1 - lam of the draw
    for _ in range(200):
        torch.manual_seed(_)
        (y0, y1, x0, x1), lam = cutmix_box(h, w, 0.3)
        assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (h * w))
        seen_clipped |= lam > 0.3 + 0.05
    assert seen_clipped


def test_mix_prob_and_the_switch_between_mixup_and_cutmix():
    torch.manual_seed(0)
    both = Mixup(mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.5, num_outputs=2)
    kinds = [both.draw()[1] for _ in range(4000)]
    assert kinds.count("none") / 4000 == pytest.approx(0.5, abs=0.04)
    assert kinds.count("cutmix") / 4000 == pytest.approx(0.25, abs=0.03)
    assert kinds.count("mixup") / 4000 == pytest.approx(0.25, abs=0.03)
    never = Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, mix_prob=0.0, num_outputs=3)
    x, y = torch.rand(4, 3, 5, 5), torch.tensor([0, 1, 2, 0])
    out = never(x, y)
    assert out.kind == "none" and out.lam == 1.0 and torch.equal(out.images, x)
    assert torch.equal(out.targets, F.one_hot(y, 3).float())
    assert build_mixup(0.0, 0.0, 1.0, 2, 0.0) is None
    with pytest.raises(ValueError, match=r"train\.mix_prob"):
        Mixup(0.2, 0.0, mix_prob=1.5)
    with pytest.raises(ValueError, match=r"train\.cutmix_alpha"):
        build_mixup(0.2, -1.0, 1.0, 2, 0.0)


def test_soft_target_loss_with_class_weights_equals_a_hand_computation():
    torch.manual_seed(0)
    w = torch.tensor([0.5, 2.0, 1.0])
    loss = SoftTargetCE(weight=w)
    logits = torch.randn(4, 3)
    t = torch.softmax(torch.randn(4, 3), 1)
    logp = torch.log_softmax(logits, 1)
    per = [-(t[i] * logp[i]).sum() for i in range(4)]
    wi = [(t[i] * w).sum() for i in range(4)]
    hand = sum(a * b for a, b in zip(wi, per)) / sum(wi)
    assert loss(logits, t).item() == pytest.approx(hand.item(), rel=1e-6)
    # one-hot soft targets give nn.CrossEntropyLoss's weighted mean exactly
    y = torch.tensor([0, 1, 2, 1])
    assert loss(logits, F.one_hot(y, 3).float()).item() == pytest.approx(
        nn.CrossEntropyLoss(weight=w)(logits, y).item(), rel=1e-6)
    assert SoftTargetCE()(logits, t).item() == pytest.approx(sum(per).item() / 4, rel=1e-6)


def test_single_logit_loss_with_soft_targets_and_pos_weight_equals_a_hand_computation():
    z = torch.tensor([[0.3], [-1.2], [2.0]])
    t = torch.tensor([0.7, 0.2, 1.0])
    pw = torch.tensor([3.0])
    loss = _BCEOneLogit(pw, smoothing=0.1)  # soft targets are taken as they are (mixup smoothed them)
    s = torch.sigmoid(z[:, 0])
    hand = -(pw * t * torch.log(s) + (1 - t) * torch.log(1 - s)).mean()
    assert loss(z, t).item() == pytest.approx(hand.item(), rel=1e-6)
    hard = loss(z, torch.tensor([1, 0, 1]))  # integer targets: smoothed by the loss, as before
    th = torch.tensor([0.95, 0.05, 0.95])
    assert hard.item() == pytest.approx(-(pw * th * torch.log(s) + (1 - th) * torch.log(1 - s)).mean().item(), rel=1e-6)


@pytest.mark.parametrize("single_logit", [False, True])
def test_tiny_run_with_mixup_cutmix_and_class_weights(data, tmp_path, single_logit):
    cfg = tiny_config(data, epochs=2, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1)
    cfg.data.class_balance = "loss"
    cfg.model.single_logit = single_logit
    result = train(cfg, tmp_path / "run")
    assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in result.history)


# --------------------------------------------------------------------------- auto-augment, random erasing


def _aug_cfg(**kw) -> DataConfig:
    cfg = DataConfig(image_size=24, crop_scale=[1.0, 1.0], hflip=False, rotation_degrees=0.0, brightness=0.0,
                     contrast=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kw", [dict(auto_augment="randaugment"), dict(auto_augment="trivialaugment"),
                                dict(random_erasing=1.0), dict(auto_augment="randaugment", random_erasing=0.5)])
def test_auto_augment_and_erasing_change_images_keep_shape_dtype_range(channels, kw):
    aug = build_augmentation(_aug_cfg(**kw))
    assert build_augmentation(_aug_cfg()) is None  # nothing on: no augmentation
    x = torch.rand(16, channels, 24, 24)
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1 + 1e-6
    changed = ((y - x).abs().flatten(1).amax(1) > 1e-4).float().mean().item()
    assert changed >= 0.5
    torch.manual_seed(0)
    assert torch.equal(aug(x), y)  # seeded by the global generator (exact resume)


def test_random_erasing_erases_a_black_box():
    aug = build_augmentation(_aug_cfg(random_erasing=1.0))
    torch.manual_seed(0)
    x = torch.rand(8, 1, 24, 24) * 0.5 + 0.5  # no black pixel
    y = aug(x)
    erased = (y == 0).flatten(1).float().mean(1)
    assert ((erased >= 0.02 - 1e-3) & (erased <= 0.34)).all()


def test_bad_auto_augment_values_name_the_key():
    with pytest.raises(ValueError, match=r"data\.auto_augment"):
        build_augmentation(_aug_cfg(auto_augment="autoaugment"))
    with pytest.raises(ValueError, match=r"data\.randaugment_n"):
        build_augmentation(_aug_cfg(auto_augment="randaugment", randaugment_n=0))
    with pytest.raises(ValueError, match=r"data\.random_erasing"):
        build_augmentation(_aug_cfg(random_erasing=2.0))


# --------------------------------------------------------------------------- stochastic depth


def test_drop_path_rates_grow_linearly_and_keys_do_not_change():
    plain = resnet50(num_classes=3, drop_path_rate=0.0)
    dropped = resnet50(num_classes=3, drop_path_rate=0.3)
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    blocks = [b for layer in (dropped.layer1, dropped.layer2, dropped.layer3, dropped.layer4) for b in layer]
    rates = [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for b in blocks]
    assert rates == pytest.approx([0.3 * i / 15 for i in range(16)])
    assert not isinstance(blocks[0].drop_path, DropPath)  # rate 0: the identity module
    model = build_model(ModelConfig(arch="resnet18", drop_path_rate=0.1), 2, 3)
    assert isinstance(model.layer4[1].drop_path, DropPath) and model.layer4[1].drop_path.p == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"model\.drop_path_rate"):
        resnet18(drop_path_rate=1.0)


def test_drop_path_is_the_identity_at_eval_and_random_in_training():
    torch.manual_seed(0)
    plain = resnet18(num_classes=2, stem="small", zero_init_residual=False)
    dropped = resnet18(num_classes=2, stem="small", zero_init_residual=False, drop_path_rate=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(6, 3, 16, 16)
    plain.eval(), dropped.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), dropped(x))
    plain.train(), dropped.train()
    with torch.no_grad():
        assert torch.allclose(plain(x), plain(x))  # no randomness without drop path
        assert not torch.allclose(dropped(x), dropped(x))
    dp = DropPath(0.25).train()
    torch.manual_seed(0)
    out = dp(torch.ones(4000, 3))
    kept = out[:, 0] != 0
    assert torch.all(out[kept] == 1 / 0.75) and kept.float().mean().item() == pytest.approx(0.75, abs=0.03)


def test_drop_path_on_a_model_without_residual_blocks_is_an_error(data, tmp_path):
    cfg = tiny_config(data, epochs=1)
    cfg.model.arch = "custom_cnn"
    cfg.model.drop_path_rate = 0.1
    with pytest.raises(ValueError, match=r"model\.drop_path_rate"):
        train(cfg, tmp_path / "run")


# --------------------------------------------------------------------------- gradient clipping


def _record_grad_norms(monkeypatch):
    norms: list[float] = []
    real = trainer_module.make_optimizer

    def recording(cfg, model):
        opt = real(cfg, model)

        def record(optimizer, args, kwargs):  # before each optimizer step
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

        opt.register_step_pre_hook(record)
        return opt

    monkeypatch.setattr(trainer_module, "make_optimizer", recording)
    return norms


def test_gradient_clipping_bounds_the_gradient_norm(data, tmp_path, monkeypatch):
    norms = _record_grad_norms(monkeypatch)
    train(tiny_config(data, epochs=1), tmp_path / "free")
    assert max(norms) > 0.05  # unclipped gradients are larger than the bound below
    norms.clear()
    train(tiny_config(data, epochs=1, clip_grad_norm=0.05), tmp_path / "clipped")
    assert len(norms) == 3 and max(norms) <= 0.05 * (1 + 1e-4)


# --------------------------------------------------------------------------- progressive resizing


def test_progressive_size_schedule():
    sizes = [progressive_size(e, 8, 64, 0.5) for e in range(1, 9)]
    assert sizes[0] == 32 and sizes[-2:] == [64, 64]  # the last quarter at the full size
    assert sizes == sorted(sizes) and all(s % 8 == 0 for s in sizes)
    small = [progressive_size(e, 20, 28, 0.5) for e in range(1, 21)]
    assert small[0] == 16 and small[-5:] == [28] * 5 and all(s % 4 == 0 for s in small[:-5])
    assert small == sorted(small)
    assert [progressive_size(e, 30, 224, 0.5) for e in (1, 22, 23, 30)] == [112, 216, 224, 224]
    assert progressive_size(1, 1, 64, 0.5) == 64  # a one-epoch run is at the full size
    assert progressive_size(1, 10, 64, None) == 64
    with pytest.raises(ValueError, match=r"train\.progressive_resize"):
        progressive_size(1, 10, 64, 0.0)
    x = torch.rand(2, 1, 64, 64)
    assert resize_batch(x, 32).shape == (2, 1, 32, 32) and resize_batch(x, 64) is x


def test_tiny_run_with_progressive_resizing(data, tmp_path, monkeypatch):
    seen: list[tuple[int, int]] = []
    real = fit_module.resize_batch

    def recording(x, size):
        out = real(x, size)
        seen.append((size, out.shape[-1]))
        return out

    monkeypatch.setattr(fit_module, "resize_batch", recording)
    shapes: list[int] = []
    real_predict = trainer_module.predict_logits

    def predict(model, images, *a, **kw):
        shapes.append(images.shape[-1])
        return real_predict(model, images, *a, **kw)

    monkeypatch.setattr(trainer_module, "predict_logits", predict)
    result = train(tiny_config(data, epochs=4, progressive_resize=0.5), tmp_path / "run")
    assert len(result.history) == 4
    per_epoch = [seen[i][1] for i in range(0, len(seen), 3)]  # 3 steps an epoch
    assert per_epoch == [8, 12, 12, 16] and all(a == b for a, b in seen)
    assert set(shapes) == {16}  # validation at the full size


def test_validation_balanced_accuracy_is_scikit_learns_and_can_choose_the_checkpoint(tmp_path):
    from sklearn.metrics import balanced_accuracy_score

    from medclass.core.config import ConfigError, RunConfig
    from medclass.engine.fit import balanced_accuracy

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    y[:3] = 0  # every class present
    assert balanced_accuracy(torch.as_tensor(p), torch.as_tensor(y)) == pytest.approx(balanced_accuracy_score(y, p))
    with pytest.raises(ConfigError, match="train.monitor"):
        RunConfig().set("train.monitor", "val_auroc")

    data = make_folder_dataset(tmp_path / "data", per_class=8)
    cfg = tiny_config(data, epochs=3, monitor="val_balanced_accuracy")
    result = train(cfg, tmp_path / "run")
    values = [r["val_balanced_accuracy"] for r in result.history]
    assert result.best_value == max(values) and result.best_epoch == 1 + values.index(max(values))
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val_balanced_accuracy" in header.split(",")
