"""Grad-CAM and the explanation helpers (medclass.evaluation.explain), on real behaviour: a tiny
ResNet trained to detect a bright square at one fixed place must put its heat there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medclass.data import Preprocess
from medclass.evaluation.explain import (
    default_target_layer,
    gradcam,
    overlay,
    save_explanations,
    select_examples,
)
from medclass.models import BasicBlock, ChainedModel, CustomCNN, ResNet

SIZE = 32
SQUARE = (slice(5, 11), slice(5, 11))  # the deciding square, inside the top-left quadrant
QUADRANT = (slice(0, SIZE // 2), slice(0, SIZE // 2))


def make_images(n: int, seed: int, positive: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 1, 32, 32) noise images (values 0..89) and labels (n,) int64: label 1 = a bright
    (255) 6x6 square at SQUARE, inside the top-left quadrant; ``positive`` forces the label."""
    g = np.random.default_rng(seed)
    imgs = g.integers(0, 90, size=(n, 1, SIZE, SIZE)).astype(np.uint8)
    labels = g.integers(0, 2, size=n) if positive is None else np.full(n, int(positive))
    imgs[labels == 1, 0, SQUARE[0], SQUARE[1]] = 255
    return torch.from_numpy(imgs), torch.from_numpy(labels).long()


def tiny_resnet(num_classes: int = 2) -> ResNet:
    """The medclass ResNet with one basic block per stage and the small stem: 32 px -> 4x4 at layer4."""
    return ResNet(BasicBlock, (1, 1, 1, 1), num_classes=num_classes, in_channels=1, stem="small")


