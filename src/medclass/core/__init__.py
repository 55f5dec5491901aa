"""The torch-free core every other package stands on: what a run is, not how it is computed.

- :mod:`~medclass.core.config`: the run configuration (data, model, train), saved as YAML in every run.
- :mod:`~medclass.core.runs`: the run folder, every file name in it (:class:`~medclass.core.runs.RunFiles`),
  and :class:`~medclass.core.runs.RunError`.
- :mod:`~medclass.core.spec`: the run contract (:class:`~medclass.core.spec.ModelSpec`): inputs, classes,
  calibration, threshold.
- :mod:`~medclass.core.pipeline`: the numbers around the network (preprocessing, logits to decision).
- :mod:`~medclass.core.fileio`: atomic writes that never follow a planted symbolic link.
- :mod:`~medclass.core.progress`, :mod:`~medclass.core.positive_class`, :mod:`~medclass.core.weights`
  (where the offline ImageNet weights come from) and :mod:`~medclass.core.ood` (out-of-distribution scores
  and the stored detector, NumPy only).

Nothing here imports PyTorch, MONAI, kornia or scikit-learn at module level, so the command line can check
arguments, paths and configs in a fraction of a second before the heavy stages are imported.
"""

__version__ = "0.1.0"  # the package version (pyproject.toml [project] version); medclass.__version__
