"""Checks of a command's arguments that need no heavy library: paths, configs, run folders.

The CLI calls these before it imports PyTorch, MONAI, kornia or scikit-learn, so a wrong path or
a bad ``--set`` is reported in a fraction of a second (``benchmarks/cli_latency.py`` times it)
instead of after the several seconds those imports take. Every check raises the same error the
later, heavy code would raise for the same fault (:class:`medclass.core.config.ConfigError`,
:class:`medclass.data.sources.DataError`, :class:`medclass.core.runs.RunError`), with a message that
names the path or key and says what to do.

Torch-free on purpose: stdlib and yaml (through :mod:`medclass.core.config`); ``DataError`` is
imported from :mod:`medclass.data.sources` (numpy, Pillow) only when a check fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..core.config import RunConfig, check_budget_config, check_recipe
from ..core.runs import RunError, RunFiles

__all__ = ["check_data_source", "check_train_config", "check_run_folder", "check_resume", "check_choice"]

#: Suffixes a file data source may have (a folder is the other kind).
DATA_FILE_SUFFIXES = (".csv", ".npz")


def _data_error(message: str) -> Exception:
    from ..data.sources import DataError  # numpy and Pillow, not torch

    return DataError(message)


def check_data_source(cfg: RunConfig) -> None:
    """``cfg.data.manifest`` (when set) is a file; ``cfg.data.source`` (when set) exists and is a
    folder, a ``.csv`` manifest or a ``.npz``. ``None`` means the bundled BreastMNIST.

    Raises:
        DataError: a missing or unreadable kind of source; the message names the path and what
            medclass reads.
    """
    d = cfg.data
    if d.manifest:
        manifest = Path(d.manifest)
        if not manifest.is_file():
            raise _data_error(f"split manifest {manifest} (data.manifest) does not exist; give the manifest.csv "
                              "of a run, or the one `medclass audit --dedupe-manifest` wrote")
        return
    if d.source is None:
        return
    source = Path(d.source)
    if not source.exists():
        raise _data_error(f"data source {source} does not exist; give a folder, a .csv manifest or a .npz")
    if not source.is_dir() and source.suffix.lower() not in DATA_FILE_SUFFIXES:
        raise _data_error(f"data source {source}: expected a folder, a .csv manifest or a MedMNIST .npz")


def _check_pretrained(cfg: RunConfig) -> None:
    """``model.pretrained`` that looks like a path (not an ImageNet weight name) exists."""
    from ..core.spec import IMAGENET_WEIGHT_NAMES  # numpy, yaml: no torch

    value = cfg.model.pretrained
    if not value or str(value).lower() in IMAGENET_WEIGHT_NAMES:
        return
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise RunError(f"model.pretrained: {path} does not exist; give imagenet, imagenet-v1, imagenet-v2, a "
                       ".pth/.pt/.safetensors/.h5 file or a run folder")


def check_train_config(cfg: RunConfig) -> None:
    """What ``medclass train`` / ``cv`` / ``lr-find`` can check before importing PyTorch: the
    time-budget keys, the training-recipe keys, the data source and the pretrained-weights path.

    Raises:
        ConfigError: a bad ``train.time_budget``, ``data.image_size`` or recipe value (names the key).
        DataError: see :func:`check_data_source`.
        RunError: a ``model.pretrained`` path that does not exist.
    """
    check_budget_config(cfg)
    check_recipe(cfg)
    check_data_source(cfg)
    _check_pretrained(cfg)


def check_run_folder(run: Path, checkpoint: Optional[str] = "best") -> RunFiles:
    """``run`` is a medclass run folder (``model_spec.json``, or ``config.yaml`` and
    ``classes.json``) that holds the ``checkpoint`` (``"best"`` or ``"last"``; ``None``: not
    checked; an ensemble run holds none of its own). Returns its :class:`RunFiles`.

    Raises:
        RunError: the folder is missing, is a file, is not a run folder, or lacks the checkpoint;
            the message names the path and what to do.
    """
    files = RunFiles(Path(run))
    if not files.root.exists():
        raise RunError(f"{run} is not a medclass run folder: it does not exist; give a folder written by "
                       "`medclass train` (`medclass runs` lists them)")
    if not files.root.is_dir():
        raise RunError(f"{run} is not a medclass run folder: it is a file; give the folder `medclass train` wrote")
    if not files.spec.is_file() and not (files.config.is_file() and files.classes.is_file()):
        raise RunError(f"{run} is not a medclass run folder (no model_spec.json, config.yaml or classes.json)")
    if checkpoint is not None and not files.ensemble.is_file():
        path = files.best if checkpoint == "best" else files.last
        if not path.is_file():
            raise RunError(f"{run} has no checkpoint {path.relative_to(files.root)}: the run has not finished an "
                           "epoch; continue it with `medclass train --name NAME --resume` or train it again")
    return files


def check_resume(runs_dir: Path, name: Optional[str]) -> tuple[Path, RunConfig]:
    """The folder and saved configuration of a run to continue (:func:`medclass.core.runs.resume_run_dir`),
    after checking it holds ``checkpoints/last.pt``.

    Raises:
        RunError: no ``name``, no ``config.yaml`` or no ``last.pt`` in ``runs_dir / name``.
        ConfigError: an invalid ``config.yaml``.
    """
    from ..core.runs import resume_run_dir

    root, cfg = resume_run_dir(runs_dir, name)
    if not RunFiles(root).last.is_file():
        raise RunError(f"cannot resume: no {RunFiles(root).last}; start the run without --resume")
    return root, cfg


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    """``value`` of ``option`` is one of ``choices``.

    Raises:
        ValueError: it is not; the message names the option and lists the choices.
    """
    if value not in choices:
        raise ValueError(f"{option} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")


def apply_resume_overrides(cfg: RunConfig, epochs: Optional[int] = None, time_budget: Optional[str] = None,
                           ignored: Optional[dict[str, object]] = None) -> None:
    """Apply the options ``medclass train --resume`` may change to the run's saved ``cfg``, in place:
    ``epochs``, the run's new total of epochs (more or fewer than planned; the trainer re-plans
    the LR schedule to end there), or ``time_budget``, the new total budget of a time-budgeted
    run (``"20m"``; the time earlier invocations spent counts against it).

    Args:
        ignored: other options given on the command line (``{"--lr": 0.1}``; ``None`` values are
            not given): a resumed run keeps its config.yaml, so any of them is an error.

    Raises:
        ConfigError: ``epochs`` below 1, a bad duration, ``epochs`` for a budget run or
            ``time_budget`` for a run without one, or another option given (names it).
    """
    from ..core.config import ConfigError, parse_duration

    given = [k for k, v in (ignored or {}).items() if v not in (None, [], ())]
    if given:
        raise ConfigError(f"--resume continues the run with its own config.yaml; only --epochs and --time-budget may "
                          f"change, got {', '.join(given)}")
    budgeted = cfg.train.time_budget is not None
    if epochs is not None:
        if budgeted:
            raise ConfigError(f"this run has a time budget ({cfg.train.time_budget}): its epochs come from the plan; "
                              "continue it with --time-budget (the new total, e.g. 30m) instead of --epochs")
        if epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {epochs}")
        cfg.train.epochs = int(epochs)
    if time_budget is not None:
        if not budgeted:
            raise ConfigError("this run was trained without a time budget; continue it with --epochs (the new total)")
        parse_duration(time_budget, "--time-budget")
        cfg.train.time_budget = time_budget