@pytest.fixture(scope="module")
def trained() -> ResNet:
    """Trained for 20 SGD steps on fresh batches of 16, then batch-norm statistics recomputed
    (after so few steps the running averages still lag the batch statistics); test accuracy
    checked >= 95%."""
    torch.manual_seed(0)
    model = tiny_resnet()
    pre = Preprocess()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(20):
        images, labels = make_images(16, seed=step)
        loss = nn.functional.cross_entropy(model(pre(images)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for k in range(3):
            model(pre(make_images(64, seed=500 + k)[0]))
    for m in bns:
        m.momentum = 0.1
    model.eval()
    images, labels = make_images(200, seed=1000)
    with torch.no_grad():
        acc = (model(pre(images)).argmax(1) == labels).float().mean().item()
    assert acc >= 0.95, f"the tiny ResNet did not learn the task (accuracy {acc:.2f})"
    return model


def quadrant_ratio(heat: torch.Tensor) -> torch.Tensor:
    """(N,) mean heat inside the top-left quadrant / mean heat outside."""
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[QUADRANT] = True
    return heat[:, mask].mean(1) / heat[:, ~mask].mean(1).clamp_min(1e-6)


@pytest.mark.slow
def test_gradcam_puts_the_heat_on_the_deciding_square(trained):
    images, _ = make_images(12, seed=2000, positive=True)
    x = Preprocess()(images)
    heat = gradcam(trained, x)  # predicted class: 1 (square present)
    assert heat.shape == (12, SIZE, SIZE) and heat.dtype == torch.float32
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0
    assert torch.allclose(heat.amax(dim=(1, 2)), torch.ones(12))
    ratio = quadrant_ratio(heat)
    assert (ratio > 2.0).all(), ratio
    assert (quadrant_ratio(gradcam(trained, x, target_layer="layer3")) > 2.0).all()
    # the hottest location is in the quadrant too
    flat = heat.flatten(1).argmax(1)
    assert ((flat // SIZE < SIZE // 2) & (flat % SIZE < SIZE // 2)).all()


@pytest.mark.slow
def test_model_is_left_as_found_in_eval_mode(trained):
    model = tiny_resnet()
    model.load_state_dict(trained.state_dict())
    model.train()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    marker = torch.full_like(model.fc.weight, 7.0)
    model.fc.weight.grad = marker
    x = Preprocess()(make_images(4, seed=1)[0])
    heat = gradcam(model, x, target_layer="layer4.0.relu")  # a ReLU(inplace=True), shared in the block
    assert heat.shape == (4, SIZE, SIZE)
    assert not model.training and not any(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.fc.weight.grad is marker and model.conv1.weight.grad is None
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks
    # and the model still computes what it computed before
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))


@pytest.mark.slow
def test_each_image_gets_its_own_class(trained):
    pos, _ = make_images(3, seed=3000, positive=True)
    neg, _ = make_images(3, seed=3001, positive=False)
    x = Preprocess()(torch.cat([pos, neg]))
    with torch.no_grad():
        assert trained(x).argmax(1).tolist() == [1, 1, 1, 0, 0, 0]
    batched = gradcam(trained, x)
    one_by_one = torch.cat([gradcam(trained, x[i : i + 1]) for i in range(6)])
    assert torch.allclose(batched, one_by_one, atol=1e-4)
    # explicit classes: one per image, or one for all
    swapped = gradcam(trained, x, class_idx=[0, 0, 0, 1, 1, 1])
    assert torch.allclose(swapped[:3], gradcam(trained, x[:3], class_idx=0), atol=1e-5)
    assert torch.allclose(swapped[3:], gradcam(trained, x[3:], class_idx=1), atol=1e-5)
    assert not torch.allclose(swapped, batched, atol=1e-2)


@pytest.mark.slow
def test_single_logit_model_explains_both_classes(trained):
    """A single-logit copy of the trained model (z = logit_1 - logit_0): class 1 is explained
    by z and shows the square, class 0 by -z and leaves the square cold."""
    single = tiny_resnet(num_classes=1)
    state = dict(trained.state_dict())
    state["fc.weight"] = state["fc.weight"][1:] - state["fc.weight"][:1]
    state["fc.bias"] = state["fc.bias"][1:] - state["fc.bias"][:1]
    single.load_state_dict(state)
    single.eval()
    images, _ = make_images(6, seed=4000, positive=True)
    x = Preprocess()(images)
    with torch.no_grad():
        assert single(x).shape == (6, 1) and (single(x) > 0).all()
    default = gradcam(single, x)
    heat1 = gradcam(single, x, class_idx=1)
    heat0 = gradcam(single, x, class_idx=0)
    assert torch.equal(default, heat1)  # predicted class: 1
    for h in (heat0, heat1):
        assert h.shape == (6, SIZE, SIZE) and h.dtype == torch.float32
        assert float(h.min()) >= 0.0 and float(h.max()) <= 1.0
    assert (heat1 - heat0).abs().mean() > 0.1
    assert (quadrant_ratio(heat1) > 2.0).all()
    square1 = heat1[:, SQUARE[0], SQUARE[1]].mean()
    square0 = heat0[:, SQUARE[0], SQUARE[1]].mean()
    assert square0 < 0.5 * square1


@pytest.mark.slow
def test_target_layers(trained):
    x = Preprocess()(make_images(2, seed=5)[0])
    assert default_target_layer(trained) == "layer4"
    for layer in ("layer3", "layer4.0.conv2", "layer2.0"):
        heat = gradcam(trained, x, target_layer=layer)
        assert heat.shape == (2, SIZE, SIZE) and float(heat.max()) <= 1.0
    with pytest.raises(ValueError, match=r"unknown target_layer 'layer5'.*layer4\.0\.conv1"):
        gradcam(trained, x, target_layer="layer5")
    with pytest.raises(ValueError, match="no 2-D feature map"):
        gradcam(trained, x, target_layer="fc")
    with pytest.raises(ValueError, match="class_idx must be in 0..1"):
        gradcam(trained, x, class_idx=2)
    with pytest.raises(ValueError, match="2 ints"):
        gradcam(trained, x, class_idx=[0, 1, 1])
    with pytest.raises(ValueError, match="float batch"):
        gradcam(trained, make_images(2, seed=5)[0])
    with pytest.raises(ValueError, match="no default Grad-CAM layer"):
        gradcam(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(2)), x)


def test_custom_cnn_and_chained_model_defaults():
    torch.manual_seed(0)
    x = torch.randn(3, 1, SIZE, SIZE)
    cnn = CustomCNN(1, 3, widths=(8, 16, 16))
    assert default_target_layer(cnn) == "features.2"
    heat = gradcam(cnn, x)
    assert heat.shape == (3, SIZE, SIZE) and heat.dtype == torch.float32
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0 and float(heat.max()) > 0.0

    chained = ChainedModel(tiny_resnet(), stage=2, num_classes=2, widths=(16, 16))
    chained.train()
    chained.freeze_resnet()
    flags = [p.requires_grad for p in chained.parameters()]
    assert default_target_layer(chained) == "cnn.1"
    heat = gradcam(chained, x)
    assert heat.shape == (3, SIZE, SIZE) and float(heat.max()) > 0.0
    assert not chained.training and [p.requires_grad for p in chained.parameters()] == flags
    # a layer of the frozen ResNet part works too: only the input needs a gradient
    assert gradcam(chained, x, target_layer="resnet.layer2").shape == (3, SIZE, SIZE)


def test_overlay_shapes_and_blending():
    g = np.random.default_rng(0)
    grey = g.integers(0, 256, size=(20, 24), dtype=np.uint8)
    rgb = g.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    heat = np.linspace(0, 1, 20 * 24, dtype=np.float32).reshape(20, 24)
    for image in (grey, grey[..., None], grey[None], rgb, rgb.transpose(2, 0, 1)):
        out = overlay(image, heat)
        assert out.shape == (20, 24, 3) and out.dtype == np.uint8
    assert np.array_equal(overlay(grey[None], heat, alpha=0.0), np.repeat(grey[..., None], 3, axis=2))
    assert np.array_equal(overlay(rgb.transpose(2, 0, 1), heat, alpha=0.0), rgb)
    full = overlay(rgb, torch.from_numpy(heat), alpha=1.0, cmap="inferno")
    assert full[0, 0].max() < 10  # inferno(0) is near black
    assert full[-1, -1].min() > 150  # inferno(1) is pale yellow
    jet = overlay(rgb, heat, alpha=1.0)
    assert jet[0, 0, 2] > jet[0, 0, 0] and jet[-1, -1, 0] > jet[-1, -1, 2]  # blue (cold) .. red (hot)
    with pytest.raises(ValueError, match="heatmap shape"):
        overlay(rgb, heat[:10])
    with pytest.raises(ValueError, match="uint8"):
        overlay(rgb.astype(np.float32), heat)
    with pytest.raises(ValueError, match="alpha"):
        overlay(rgb, heat, alpha=1.5)


def test_select_examples():
    probs = np.array([
        [0.9, 0.1, 0.0],  # 0: true 0, right, conf .9
        [0.6, 0.4, 0.0],  # 1: true 0, right, conf .6
        [0.2, 0.8, 0.0],  # 2: true 0, wrong (1), conf .8
        [0.3, 0.3, 0.4],  # 3: true 0, wrong (2), conf .4
        [0.1, 0.7, 0.2],  # 4: true 1, right, conf .7
        [0.0, 0.95, 0.05],  # 5: true 1, right, conf .95
        [0.99, 0.01, 0.0],  # 6: true 1, wrong (0), conf .99
        [0.95, 0.0, 0.05],  # 7: true 0, right, conf .95
    ])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 0])
    out = select_examples(probs, labels, n=2, class_names=["a", "b", "c"])
    assert list(out) == ["a", "b", "c"]
    assert out["a"]["right"].tolist() == [7, 0]
    assert out["a"]["wrong"].tolist() == [2, 3]
    assert out["b"]["right"].tolist() == [5, 4]
    assert out["b"]["wrong"].tolist() == [6]
    assert out["c"]["right"].tolist() == [] and out["c"]["wrong"].tolist() == []
    assert out["a"]["right"].dtype == np.int64
    everything = select_examples(probs, labels, n=10)
    assert list(everything) == ["0", "1", "2"] and everything["0"]["right"].tolist() == [7, 0, 1]
    assert select_examples(probs, labels, n=0)["0"]["right"].tolist() == []
    # a binary task given as P(class 1) (N, 1)
    binary = select_examples(np.array([[0.2], [0.9], [0.6]]), np.array([1, 1, 0]), n=1)
    assert binary["1"]["right"].tolist() == [1] and binary["1"]["wrong"].tolist() == [0]
    assert binary["0"]["wrong"].tolist() == [2]
    with pytest.raises(ValueError, match="labels must be integers"):
        select_examples(probs, labels + 2, n=1)
    with pytest.raises(ValueError, match="probs must be"):
        select_examples(probs, labels[:3], n=1)


