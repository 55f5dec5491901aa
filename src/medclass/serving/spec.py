"""The model spec, under its old import path: :mod:`medclass.core.spec` holds :class:`ModelSpec` now
(the run contract, written by ``medclass train``); this module re-exports it so that
``from medclass.serving.spec import ModelSpec`` keeps working. Torch-free, as before.
"""

from __future__ import annotations

from ..core.spec import SPEC_VERSION, ModelSpec, probabilities_from_logits

__all__ = ["ModelSpec", "SPEC_VERSION", "probabilities_from_logits"]
