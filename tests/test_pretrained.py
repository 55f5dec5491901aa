"""Pretrained weights: the torch hub cache and its hash rule, weight files, head replacement,
key checks, the Keras ResNet-50 conversion (against a reference forward pass written from the
Keras arrays), and the fine-tuning helpers. No network: downloads are faked."""

import hashlib
import shutil
import urllib.error

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from medclass.models import resnet18, resnet50
from medclass.models import pretrained as P
from medclass.models.keras_resnet import convert_keras_resnet50
from medclass.models.pretrained import HubCheckpoint, PretrainedError

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every test runs offline: a download attempt raises URLError unless a test fakes one."""

    def no_network(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A private torch hub cache: $TORCH_HOME/hub/checkpoints under tmp_path."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # forget any torch.hub.set_dir
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = P.hub_checkpoint_dir()
    assert folder == tmp_path / "torch" / "hub" / "checkpoints"
    return folder


@pytest.fixture(scope="module")
def source_model():
    """A randomly initialised resnet50 with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(1)
    model = resnet50()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def source_outputs(source_model):
    with torch.no_grad():
        return source_model.forward_features(X), source_model(X)


@pytest.fixture(scope="module")
def pth_file(tmp_path_factory, source_model):
    """The source model's state dict in torchvision's layout (a plain .pth state dict)."""
    path = tmp_path_factory.mktemp("weights") / "resnet50-random.pth"
    torch.save(source_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def pth_digest(pth_file):
    return sha256(pth_file)


# Targets shared by the tests to save construction time: every successful load_pretrained
# overwrites all of a model's tensors (backbone from the source, head from it or re-initialised).
@pytest.fixture(scope="module")
def target3():
    return resnet50(num_classes=3)


@pytest.fixture(scope="module")
def target1000():
    return resnet50()


def resnet50_shapes(**kwargs):
    with torch.device("meta"):
        return {k: v.shape for k, v in resnet50(**kwargs).state_dict().items() if not k.endswith("num_batches_tracked")}


def features(model):
    with torch.no_grad():
        return model.eval().forward_features(X)


# -- the torch hub cache ------------------------------------------------------------------------


def test_imagenet_table_names_files_and_hash_prefixes():
    v1, v2 = P.IMAGENET_CHECKPOINTS["imagenet-v1"], P.IMAGENET_CHECKPOINTS["imagenet-v2"]
    assert (v1.filename, v2.filename) == ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")
    assert v1.url == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert v2.url == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert "IMAGENET1K_V1" in v1.weights and "IMAGENET1K_V2" in v2.weights
    assert P.IMAGENET_ALIASES["imagenet"] == "imagenet-v1"
    assert P.hash_prefix_of(v1.filename) == "0676ba61" and P.hash_prefix_of(v2.filename) == "11ad3fa6"
    assert P.hash_prefix_of("best.pt") is None
    assert P.HASH_REGEX.pattern == torch.hub.HASH_REGEX.pattern


def test_cached_file_whose_sha256_does_not_match_its_name_is_rejected(hub, pth_file, pth_digest):
    hub.mkdir(parents=True)
    shutil.copy(pth_file, hub / "resnet50-0676ba61.pth")  # torchvision's name, other content
    assert not pth_digest.startswith("0676ba61")
    with pytest.raises(PretrainedError, match=r"resnet50-0676ba61\.pth fails its hash check") as e:
        P.imagenet_checkpoint_path("imagenet")
    assert "0676ba61" in str(e.value) and pth_digest in str(e.value)
    with pytest.raises(PretrainedError, match="fails its hash check"):
        P.load_pretrained(nn.Linear(1, 1), "imagenet-v1")


def test_offline_missing_checkpoint_says_which_file_to_put_where(hub, monkeypatch):
    calls = []

    def offline_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline_download)
    url = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    with pytest.raises(PretrainedError) as e:
        P.imagenet_checkpoint_path("imagenet-v2")
    msg = str(e.value)
    assert "resnet50-11ad3fa6.pth" in msg and str(hub) in msg and url in msg and "offline" in msg
    assert calls == [(url, str(hub / "resnet50-11ad3fa6.pth"), "11ad3fa6")]

    with pytest.raises(PretrainedError) as e:  # download=False: same instructions, no attempt
        P.imagenet_checkpoint_path("imagenet-v2", download=False)
    assert "resnet50-11ad3fa6.pth" in str(e.value) and str(hub) in str(e.value) and url in str(e.value)
    assert len(calls) == 1
    with pytest.raises(PretrainedError, match="unknown pretrained checkpoint 'imagenet-v9'"):
        P.imagenet_checkpoint_path("imagenet-v9")


