"""Serving: export a trained classifier (ONNX, TorchScript), run it without PyTorch (ONNX Runtime),
and serve it over HTTP (FastAPI) with a web page.

Names are imported lazily (PEP 562), so the ONNX Runtime backend can be used in a process that never
imports PyTorch. :func:`load_predictor` opens a run folder or an exported file as a :class:`Predictor`.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS = {
    "export_onnx": "export",
    "onnx_session": "export",
    "export_run": "export",
    "ExportResult": "export",
    "default_export_path": "export",
    "spec_from_run": "predictor",
    "TorchClassifier": "predictor",
    "TorchScriptClassifier": "predictor",
    "load_torchscript_classifier": "predictor",
    "OnnxClassifier": "onnx_backend",
    "load_onnx_classifier": "onnx_backend",
    "ModelFileError": "onnx_backend",
    "Prediction": "prediction",
    "Predictor": "prediction",
    "load_predictor": "prediction",
    "predict_files": "prediction",
    "quantize_run": "quantize",
    "QuantizeResult": "quantize",
    "QuantizationRefused": "quantize",
    "DynamicBatcher": "batching",
    "BatchingOptions": "batching",
    "ServeOptions": "app",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
