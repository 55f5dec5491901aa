"""Export (medclass.serving): the bare ONNX graph matches eager PyTorch; `medclass export` (ONNX and
TorchScript, preprocessing baked in, spec stored inside) matches the run on real chest-ct images;
`predict --backend onnx` needs no PyTorch; broken exports give clear errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from medclass.cli.app import app  # noqa: E402
from medclass.core.config import RunConfig  # noqa: E402
from medclass.data import Preprocess, read_image  # noqa: E402
from medclass.engine import LoadedRun, load_run, train  # noqa: E402
from medclass.core.runs import RunFiles
from medclass.models import resnet18  # noqa: E402
from medclass.core.spec import ModelSpec  # noqa: E402
from medclass.serving import (  # noqa: E402
    ModelFileError, TorchClassifier, export_onnx, export_run, load_onnx_classifier,
    load_torchscript_classifier, onnx_session, spec_from_run,
)
from medclass.serving.onnx_backend import SPEC_KEY  # noqa: E402
from medclass.core.spec import update_calibration  # noqa: E402

from helpers import CHEST_CLASSES, CHEST_CT  # noqa: E402

SIZE = 32


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = resnet18(num_classes=3, in_channels=1)
    # One training-mode pass so the batch-norm running statistics are not the trivial (0, 1).
    with torch.no_grad():
        model.train()(torch.randn(8, 1, SIZE, SIZE))
    return model


def _torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_matches_pytorch(tmp_path, dynamo):
    model = _model()
    path = export_onnx(model, tmp_path / "sub" / "model.onnx", image_size=SIZE, channels=1, dynamo=dynamo)
    assert path == tmp_path / "sub" / "model.onnx" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temp or .data file left
    assert model.training  # mode restored

    session = onnx_session(path, threads=1, spinning=False)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type == "tensor(float)" and list(inp.shape[1:]) == [1, SIZE, SIZE]
    assert not isinstance(inp.shape[0], int)  # dynamic batch axis

    rng = np.random.default_rng(0)
    for batch in (1, 4):
        x = rng.standard_normal((batch, 1, SIZE, SIZE), dtype=np.float32)
        onnx_logits = session.run(None, {"input": x})[0]
        assert onnx_logits.shape == (batch, 3) and onnx_logits.dtype == np.float32
        assert np.abs(onnx_logits - _torch_logits(model, x)).max() < 1e-4


def test_changed_weight_changes_output(tmp_path):
    model = _model()
    x = np.random.default_rng(1).standard_normal((4, 1, SIZE, SIZE), dtype=np.float32)
    old = onnx_session(export_onnx(model, tmp_path / "m.onnx", SIZE, 1)).run(None, {"input": x})[0]
    with torch.no_grad():
        model.fc.weight.add_(0.5 * torch.randn_like(model.fc.weight))
    new_torch = _torch_logits(model, x)
    assert np.abs(old - new_torch).max() > 1e-2  # the stale export no longer matches
    new = onnx_session(export_onnx(model, tmp_path / "m.onnx", SIZE, 1)).run(None, {"input": x})[0]
    assert np.abs(new - new_torch).max() < 1e-4  # re-export replaced the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_errors(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match="image_size"):
        export_onnx(model, tmp_path / "m.onnx", image_size=0, channels=1)
    with pytest.raises(ValueError, match="channels"):
        export_onnx(model, tmp_path / "m.onnx", image_size=SIZE, channels=1.5)
    with pytest.raises(FileNotFoundError):
        onnx_session(tmp_path / "missing.onnx")
    assert list(tmp_path.iterdir()) == []


# ---- medclass export: whole runs, preprocessing baked in, spec inside; the ONNX/TorchScript backends ----


CHEST_TEST = CHEST_CT / "test"
RUN_SIZE = 32
TRAIN_PER_CLASS, HELD_PER_CLASS = 6, 4  # trained on the first 6 test images of each class; predict the next 4
MEAN, STD = [0.45, 0.5, 0.55], [0.22, 0.25, 0.28]
TEMPERATURE = 1.6


def needs_chest(test):
    """Marks a test that runs on the real chest-ct run (`chest_run`): integration, skipped without the data."""
    skip = pytest.mark.skipif(not CHEST_TEST.is_dir(), reason=f"real data not available: {CHEST_TEST}")
    return pytest.mark.integration(skip(test))


def _class_files(cls: str) -> list[Path]:
    return sorted(p for p in (CHEST_TEST / cls).iterdir() if p.is_file())


def _held_out_paths() -> list[Path]:
    return [p for c in CHEST_CLASSES for p in _class_files(c)[TRAIN_PER_CLASS : TRAIN_PER_CLASS + HELD_PER_CLASS]]


@pytest.fixture(scope="module")
def chest_run(tmp_path_factory):
    """A tiny ResNet-18 run trained one epoch on 24 real chest-ct images (32 px, RGB, normalised
    with per-channel mean/std), calibrated (temperature), exported with `medclass export` to both
    formats at their default paths. Returns (run_dir, export seconds per format)."""
    if not CHEST_TEST.is_dir():
        pytest.skip("../shared/data/chest-ct is not available")
    root = tmp_path_factory.mktemp("chest")
    for cls in CHEST_CLASSES:
        (root / "data" / cls).mkdir(parents=True)
        for p in _class_files(cls)[:TRAIN_PER_CLASS]:
            shutil.copy(p, root / "data" / cls / p.name)
    cfg = RunConfig()
    cfg.data.source = str(root / "data")
    cfg.data.image_size, cfg.data.channels = RUN_SIZE, 3
    cfg.data.val_fraction = cfg.data.test_fraction = 0.25
    cfg.data.normalize, cfg.data.mean, cfg.data.std = True, MEAN, STD
    cfg.model.arch, cfg.model.stem = "resnet18", "small"
    cfg.train.batch_size, cfg.train.epochs, cfg.train.progress = 8, 1, False
    run_dir = root / "run"
    train(cfg, run_dir)
    update_calibration(run_dir, TEMPERATURE, None)  # what `medclass evaluate` stores in the run's spec
    seconds = {}
    for fmt in ("onnx", "torchscript"):
        t0 = time.perf_counter()
        result = CliRunner().invoke(app, ["export", str(run_dir), "--format", fmt])
        seconds[fmt] = time.perf_counter() - t0
        assert result.exit_code == 0, result.output
        assert "checked: probabilities match PyTorch" in result.output
    return run_dir, seconds


@pytest.fixture(scope="module")
def real_images():
    """16 held-out real chest-ct test images (4 per class), as the run reads them: uint8 (16, 32, 32, 3)."""
    return np.stack([read_image(p, 3, RUN_SIZE) for p in _held_out_paths()])


@needs_chest
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_probabilities_equal_pytorch_on_real_images(chest_run, real_images, fmt, record_property):
    run_dir, seconds = chest_run
    reference = TorchClassifier(load_run(run_dir))
    expected = reference.predict_proba(real_images)
    assert expected.shape == (16, 4) and expected.dtype == np.float32
    loader = load_onnx_classifier if fmt == "onnx" else load_torchscript_classifier
    exported = loader(run_dir / "export" / ("model.onnx" if fmt == "onnx" else "model.pt"))
    assert exported.can_explain is False and reference.can_explain is True
    got = exported.predict_proba(real_images)
    assert got.shape == (16, 4) and got.dtype == np.float32
    diff = float(np.abs(got - expected).max())
    record_property(f"max_prob_diff_{fmt}", diff)
    record_property(f"export_seconds_{fmt}", seconds[fmt])
    print(f"\n{fmt}: max |p_exported - p_torch| = {diff:.2e} on 16 real chest-ct images; export {seconds[fmt]:.1f} s")
    assert diff < 1e-4
    np.testing.assert_array_equal(exported.spec.decide(got), reference.spec.decide(expected))
    # batch of one (dynamic batch axis) and test-time augmentation agree too
    assert np.abs(exported.predict_proba(real_images[:1]) - expected[:1]).max() < 1e-4
    tta_exported = loader(exported.path, tta=("hflip",)).predict_proba(real_images)
    tta_torch = TorchClassifier(load_run(run_dir), tta=("hflip",)).predict_proba(real_images)
    assert np.abs(tta_exported - tta_torch).max() < 1e-4
    assert np.abs(tta_exported - got).max() > 0  # the flip view did count


@needs_chest
def test_stored_spec_round_trips(chest_run):
    run_dir, _ = chest_run
    spec = spec_from_run(load_run(run_dir))
    assert spec.class_names == CHEST_CLASSES
    assert (spec.channels, spec.image_size, spec.temperature, spec.threshold) == (3, RUN_SIZE, TEMPERATURE, None)
    np.testing.assert_allclose(spec.mean, MEAN, rtol=1e-6)
    np.testing.assert_allclose(spec.std, STD, rtol=1e-6)
    assert spec.single_logit is False and spec.run == "run" and spec.checkpoint_epoch == 1
    onnx_cls = load_onnx_classifier(run_dir / "export" / "model.onnx")
    ts_cls = load_torchscript_classifier(run_dir / "export" / "model.pt")
    assert onnx_cls.spec == spec and ts_cls.spec == spec
    assert ModelSpec.from_json(spec.to_json()) == spec
    # the graph: uint8 NCHW "image" with a dynamic batch, raw logits and calibrated probabilities
    session = onnx_cls.session
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and list(inp.shape[1:]) == [3, RUN_SIZE, RUN_SIZE]
    assert not isinstance(inp.shape[0], int)
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    x = np.random.default_rng(0).integers(0, 256, (3, 3, RUN_SIZE, RUN_SIZE), dtype=np.uint8)
    logits, probs = session.run(None, {"image": x})
    np.testing.assert_allclose(probs, spec.probabilities(logits), atol=1e-6)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(run_dir / "export" / "model.onnx")).metadata_props}
    assert ModelSpec.from_json(meta[SPEC_KEY]) == spec


@needs_chest
def test_torch_classifier_interface(chest_run, real_images):
    run_dir, _ = chest_run
    clf = TorchClassifier(load_run(run_dir))
    probs = clf.predict_proba(real_images[:5])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    heat = clf.explain(real_images[0])
    assert heat.shape == (RUN_SIZE, RUN_SIZE) and heat.dtype == np.float32
    predicted = int(clf.spec.decide(clf.predict_proba(real_images[:1]))[0])
    np.testing.assert_allclose(clf.explain(real_images[0], class_idx=predicted), heat, atol=1e-6)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    with pytest.raises(ValueError, match=r"uint8 \(N, 32, 32, 3\)"):
        clf.predict_proba(real_images[:, :16])
    with pytest.raises(ValueError, match="uint8"):
        clf.predict_proba(real_images.astype(np.float32))
    with pytest.raises(ValueError, match="test-time augmentation"):
        TorchClassifier(clf.run, tta=("rotate",))


def _cli_predict(*args: str):
    return CliRunner().invoke(app, ["predict", *args])


@needs_chest
def test_cli_backends_agree(chest_run, tmp_path):
    run_dir, _ = chest_run
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    files = [str(p) for p in _held_out_paths()] + [str(bad)]
    out = {}
    for backend, target in (("torch", run_dir), ("onnx", run_dir), ("torchscript", run_dir),
                            ("onnx", run_dir / "export" / "model.onnx")):
        r = _cli_predict(str(target), *files, "--backend", backend, "--format", "json")
        assert r.exit_code == 1 and "1 of 17 files failed" in r.output, r.output  # one broken file: exit 1
        out[(backend, target.name)] = json.loads(r.stdout)
    torch_preds = out[("torch", "run")]
    assert len(torch_preds) == 17 and torch_preds[-1]["error"] and "broken.png" in torch_preds[-1]["error"]
    for key, preds in out.items():
        assert [p["path"] for p in preds] == [p["path"] for p in torch_preds]
        assert [p["predicted"] for p in preds] == [p["predicted"] for p in torch_preds], key
        assert [p["error"] for p in preds] == [p["error"] for p in torch_preds]
        for p, q in zip(preds[:-1], torch_preds[:-1]):
            assert max(abs(p["probabilities"][n] - q["probabilities"][n]) for n in CHEST_CLASSES) < 1e-4
    # table and csv: the same lines but for the last digits of the probabilities; same exit codes
    for fmt in ("table", "csv"):
        t = _cli_predict(str(run_dir), *files[:3], str(bad), "--format", fmt).stdout
        o = _cli_predict(str(run_dir), *files[:3], str(bad), "--format", fmt, "--backend", "onnx").stdout
        assert re.sub(r"\d\.\d+", "p", t) == re.sub(r"\d\.\d+", "p", o) and len(t.splitlines()) == 5
    for backend in ("torch", "onnx"):
        r = _cli_predict(str(run_dir), str(bad), "--backend", backend)
        assert r.exit_code == 1 and "ERROR: cannot read image" in r.stdout


@needs_chest
def test_onnx_predict_does_not_import_torch(chest_run):
    run_dir, _ = chest_run
    script = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from medclass.cli.app import app\n"
        "r = CliRunner().invoke(app, ['predict', sys.argv[1], *sys.argv[2:], '--backend', 'onnx', '--format', 'json'])\n"
        "from medclass.serving import load_onnx_classifier\n"
        "import medclass.data.io\n"
        "print(json.dumps({'code': r.exit_code, 'out': r.stdout, 'modules': sorted(sys.modules)}))\n"
    )
    files = [str(p) for p in _held_out_paths()[:3]]
    proc = subprocess.run([sys.executable, "-c", script, str(run_dir), *files], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, result["out"]
    assert [p["predicted"] in CHEST_CLASSES for p in json.loads(result["out"])] == [True] * 3
    heavy = [m for m in result["modules"] if m.split(".")[0] in ("torch", "kornia", "monai", "matplotlib")]
    assert heavy == [], heavy
    assert "onnxruntime" in result["modules"]


@needs_chest
def test_cli_usage_errors(chest_run, tmp_path):
    run_dir, _ = chest_run
    img = str(_held_out_paths()[0])
    r = _cli_predict(str(run_dir), img, "--backend", "onnx", "--explain", str(tmp_path / "cam"))
    assert r.exit_code == 2 and "--explain needs the torch backend" in r.output
    r = _cli_predict(str(run_dir), img, "--backend", "tensorrt")
    assert r.exit_code == 2 and "--backend must be" in r.output
    unexported = tmp_path / "run2"
    shutil.copytree(run_dir, unexported, ignore=shutil.ignore_patterns("export"))
    r = _cli_predict(str(unexported), img, "--backend", "onnx")
    assert r.exit_code == 2 and f"medclass export {unexported} --format onnx" in r.output
    r = _cli_predict(str(unexported), img, "--backend", "torchscript")
    assert r.exit_code == 2 and "--format torchscript" in r.output
    r = CliRunner().invoke(app, ["export", str(run_dir), "--format", "tflite"])
    assert r.exit_code == 2 and "--format must be onnx or torchscript" in r.output
    r = CliRunner().invoke(app, ["export", str(tmp_path), "--format", "onnx"])
    assert r.exit_code == 2 and "not a medclass run folder" in r.output
    r = _cli_predict(str(run_dir / "export" / "model.onnx"), img)
    assert r.exit_code == 2 and "add --backend onnx" in r.output
    r = _cli_predict(str(tmp_path / "nothing.onnx"), img, "--backend", "onnx")
    assert r.exit_code == 2 and "nothing.onnx" in r.output and "medclass export" in r.output


def _tiny_onnx(path: Path, metadata: dict) -> Path:
    """A one-node ONNX model (Identity) with the given metadata, written without an exporter."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.UINT8, ["N", 1, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def test_bad_onnx_exports_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx.*medclass export"):
        load_onnx_classifier(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model")
    with pytest.raises(ModelFileError, match=r"notes\.onnx is not a usable ONNX model.*medclass export"):
        load_onnx_classifier(text)
    with pytest.raises(ModelFileError, match=r"bare\.onnx has no medclass model spec.*medclass export"):
        load_onnx_classifier(_tiny_onnx(tmp_path / "bare.onnx", {}))
    with pytest.raises(ModelFileError, match=r"garbled\.onnx: invalid medclass model spec.*not JSON"):
        load_onnx_classifier(_tiny_onnx(tmp_path / "garbled.onnx", {SPEC_KEY: "{nope"}))
    incomplete = json.dumps({"channels": 1, "image_size": 4})
    with pytest.raises(ModelFileError, match="incomplete"):
        load_onnx_classifier(_tiny_onnx(tmp_path / "incomplete.onnx", {SPEC_KEY: incomplete}))
    wrong = ModelSpec(class_names=["a", "b"], channels=3, image_size=4).to_json()  # graph takes 1 channel
    with pytest.raises(ModelFileError, match=r"does not take 'image' uint8 \(N, 3, 4, 4\)"):
        load_onnx_classifier(_tiny_onnx(tmp_path / "wrong.onnx", {SPEC_KEY: wrong}))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_bad_torchscript_exports_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt.*--format torchscript"):
        load_torchscript_classifier(tmp_path / "missing.pt")
    checkpoint = tmp_path / "best.pt"  # a training checkpoint is a pickle, not TorchScript
    torch.save({"model": {}, "epoch": 1}, checkpoint)
    with pytest.raises(ModelFileError, match=r"best\.pt is not a TorchScript model.*medclass export"):
        load_torchscript_classifier(checkpoint)
    scripted = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(scripted))
    with pytest.raises(ModelFileError, match=r"bare\.pt has no medclass model spec"):
        load_torchscript_classifier(scripted)
    garbled = tmp_path / "garbled.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(garbled), _extra_files={"medclass_spec.json": "[1]"})
    with pytest.raises(ModelFileError, match="invalid medclass model spec"):
        load_torchscript_classifier(garbled)


