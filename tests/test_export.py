"""ONNX export (medclass.serving): the exported graph matches eager PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from medclass.models import resnet18  # noqa: E402
from medclass.serving import export_onnx, onnx_session  # noqa: E402

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
