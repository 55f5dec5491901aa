"""medclass: train, evaluate and use image classifiers for medical images.

Stages, each a package, with dependencies pointing one way:
``config`` <- ``data`` <- ``models`` <- ``engine`` <- ``evaluation`` <- ``cli``.

The Python API (:mod:`medclass.api`), for notebooks and scripts::

    import medclass
    run = medclass.train("data/chest-ct", epochs=20)   # -> medclass.Run
    run.evaluate(); run.predict(["scan.png"]); run.explain("scan.png"); run.export("onnx"); run.report()
    medclass.configure(epochs=20, **{"train.lr": 3e-4})  # -> medclass.RunConfig
    medclass.load("runs/NAME")                          # an existing run

``import medclass`` stays light: the API's names are looked up on first use, and PyTorch is imported
only by the calls that need it. (``medclass.config`` is the configuration module; the function
that builds a configuration is :func:`medclass.configure`.)
"""

__version__ = "0.1.0"

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
        from . import config

        return getattr(config, name)
    if name in _RUNS:
        from . import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'medclass' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
