"""Serving: export a trained classifier to ONNX and run it with ONNX Runtime."""

from __future__ import annotations

from .export import export_onnx, onnx_session

__all__ = ["export_onnx", "onnx_session"]