def test_checkpoint_named_by_its_own_hash_downloads_caches_and_loads(
    hub, pth_file, pth_digest, source_outputs, target3, monkeypatch
):
    digest = pth_digest
    name = f"resnet50-{digest[:8]}.pth"
    url = f"https://example.invalid/models/{name}"
    monkeypatch.setitem(P.IMAGENET_CHECKPOINTS, "imagenet-v1", HubCheckpoint("imagenet-v1", "test", name, url))
    calls = []

    def fake_download(u, dst, hash_prefix=None, progress=True):  # torch.hub's contract
        calls.append((u, hash_prefix))
        if not digest.startswith(hash_prefix):
            raise RuntimeError(f'invalid hash value (expected "{hash_prefix}")')
        shutil.copy(pth_file, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert P.imagenet_checkpoint_path("imagenet") == hub / name
    assert calls == [(url, digest[:8])]
    assert P.imagenet_checkpoint_path("imagenet-v1", download=False) == hub / name  # cached, verified
    assert len(calls) == 1

    model = target3
    report = P.load_pretrained(model, "imagenet", num_classes=3)
    assert report == {"source": str(hub / name), "file": str(hub / name),
                      "loaded_keys": 318, "head_reinitialised": True}
    torch.testing.assert_close(features(model), source_outputs[0])
    assert model.fc.weight.shape == (3, 2048)

    # a download whose content does not match the name's prefix is refused
    (hub / name).unlink()
    bad = f"resnet50-{'0' if digest[0] != '0' else '1'}{digest[1:8]}.pth"
    monkeypatch.setitem(P.IMAGENET_CHECKPOINTS, "imagenet-v1", HubCheckpoint("imagenet-v1", "test", bad, url))
    with pytest.raises(PretrainedError, match="failed its SHA-256 check"):
        P.imagenet_checkpoint_path("imagenet")
    assert not (hub / bad).exists()


# -- weight files and the head ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pth", "pt-model", "safetensors", "run-folder"])
def test_weight_files_reproduce_the_backbone_and_replace_the_head(
    fmt, tmp_path, source_model, source_outputs, pth_file, target3, target1000
):
    sd = source_model.state_dict()
    if fmt == "pth":
        source = pth_file
    elif fmt == "pt-model":
        source = tmp_path / "w.pt"
        torch.save({"model": sd, "epoch": 3, "monitor": "val_loss", "value": 0.5}, source)
    elif fmt == "safetensors":
        source = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(source))
    else:
        source = tmp_path / "run"
        (source / "checkpoints").mkdir(parents=True)
        torch.save({"model": sd, "epoch": 3}, source / "checkpoints" / "best.pt")

    model = target3
    report = P.load_pretrained(model, source, num_classes=3)
    assert report["head_reinitialised"] is True and report["loaded_keys"] == 318
    torch.testing.assert_close(features(model), source_outputs[0], rtol=0, atol=0)
    assert model.fc.weight.shape == (3, 2048)

    if fmt == "safetensors":  # same head shape: the head is loaded too, the logits are equal
        model = target1000
        report = P.load_pretrained(model, source, num_classes=1000)
        assert report["head_reinitialised"] is False and report["loaded_keys"] == 320
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(X), source_outputs[1], rtol=0, atol=0)
        before = model.fc.weight.clone()
        assert P.load_pretrained(model, sd, reset_head=True)["head_reinitialised"] is True
        assert not torch.equal(model.fc.weight, before)


