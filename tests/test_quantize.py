"""``medclass export RUN --format onnx --quantize int8``: static QDQ quantization calibrated on the
run's validation images, accuracy beside FP32, refused past the tolerance unless --force.

The run is a custom CNN trained for two epochs on 16 px synthetic images (seconds on a CPU).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medclass.cli.app import app
from medclass.serving import quantize as quantize_module

from helpers import make_folder_dataset, tiny_config

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from medclass.engine import train

    root = tmp_path_factory.mktemp("int8")
    data = make_folder_dataset(root / "data", per_class=16)
    cfg = tiny_config(data, epochs=2)
    cfg.model.arch, cfg.model.cnn_widths = "custom_cnn", [8, 16]
    return train(cfg, root / "runs" / "q").files.root


def export(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def test_int8_export_reports_accuracy_beside_fp32_and_writes_a_qdq_model(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    r = export(str(run), "--format", "onnx", "--quantize", "int8", "--tolerance", "100")
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "valid accuracy (n=" in r.output and "test accuracy (n=" in r.output
    assert "FP32" in r.output and "INT8" in r.output and "images/s" in r.output
    int8 = run / "export" / "model.int8.onnx"
    assert int8.is_file() and (run / "export" / "model.onnx").is_file()
    proto = onnx.load(str(int8))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert any(i.data_type == onnx.TensorProto.INT8 for i in proto.graph.initializer)  # int8 weights
    # activations in uint8 (ONNX Runtime's U8S8, its fast x86 kernels): the zero points of the
    # activation QuantizeLinear nodes are uint8
    inits = {i.name: i for i in proto.graph.initializer}
    act_zero_points = [inits[n.input[2]].data_type for n in proto.graph.node
                       if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert act_zero_points and set(act_zero_points) == {onnx.TensorProto.UINT8}

    from medclass.serving.onnx_backend import load_onnx_classifier

    fp32 = load_onnx_classifier(run / "export" / "model.onnx")
    q = load_onnx_classifier(int8)
    assert q.spec == fp32.spec  # the run's spec travels inside
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    p8, p32 = q.predict_proba(images), fp32.predict_proba(images)
    np.testing.assert_allclose(p8.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(p8 - p32).max() < 0.2  # close to FP32, yet not the same model
    assert not np.array_equal(p8, p32)


def test_int8_model_losing_more_than_the_tolerance_is_refused_unless_forced(run_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    real = quantize_module._accuracy_and_speed

    def int8_worse(path, images, labels):
        accuracy, speed = real(path, images, labels)
        return (accuracy - 0.05 if Path(path).name == "int8.onnx" else accuracy), speed

    monkeypatch.setattr(quantize_module, "_accuracy_and_speed", int8_worse)
    r = export(str(run), "--format", "onnx", "--quantize", "int8")
    assert r.exit_code == 2, r.output
    assert "loses 5.00 accuracy points" in r.output and "tolerance of 1" in r.output and "--force" in r.output
    assert not (run / "export" / "model.int8.onnx").exists()
    r = export(str(run), "--format", "onnx", "--quantize", "int8", "--force")
    assert r.exit_code == 0, r.output
    assert "written because of --force" in r.output and (run / "export" / "model.int8.onnx").is_file()


def test_quantize_needs_onnx_and_int8(run_dir):
    r = export(str(run_dir), "--format", "torchscript", "--quantize", "int8")
    assert r.exit_code == 2 and "needs --format onnx" in r.output
    r = export(str(run_dir), "--quantize", "int4")
    assert r.exit_code == 2 and "--quantize must be int8" in r.output


def test_calibration_reader_serves_equal_batches_and_strided_ranges():
    """ONNX Runtime's histogram (Percentile) calibration stacks a batch's outputs, so a short last
    batch failed ("inhomogeneous shape"); the reader trims to whole batches and serves ranges of
    batches for the strided, memory-bounded calibration."""
    images = np.arange(37 * 3 * 2 * 2, dtype=np.uint8).reshape(37, 3, 2, 2)
    reader = quantize_module.ValidationImages(images, batch=16)
    assert len(reader) == 2 and len(reader.images) == 32
    shapes = []
    while (b := reader.get_next()) is not None:
        shapes.append(b["image"].shape)
    assert shapes == [(16, 3, 2, 2)] * 2
    reader.set_range(1, 2)
    first = reader.get_next()["image"]
    assert np.array_equal(first, images[16:32]) and reader.get_next() is None
    small = quantize_module.ValidationImages(images[:5], batch=16)
    assert len(small) == 1 and small.get_next()["image"].shape == (5, 3, 2, 2)
    with pytest.raises(ValueError, match="no images"):
        quantize_module.ValidationImages(images[:0])
