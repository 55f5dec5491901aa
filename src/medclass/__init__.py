"""medclass: train, evaluate and use image classifiers for medical images.

Packages by job, each importing only the ones below it (checked in CI by ``lint-imports``, the
``layers`` contract in ``pyproject.toml``)::

    api | cli          the Python API and the command line, at the top
    workflow           train -> OOD fit -> evaluate; predict; export: what both of them call
    serving            export, ONNX/TorchScript backends, the one Predictor, the web service
    evaluation         metrics, intervals, calibration, audit, Grad-CAM, OOD fit, report, model card
    engine             the training loop, the time budget, checkpoints, tracking
    data | models      reading images and splits | the networks and their weights
    core               torch-free: config, the run folder, the spec, the pipeline numbers, atomic writes

The Python API (:mod:`medclass.api`), for notebooks and scripts::

    import medclass
    run = medclass.train("data/chest-ct", epochs=20)   # -> medclass.Run
    run.evaluate(); run.predict(["scan.png"]); run.explain("scan.png"); run.export("onnx"); run.report()
    medclass.configure(epochs=20, **{"train.lr": 3e-4})  # -> medclass.RunConfig
    medclass.load("runs/NAME")                          # an existing run

``import medclass`` stays light: the API's names are looked up on first use, and PyTorch is imported
only by the calls that need it. (``medclass.core.config`` is the configuration module; the function
that builds a configuration is :func:`medclass.configure`.)
"""

from .core import __version__

#: The API's names (medclass.api), resolved lazily by __getattr__ below.
_API = ("configure", "train", "cv", "load", "Run", "Evaluation", "Predictions", "Explanation", "Figure", "Report")
_CONFIG = ("RunConfig", "ConfigError")
_RUNS = ("RunError",)

__all__ = ["__version__", *_API, *_CONFIG, *_RUNS]


def __getattr__(name: str):
    """``medclass.train`` and the other API names, imported on first access (PEP 562)."""
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in _CONFIG:
        from .core import config

        return getattr(config, name)
    if name in _RUNS:
        from .core import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'medclass' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