def test_wrong_keys_and_shapes_are_listed_and_leave_the_model_unchanged(source_model, target3):
    sd = dict(source_model.state_dict())
    sd["layer1.0.conv1.wieght"] = sd.pop("layer1.0.conv1.weight")
    sd["layer4.2.bn3.bias"] = torch.zeros(7)
    sd["extra.scale"] = torch.ones(1)
    model = target3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PretrainedError) as e:
        P.load_pretrained(model, sd)
    msg = str(e.value)
    assert "missing keys (1): layer1.0.conv1.weight" in msg
    assert "unexpected keys (2)" in msg and "layer1.0.conv1.wieght" in msg and "extra.scale" in msg
    assert "shape mismatches (1): layer4.2.bn3.bias: source (7,) vs model (2048,)" in msg
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

    # greyscale models take RGB weights with the stem's filters summed over RGB (timm's adapt_input_conv)
    grey = resnet50(in_channels=1)
    report = P.load_pretrained(grey, source_model.state_dict())
    assert "summed over RGB" in report["input_conv"]
    assert torch.allclose(grey.conv1.weight, source_model.conv1.weight.sum(1, keepdim=True))
    with torch.device("meta"):  # a stem of another kernel size still fails before any tensor is touched
        small = resnet50(stem="small")
    with pytest.raises(PretrainedError, match=r"conv1\.weight: source \(64, 3, 7, 7\) vs model \(64, 3, 3, 3\)"):
        P.load_pretrained(small, source_model.state_dict())
    with pytest.raises(PretrainedError, match="neither a known checkpoint"):
        P.load_pretrained(grey, "no/such/file.pth")
    with pytest.raises(ValueError, match="3 outputs, the task 5 classes"):
        P.load_pretrained(resnet18(num_classes=3), {}, num_classes=5)


def test_state_dict_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "notes.pt"
    torch.save({"model": {"conv1.weight": "not a tensor"}}, bad)
    with pytest.raises(PretrainedError, match="notes.pt is not a state dict"):
        P.load_state_dict_file(bad)
    other = tmp_path / "w.onnx"
    other.write_bytes(b"x")
    with pytest.raises(PretrainedError, match=r"w\.onnx: unsupported"):
        P.load_state_dict_file(other)
    wrapped = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module.fc.weight": torch.ones(2, 2)}}, wrapped)
    assert list(P.load_state_dict_file(wrapped)) == ["fc.weight"]


# -- Keras ResNet-50 ----------------------------------------------------------------------------

KERAS_EPS = 1.001e-5
STAGES = ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512))


def keras_resnet50_arrays(classes=1000, seed=0):
    """Random weights with Keras' ResNet50 layer names and shapes (channels-last kernels, conv
    biases, batch-norm statistics with some tiny variances so that epsilon matters)."""
    rng = np.random.default_rng(seed)
    layers = {}

    def conv(name, kh, cin, cout):
        std = np.sqrt(2.0 / (kh * kh * cin))
        layers[name] = {"kernel": (rng.standard_normal((kh, kh, cin, cout)) * std).astype(np.float32),
                        "bias": rng.normal(0, 0.1, cout).astype(np.float32)}

    def bn(name, c):
        var = np.exp(rng.uniform(np.log(1e-6), np.log(2.0), c))
        layers[name] = {"gamma": (np.sqrt(var + KERAS_EPS) * rng.uniform(0.5, 1.0, c)).astype(np.float32),
                        "beta": rng.uniform(-0.2, 0.2, c).astype(np.float32),
                        "moving_mean": rng.normal(0, 0.1, c).astype(np.float32),
                        "moving_variance": var.astype(np.float32)}

    conv("conv1_conv", 7, 3, 64)
    bn("conv1_bn", 64)
    cin = 64
    for stage, blocks, planes in STAGES:
        for k in range(1, blocks + 1):
            p = f"conv{stage}_block{k}"
            if k == 1:
                conv(f"{p}_0_conv", 1, cin, 4 * planes)
                bn(f"{p}_0_bn", 4 * planes)
            conv(f"{p}_1_conv", 1, cin, planes)
            bn(f"{p}_1_bn", planes)
            conv(f"{p}_2_conv", 3, planes, planes)
            bn(f"{p}_2_bn", planes)
            conv(f"{p}_3_conv", 1, planes, 4 * planes)
            bn(f"{p}_3_bn", 4 * planes)
            cin = 4 * planes
    if classes:
        layers["predictions"] = {"kernel": rng.normal(0, 0.02, (2048, classes)).astype(np.float32),
                                 "bias": rng.normal(0, 0.1, classes).astype(np.float32)}
    return layers