@pytest.mark.slow
def test_save_explanations_writes_readable_pngs(trained, tmp_path: Path):
    images, labels = make_images(5, seed=6000)
    names = [f"case/{i:02d}.png" for i in range(5)]
    paths = save_explanations(
        trained, images, Preprocess(), torch.device("cpu"), tmp_path / "gradcam", names, ["empty", "square"],
        labels=labels.tolist(), batch_size=2,
    )
    assert [p.name for p in paths] == [f"{i:02d}_gradcam.png" for i in range(5)]
    for p in paths:
        with Image.open(p) as im:
            im.load()
            assert im.format == "PNG" and im.size == (800, 440)
            colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is None or len(colours) > 100
    # one class for all, explained rather than predicted
    again = save_explanations(trained, images[:2].numpy(), Preprocess(), torch.device("cpu"), tmp_path / "c0",
                              ["a", "b"], ["empty", "square"], class_idx=0)
    assert all(p.is_file() for p in again)
    with pytest.raises(ValueError, match="duplicate"):
        save_explanations(trained, images[:2], Preprocess(), torch.device("cpu"), tmp_path, ["x.png", "x.jpg"],
                          ["empty", "square"])
    with pytest.raises(ValueError, match="uint8"):
        save_explanations(trained, images.float(), Preprocess(), torch.device("cpu"), tmp_path, names,
                          ["empty", "square"])
