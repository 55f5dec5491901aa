"""The model registry: adding an architecture is one decorated entrypoint (here, in this test), and
it then trains, loads, explains and lists like the built-in ones (README, "Adding an architecture")."""

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from medclass.cli.app import app
from medclass.core.config import ModelConfig
from medclass.engine import load_run, train
from medclass.evaluation.explain import default_target_layer, gradcam
from medclass.models.pretrained import param_groups_with_lrs
from medclass.models import (
    ClassifierModel,
    build_model,
    create_model,
    is_model,
    list_models,
    model_info,
    register_model,
)

from helpers import make_folder_dataset, tiny_config

BUILT_IN = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "custom_cnn", "chained"]


class TinyNet(ClassifierModel):
    """One conv block and a linear head named ``classifier`` (not ``fc``: the head is found by name)."""

    head_name = "classifier"

    def __init__(self, in_channels: int, num_classes: int, width: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward_features(self, x):
        return self.body(x)

    def default_gradcam_layer(self) -> str:
        return "body"

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.forward_features(x)), 1))


@register_model(description="a test's one-block CNN", input_sizes=(16, 64))
def tiny_test_net(num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> TinyNet:
    """The tiny CNN of tests/test_registry.py; ``dropout`` comes from ``ModelConfig.dropout``."""
    return TinyNet(in_channels, num_classes, dropout=dropout)


def test_registry_lists_builds_and_describes():
    assert list_models()[: len(BUILT_IN)] == BUILT_IN and is_model("tiny_test_net") and not is_model("vgg16")
    info = model_info("tiny_test_net")
    assert info.options == ("dropout",) and info.input_sizes == (16, 64) and info.description == "a test's one-block CNN"
    assert set(model_info("chained").options) >= {"chain_stage", "cnn_widths", "chain_freeze_resnet", "stem"}
    m = create_model("resnet18", num_classes=3, in_channels=1, stem="small")
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 3) and m.get_classifier() is m.fc
    assert m.forward_features(torch.randn(2, 1, 32, 32)).shape == (2, 512, 4, 4)
    with pytest.raises(ValueError, match=r"unknown model.arch 'vgg16'; choose one of resnet18, .*chained"):
        create_model("vgg16", 2, 3)

    def resnet18(num_classes, in_channels):  # another architecture under a taken name
        return TinyNet(in_channels, num_classes)

    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        register_model(resnet18)
    # build_model passes the ModelConfig fields the entrypoint names, and nothing else
    net = build_model(ModelConfig(arch="tiny_test_net", dropout=0.25, cnn_widths=[4]), num_classes=2, in_channels=3)
    assert isinstance(net, TinyNet) and net.classifier[0].p == 0.25
    # freezing and per-group learning rates find the head by its name
    net.set_trainable(backbone=False)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["classifier.1.weight", "classifier.1.bias"]
    assert not net.has_frozen_parts
    net.set_trainable(backbone=True)
    groups = param_groups_with_lrs(net, 1e-3, 0.1, weight_decay=0.01)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("head/decay", 1e-3), ("head/no_decay", 1e-3), ("backbone/decay", 1e-4), ("backbone/no_decay", 1e-4)]
    report = net.load_pretrained_weights({k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")})
    assert report["head_reinitialised"] and report["loaded_keys"] == 6  # conv weight; BN weight, bias, mean, var, count


def test_a_registered_architecture_trains_loads_and_explains(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    cfg = tiny_config(data, epochs=1, max_steps_per_epoch=1)
    cfg.model.arch = "tiny_test_net"
    cfg.model.dropout = 0.25
    cfg.model.finetune = "feature_extraction"  # freezing goes by the head's name, "classifier"
    cfg.model.backbone_lr_mult = 0.5  # per-group learning rates too
    result = train(cfg, tmp_path / "run")
    run = load_run(result.files.root)
    model = run.model
    assert isinstance(model, TinyNet) and model.classifier[0].p == 0.25
    bn = model.body[1]
    assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.ones(8))  # frozen
    assert default_target_layer(model) == "body"
    x = run.preprocess(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8).to(run.device))
    heat = gradcam(model, x)
    assert heat.shape == (2, 16, 16) and float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0


def test_models_command_lists_the_architectures():
    out = CliRunner().invoke(app, ["models"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    for name in BUILT_IN:
        assert any(line.startswith(name + " ") for line in lines), name
    resnet50 = next(line for line in lines if line.startswith("resnet50 "))
    assert "23,512,130" in resnet50 and "112-512 px" in resnet50  # 2 classes, 3 channels