def legacy_name(name):
    """keras_applications/resnet50.py's names: conv1, bn_conv1, res2a_branch2a, bn2a_branch1, fc1000."""
    if name in ("conv1_conv", "conv1_bn"):
        return {"conv1_conv": "conv1", "conv1_bn": "bn_conv1"}[name]
    if name == "predictions":
        return "fc1000"
    stage, block, branch, kind = name[4], int(name.split("_")[1][5:]), name.split("_")[2], name.split("_")[3]
    return f"{'res' if kind == 'conv' else 'bn'}{stage}{chr(96 + block)}_branch{['1', '2a', '2b', '2c'][int(branch)]}"


def write_keras_h5(path, layers, layout="weights", rename=lambda n: n):
    """Keras 2's HDF5 layout. ``weights``: save_weights (layer groups at the top, the Applications
    files); ``nested``: a full-model save (``model_weights``) of a model holding the ResNet as one
    nested layer ``resnet50`` plus a custom dense head."""
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"

        def layer_group(root, group_name, weights):
            g = root.create_group(group_name)
            names = [f"{layer}/{var}:0" for layer, arrays in weights for var in arrays]
            g.attrs["weight_names"] = np.array([n.encode() for n in names]) if names else np.asarray([])
            for layer, arrays in weights:
                for var, a in arrays.items():
                    g.create_dataset(f"{layer}/{var}:0", data=a)

        if layout == "weights":
            names = ["input_1", "conv1_pad"] + [rename(n) for n in layers]
            f.attrs["layer_names"] = np.array([n.encode() for n in names])
            layer_group(f, "input_1", [])
            layer_group(f, "conv1_pad", [])
            for n, arrays in layers.items():
                layer_group(f, rename(n), [(rename(n), arrays)])
        else:
            root = f.create_group("model_weights")
            root.attrs["layer_names"] = np.array([b"input_1", b"resnet50", b"dense_head"])
            layer_group(root, "input_1", [])
            layer_group(root, "resnet50", list(layers.items()))
            layer_group(root, "dense_head", [("dense_head", {"kernel": np.zeros((2048, 3), np.float32),
                                                             "bias": np.zeros(3, np.float32)})])


def keras_reference_forward(layers, x, eps=KERAS_EPS):
    """ResNet-50 computed directly from the Keras arrays with Keras' semantics (conv biases,
    BN epsilon 1.001e-5, zero padding before the valid 7x7 conv and the valid max-pool), in
    float64 -- except the stride of a down-sampling block, which sits in the 3x3 conv as in our
    v1.5 model (Keras' v1 puts it in the first 1x1). Returns (features, logits)."""
    w = {n: {v: torch.from_numpy(np.asarray(a, np.float64)) for v, a in d.items()} for n, d in layers.items()}

    def conv(x, name, stride=1, pad=0):
        return F.conv2d(x, w[name]["kernel"].permute(3, 2, 0, 1), w[name]["bias"], stride, pad)

    def bn(x, name):
        d = {k: v.view(1, -1, 1, 1) for k, v in w[name].items()}
        return (x - d["moving_mean"]) / torch.sqrt(d["moving_variance"] + eps) * d["gamma"] + d["beta"]

    x = x.double()
    x = F.relu(bn(conv(F.pad(x, (3, 3, 3, 3)), "conv1_conv", stride=2), "conv1_bn"))
    x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)
    for stage, blocks, _ in STAGES:
        for k in range(1, blocks + 1):
            p = f"conv{stage}_block{k}"
            stride = 2 if k == 1 and stage > 2 else 1
            shortcut = bn(conv(x, f"{p}_0_conv", stride), f"{p}_0_bn") if k == 1 else x
            y = F.relu(bn(conv(x, f"{p}_1_conv"), f"{p}_1_bn"))
            y = F.relu(bn(conv(y, f"{p}_2_conv", stride, pad=1), f"{p}_2_bn"))
            y = bn(conv(y, f"{p}_3_conv"), f"{p}_3_bn")
            x = F.relu(y + shortcut)
    logits = x.mean((2, 3)) @ w["predictions"]["kernel"] + w["predictions"]["bias"]
    return x, logits


