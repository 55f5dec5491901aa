"""The from-scratch ResNet family: sizes, torchvision compatibility, blocks, heads, weight decay."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from medclass.core.config import ModelConfig
from medclass.models import (
    BasicBlock,
    Bottleneck,
    ClassifierHead,
    build_model,
    count_parameters,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    weight_decay_param_groups,
)

FIXTURES = Path(__file__).parent / "fixtures"


def torchvision_reference(name):
    return json.loads((FIXTURES / "torchvision_resnet_state_dicts.json").read_text())[name]


def test_resnet50_has_exactly_the_published_parameter_count():
    assert count_parameters(resnet50()) == 25_557_032


@pytest.mark.parametrize(
    "factory, params",
    [(resnet18, 11_689_512), (resnet34, 21_797_672), (resnet101, 44_549_160), (resnet152, 60_192_808)],
)
def test_family_parameter_counts_match_torchvision(factory, params):
    assert count_parameters(factory()) == params


@pytest.mark.parametrize("name, factory", [("resnet50", resnet50), ("resnet18", resnet18)])
def test_state_dict_keys_and_shapes_are_torchvisions(name, factory):
    ours = {k: list(v.shape) for k, v in factory().state_dict().items()}
    assert ours == torchvision_reference(name)


def test_torchvision_layout_checkpoint_loads_strictly_and_gives_the_same_outputs():
    # a state dict with torchvision's names and shapes (random values) loads without renaming
    ref = torchvision_reference("resnet50")
    gen = torch.Generator().manual_seed(0)
    sd = {
        k: (torch.randint(0, 5, shape, generator=gen) if k.endswith("num_batches_tracked") else torch.rand(shape, generator=gen) + 0.5)
        for k, shape in ref.items()
    }
    sd = {k: (v.long() if k.endswith("num_batches_tracked") else v) for k, v in sd.items()}
    a, b = resnet50(), resnet50()
    a.load_state_dict(sd, strict=True)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


def test_stage_structure_convolutional_then_identity_blocks():
    m = resnet50()
    for stage, depth in zip((m.layer1, m.layer2, m.layer3, m.layer4), (3, 4, 6, 3)):
        assert len(stage) == depth
        assert all(isinstance(b, Bottleneck) for b in stage)
        assert stage[0].downsample is not None  # convolutional block: projection shortcut
        assert all(b.downsample is None for b in stage[1:])  # identity blocks
    # v1.5: the stride of a down-sampling block is in its 3x3 conv, not the first 1x1
    assert m.layer2[0].conv1.stride == (1, 1) and m.layer2[0].conv2.stride == (2, 2)
    assert m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2)
    assert isinstance(m.maxpool, nn.MaxPool2d)


def test_bottleneck_block_output_shapes():
    x = torch.randn(2, 64, 16, 16)
    conv_block = Bottleneck(64, 64, stride=1)
    assert conv_block(x).shape == (2, 256, 16, 16)
    down = Bottleneck(256, 128, stride=2)
    assert down(torch.randn(2, 256, 16, 16)).shape == (2, 512, 8, 8)
    identity = Bottleneck(256, 64)
    assert identity.downsample is None
    assert identity(torch.randn(2, 256, 8, 8)).shape == (2, 256, 8, 8)


def test_basic_block_output_shapes():
    assert BasicBlock(64, 64)(torch.randn(1, 64, 8, 8)).shape == (1, 64, 8, 8)
    b = BasicBlock(64, 128, stride=2)
    assert b.downsample is not None
    assert b(torch.randn(1, 64, 8, 8)).shape == (1, 128, 4, 4)


def test_skip_connection_is_used():
    # with the residual branch zeroed (zero-init of its last BN) the block is relu(shortcut(x))
    block = Bottleneck(256, 64)
    nn.init.zeros_(block.bn3.weight)
    nn.init.zeros_(block.bn3.bias)
    block.eval()
    x = torch.randn(2, 256, 4, 4)
    assert torch.allclose(block(x), torch.relu(x))


def test_zero_init_residual_sets_last_bn_scales_to_zero():
    m = resnet50(zero_init_residual=True)
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0.0 for s in (m.layer1, m.layer4) for b in s)
    assert float(resnet50().layer1[0].bn3.weight.detach().sum()) > 0


@pytest.mark.parametrize("stem, size, fmap", [("imagenet", 64, 2), ("small", 32, 4)])
def test_stems_and_feature_map_sizes(stem, size, fmap):
    m = resnet50(num_classes=4, stem=stem, in_channels=1)
    feats = m.forward_features(torch.randn(2, 1, size, size))
    assert feats.shape == (2, 2048, fmap, fmap)
    assert m(torch.randn(2, 1, size, size)).shape == (2, 4)
    if stem == "small":
        assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
        assert isinstance(m.maxpool, nn.Identity)


def test_dense_head_with_dropout_and_bn_head():
    m = resnet50(num_classes=3, head_hidden=(256, 64), dropout=0.4)
    layers = list(m.fc.layers)
    assert [type(l) for l in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert layers[2].p == 0.4 and layers[-1].out_features == 3
    bn = ClassifierHead(2048, 2, kind="bn")
    assert isinstance(bn.layers[0], nn.BatchNorm1d) and isinstance(bn.layers[-1], nn.Linear)
    with pytest.raises(ValueError, match="dropout"):
        ClassifierHead(10, 2, dropout=1.5)


def test_build_model_single_logit_and_errors():
    m = build_model(ModelConfig(single_logit=True, arch="resnet18"), num_classes=2, in_channels=3)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 1)
    with pytest.raises(ValueError, match="binary"):
        build_model(ModelConfig(single_logit=True), num_classes=4, in_channels=3)
    with pytest.raises(ValueError, match="resnet50"):
        build_model(ModelConfig(arch="vgg16"), num_classes=2, in_channels=3)


def test_weight_decay_only_on_conv_and_linear_weights():
    m = resnet18(num_classes=2, head_kind="bn")
    decay, no_decay = weight_decay_param_groups(m, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    for mod in m.modules():
        for name, p in mod.named_parameters(recurse=False):
            expect = isinstance(mod, (nn.Conv2d, nn.Linear)) and name == "weight"
            assert (id(p) in decay_ids) == expect, (type(mod).__name__, name)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_custom_cnn_blocks_and_head():
    from medclass.models import CustomCNN

    m = CustomCNN(1, 3, widths=(8, 16, 32), convs_per_block=2, head_hidden=(16,), dropout=0.5)
    assert len(m.features) == 3
    first = m.features[0]
    assert [type(l).__name__ for l in first] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert m.features(torch.randn(2, 1, 32, 32)).shape == (2, 32, 4, 4)  # 3 blocks halve 32 three times
    with pytest.raises(ValueError):
        CustomCNN(1, 2, widths=())


@pytest.mark.parametrize("stage, channels, stride", [(1, 256, 4), (2, 512, 8), (3, 1024, 16)])
def test_chained_model_cuts_the_resnet_and_reuses_its_weights(stage, channels, stride):
    from medclass.models import ChainedModel

    full = resnet50()
    full.eval()
    chained = ChainedModel(resnet50(), stage, num_classes=4, widths=(32,))
    assert chained.cnn[0][0].in_channels == channels
    n = chained.load_resnet_state_dict(full.state_dict())
    assert n == len(chained.resnet.state_dict())
    chained.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = full.maxpool(full.relu(full.bn1(full.conv1(x))))
        for k in range(1, stage + 1):
            want = getattr(full, f"layer{k}")(want)
        got = chained.resnet.forward_features(x)
    assert got.shape == (1, channels, 64 // stride, 64 // stride)
    assert torch.equal(got, want)
    assert chained(x).shape == (1, 4)
    # the stages after the cut are gone, not just unused
    assert count_parameters(chained) < count_parameters(full)


def test_chained_freeze_resnet_keeps_weights_and_bn_statistics():
    from medclass.models import ChainedModel

    m = ChainedModel(resnet18(), 2, num_classes=2, widths=(16,))
    before = {k: v.clone() for k, v in m.resnet.state_dict().items()}
    m.train()
    m.freeze_resnet()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    loss = m(torch.randn(4, 3, 32, 32)).sum()
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in m.resnet.state_dict().items())
    assert all(p.grad is not None for p in m.fc.parameters())