class _TinyCNN(torch.nn.Module):
    """A small CNN (fast to export): ``outputs`` logits from ``channels``-channel images."""

    def __init__(self, outputs: int = 1, channels: int = 1) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_single_logit_run_with_threshold_exports(tmp_path):
    """A binary single-logit run, greyscale, not normalised, with an operating threshold."""
    torch.manual_seed(0)
    run_dir = tmp_path / "binary-run"
    run_dir.mkdir()
    cfg = RunConfig()
    cfg.data.image_size, cfg.data.channels, cfg.data.dicom_window = 24, 1, [-600, 1500]
    cfg.model.single_logit = True  # the run's config says what its network emits (no probing forward pass)
    model = _TinyCNN()
    with torch.no_grad():
        model.train()(torch.rand(8, 1, 24, 24))
    model.eval()
    (run_dir / "calibration.json").write_text(json.dumps({"temperature": 0.8, "threshold": {"threshold": 0.3}}))
    run = LoadedRun(RunFiles(run_dir), cfg, ["benign", "malignant"], model, Preprocess(), torch.device("cpu"), 7)
    reference = TorchClassifier(run)
    spec = reference.spec
    assert spec.single_logit and spec.mean is None and spec.std is None and spec.threshold == 0.3
    assert spec.dicom_window == [-600.0, 1500.0] and spec.checkpoint_epoch == 7 and spec.temperature == 0.8
    images = np.random.default_rng(0).integers(0, 256, (9, 24, 24, 1), dtype=np.uint8)
    expected = reference.predict_proba(images)
    for fmt, loader in (("onnx", load_onnx_classifier), ("torchscript", load_torchscript_classifier)):
        result = export_run(run, fmt, out=tmp_path / f"m.{fmt}")
        assert result.max_prob_diff is not None and result.max_prob_diff < 1e-4
        exported = loader(result.path)
        assert exported.spec == spec
        assert np.abs(exported.predict_logits(images) - reference.predict_logits(images)).max() < 1e-4
        got = exported.predict_proba(images)
        assert got.shape == (9, 2) and np.abs(got - expected).max() < 1e-4
        np.testing.assert_array_equal(spec.decide(got), (expected[:, 1] >= 0.3).astype(np.int64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary-run", "m.onnx", "m.torchscript"]  # no temp files


def test_ensemble_run_exports(tmp_path):
    """An ensemble run (identity preprocessing, members normalising inside the model) exports too."""
    from medclass.engine.run import _Normalise
    from medclass.models import SoftVotingEnsemble

    members = []
    for seed, (mean, std) in enumerate((([0.5], [0.25]), ([0.4], [0.3]))):
        torch.manual_seed(seed)
        member = _TinyCNN(outputs=3)
        with torch.no_grad():
            member.train()(torch.rand(8, 1, 20, 20))
        members.append(torch.nn.Sequential(_Normalise(Preprocess(mean, std)), member.eval()))
    cfg = RunConfig()
    cfg.data.image_size, cfg.data.channels = 20, 1
    model = SoftVotingEnsemble(members, [0.3, 0.7]).eval()
    run = LoadedRun(RunFiles(tmp_path / "ens"), cfg, ["x", "y", "z"], model, Preprocess(), torch.device("cpu"), -1)
    reference = TorchClassifier(run)
    assert reference.spec.mean is None and reference.spec.checkpoint_epoch == -1 and not reference.spec.single_logit
    images = np.random.default_rng(1).integers(0, 256, (6, 20, 20, 1), dtype=np.uint8)
    expected = reference.predict_proba(images)
    for fmt, loader in (("onnx", load_onnx_classifier), ("torchscript", load_torchscript_classifier)):
        result = export_run(run, fmt)
        assert result.path == tmp_path / "ens" / "export" / ("model.onnx" if fmt == "onnx" else "model.pt")
        assert np.abs(loader(result.path).predict_proba(images) - expected).max() < 1e-4