@pytest.fixture(scope="module")
def keras_layers():
    return keras_resnet50_arrays()


@pytest.fixture(scope="module")
def keras_h5(tmp_path_factory, keras_layers):
    path = tmp_path_factory.mktemp("keras") / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    write_keras_h5(path, keras_layers)
    return path


@pytest.fixture(scope="module")
def keras_sd(keras_h5):
    return convert_keras_resnet50(keras_h5)


def test_keras_conversion_covers_every_layer_and_folds_bias_and_epsilon(keras_h5, keras_sd, keras_layers):
    sd = keras_sd
    expected = resnet50_shapes()
    assert list(sd) == list(expected)  # all 53 convs, 53 BNs and the classifier, in order
    assert {k: v.shape for k, v in sd.items()} == expected
    assert sum(k.endswith("conv1.weight") or k.endswith("conv2.weight") or k.endswith("conv3.weight")
               or k.endswith("downsample.0.weight") for k in sd) == 53
    assert all(v.dtype == torch.float32 for v in sd.values())

    k = keras_layers
    torch.testing.assert_close(sd["layer2.0.conv2.weight"],
                               torch.from_numpy(k["conv3_block1_2_conv"]["kernel"]).permute(3, 2, 0, 1))
    torch.testing.assert_close(sd["fc.weight"], torch.from_numpy(k["predictions"]["kernel"]).T)
    bn, conv = k["conv4_block1_0_bn"], k["conv4_block1_0_conv"]
    torch.testing.assert_close(sd["layer3.0.downsample.1.running_mean"],
                               torch.from_numpy(bn["moving_mean"].astype(np.float64) - conv["bias"]).float())
    torch.testing.assert_close(sd["layer3.0.downsample.1.running_var"],
                               torch.from_numpy(bn["moving_variance"].astype(np.float64) + 1.001e-5 - 1e-5).float(),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(sd["bn1.weight"], torch.from_numpy(k["conv1_bn"]["gamma"]))


def test_converted_keras_weights_match_a_reference_forward_pass(keras_h5, keras_layers, target1000):
    ref_features, ref_logits = keras_reference_forward(keras_layers, X)
    scale_f, scale_l = ref_features.abs().max().item(), ref_logits.abs().max().item()

    model = target1000
    report = P.load_pretrained(model, keras_h5, num_classes=1000)
    assert report["head_reinitialised"] is False and report["loaded_keys"] == 267  # no counters
    with torch.no_grad():
        model.eval()
        feats, logits = model.forward_features(X), model(X)
    torch.testing.assert_close(feats.double(), ref_features, rtol=1e-4, atol=1e-5 * scale_f)
    torch.testing.assert_close(logits.double(), ref_logits, rtol=1e-4, atol=1e-5 * scale_l)

    # the test can see the folds: without the epsilon correction the outputs drift beyond it
    unfolded = {k: v - (1.001e-5 - 1e-5) if k.endswith("running_var") else v
                for k, v in model.state_dict().items()}
    model.load_state_dict(unfolded)
    with torch.no_grad():
        drift = (model.forward_features(X).double() - ref_features).abs().max().item()
    assert drift > 10 * 1e-5 * scale_f


def test_keras_full_model_nested_notop_and_legacy_names(tmp_path, keras_sd, keras_layers, target3):
    reference = keras_sd

    notop = {n: a for n, a in keras_layers.items() if n != "predictions"}
    nested = tmp_path / "finetuned.h5"
    write_keras_h5(nested, notop, layout="nested")
    with pytest.warns(UserWarning, match="skipped 1 weighted layers.*dense_head"):
        sd = convert_keras_resnet50(nested)
    assert list(sd) == [k for k in reference if not k.startswith("fc.")]
    assert all(torch.equal(sd[k], reference[k]) for k in sd)
    assert P.load_pretrained(target3, sd)["head_reinitialised"] is True

    legacy = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    write_keras_h5(legacy, keras_layers, rename=legacy_name)
    sd = convert_keras_resnet50(legacy, rgb_input=True)  # legacy names -> Keras' default BN epsilon, 1e-3
    assert list(sd) == list(reference)
    for k, v in sd.items():
        if k == "conv1.weight":  # rgb_input: the input channels reversed (BGR -> RGB)
            assert torch.equal(v, reference[k][:, [2, 1, 0]])
        elif k.endswith("running_var"):
            torch.testing.assert_close(v, reference[k] + (1e-3 - 1.001e-5))
        else:
            assert torch.equal(v, reference[k]), k

    broken = tmp_path / "broken.h5"
    write_keras_h5(broken, {n: a for n, a in keras_layers.items() if n != "conv4_block3_2_bn"})
    with pytest.raises(PretrainedError, match=r"broken\.h5 does not convert.*layer3\.2\.bn2\.weight"):
        convert_keras_resnet50(broken)


# -- fine-tuning helpers ------------------------------------------------------------------------


def test_freeze_backbone_trains_only_the_head_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model = resnet18(num_classes=3)
    P.freeze_backbone(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}

    def bn_stats():
        return [t.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
                for t in (m.running_mean, m.running_var)]

    before = bn_stats()
    model.train()
    assert P.set_backbone_bn_eval(model) == 20
    model(X).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, bn_stats()))
    assert model.fc.weight.grad is not None and model.conv1.weight.grad is None
    assert model.training and not model.bn1.training

    model.train()  # without set_backbone_bn_eval a training forward updates the statistics
    with torch.no_grad():
        model(X)
    assert not all(torch.equal(a, b) for a, b in zip(before, bn_stats()))

    P.set_backbone_bn_eval(model)
    P.unfreeze_all(model)
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())

    head_bn = resnet18(num_classes=3, head_kind="bn").train()
    P.freeze_backbone(head_bn)
    assert head_bn.fc.layers[0].training and not head_bn.layer1[0].bn1.training
    assert head_bn.fc.layers[0].weight.requires_grad


def test_param_groups_with_lrs_split_head_and_backbone():
    model = resnet18(num_classes=3)
    groups = P.param_groups_with_lrs(model, 1e-3, 0.1, weight_decay=0.05)
    assert [g["name"] for g in groups] == ["head/decay", "head/no_decay", "backbone/decay", "backbone/no_decay"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0, 0.05, 0.0]
    assert [id(p) for p in groups[0]["params"]] == [id(model.fc.weight)]
    assert [id(p) for p in groups[1]["params"]] == [id(model.fc.bias)]
    assert all(p.ndim == 4 for p in groups[2]["params"]) and all(p.ndim == 1 for p in groups[3]["params"])
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])

    P.freeze_backbone(model)
    assert [g["name"] for g in P.param_groups_with_lrs(model, 1e-3, 0.1, weight_decay=0.05)] == ["head/decay", "head/no_decay"]
    with pytest.raises(ValueError, match="backbone_lr_mult"):
        P.param_groups_with_lrs(model, 1e-3, -1.0, weight_decay=0.0)
