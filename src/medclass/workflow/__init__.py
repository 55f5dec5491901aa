"""The workflows: one function per job that the command line (:mod:`medclass.cli`) and the Python API
(:mod:`medclass.api`) both call, so that ``medclass train`` and ``medclass.train(...)`` leave the same
run folder.

- :func:`train_run` (``medclass train``): train -> fit the out-of-distribution detector (``RUN/ood.json``)
  -> evaluate the best checkpoint on the final split (test; validation, with a warning, without one).
- :func:`predict` (``medclass predict``): image files or folders through one
  :class:`~medclass.serving.prediction.Predictor` (a run's checkpoint, an ONNX or a TorchScript export).
- :func:`export` (``medclass export``): a run's checkpoint as an ONNX or TorchScript file, checked
  against PyTorch, and optionally the INT8 ONNX model.
"""

from .jobs import ExportOutcome, TrainOutcome, export, predict, train_run

__all__ = ["TrainOutcome", "ExportOutcome", "train_run", "predict", "export"]
