"""The Python API for notebooks and scripts: the same code as the ``medclass`` command line, from Python.

::

    import medclass

    run = medclass.train("data/chest-ct", epochs=20, image_size=128, name="ct-r18")   # -> Run
    ev = run.evaluate()             # metrics with 95 % CIs; figures shown inline in Jupyter
    ev["balanced_accuracy"], ev.confidence_interval("auroc")
    run.predict(["scan1.png", "more-scans/"])     # a table in Jupyter, a list of Prediction
    run.explain("scan1.png")        # Grad-CAM overlay, shown inline
    run.export("onnx")              # RUN/export/model.onnx
    run.report()                    # one self-contained HTML file, shown inline

    run = medclass.load("runs/ct-r18")    # any run folder written by the CLI or the API

What each call runs: :func:`train` is ``medclass train`` (the workflow :func:`medclass.workflow.train_run`:
train, fit the OOD detector, evaluate when asked, on a new run folder from
:func:`medclass.core.runs.new_run_dir`), :meth:`Run.evaluate` is ``medclass evaluate``
(:func:`medclass.evaluation.evaluate_run`), :meth:`Run.predict` is ``medclass predict``
(:func:`medclass.serving.prediction.predict_files`), :meth:`Run.explain` is Grad-CAM
(:func:`medclass.evaluation.gradcam`), :meth:`Run.export` is ``medclass export``
(:func:`medclass.workflow.export`), :meth:`Run.report` is ``medclass report``
(:func:`medclass.evaluation.build_report`). Files land in the run folder exactly as with the CLI.

Configuration: :func:`configure` builds a :class:`~medclass.core.config.RunConfig` from keyword arguments
(``epochs=20``, ``**{"train.lr": 3e-4}``, ``train={"lr": 3e-4}``); :func:`train` takes the same.

Importing this module (or ``medclass``) does not import PyTorch: each call imports what it needs.
Errors are medclass's own, with messages that name the key, file or value: ``ConfigError`` (a
``ValueError``), ``RunError``, ``DataError``, ``CheckpointError``, ``TrackingError``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from .core.config import PRESETS, ConfigError, RunConfig, check_budget_config
from .core.runs import RunError, RunFiles, new_run_dir, resume_cv_dir

__all__ = ["configure", "train", "load", "Run", "Evaluation", "Predictions", "Explanation", "Figure", "Report"]

PathLike = Union[str, os.PathLike]
_SECTIONS = ("data", "model", "train")


# --------------------------------------------------------------------------- configuration


def _section_keys() -> dict[str, list[str]]:
    """Bare key -> the sections that have it (``epochs`` -> ``["train"]``)."""
    cfg = RunConfig()
    out: dict[str, list[str]] = {}
    for section in _SECTIONS:
        for f in fields(getattr(cfg, section)):
            out.setdefault(f.name, []).append(section)
    return out


def _dotted(options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments as ``{"section.key": value}``: a dotted key as it is, a section given a
    mapping (``train={"lr": 1e-3}``) key by key, a bare key (``lr=1e-3``) in the one section that has it.

    Raises:
        ConfigError: a bare key no section has (the message suggests close names), or one in two sections.
    """
    known = _section_keys()
    out: dict[str, Any] = {}
    for key, value in options.items():
        if "." in key:
            out[key] = value
        elif key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}= must be a mapping of {key} keys, e.g. {key}={{...}}, got {value!r}")
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif key in known and len(known[key]) == 1:
            out[f"{known[key][0]}.{key}"] = value
        elif key in known:
            raise ConfigError(f"{key!r} is a key of several sections ({', '.join(known[key])}): "
                              f"write it with its section, e.g. **{{'{known[key][0]}.{key}': ...}}")
        else:
            import difflib

            close = difflib.get_close_matches(key, list(known), n=3)
            raise ConfigError(f"unknown config key {key!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                              + " (medclass.RunConfig lists the keys of data, model and train)")
    return out


def configure(data: Optional[PathLike] = None, *, file: Optional[PathLike] = None, preset: Optional[str] = None,
              **options: Any) -> RunConfig:
    """A run configuration from keyword arguments, as ``medclass train`` builds it from its options.

    Order: the defaults; then ``file`` (a YAML config as for ``--config``), or, with neither ``file``
    nor ``data``, the bundled BreastMNIST's preset (``breastmnist``: a 10-minute time budget;
    ``breastmnist-epochs`` at its native 28 px when ``epochs`` is given without ``time_budget``),
    as the CLI does; then ``preset`` when named; then ``data`` as ``data.source``; then ``options``.

    Args:
        data: a folder (class folders, optionally under ``train``/``valid``/``test``), a CSV
            manifest or a MedMNIST ``.npz``; None: the bundled BreastMNIST (28 px ultrasound, 2 classes).
        file: a YAML config file (sections ``data``, ``model``, ``train``).
        preset: a name of :data:`medclass.core.config.PRESETS`.
        **options: config keys: bare (``epochs=5``, ``image_size=64``, ``arch="resnet34"``,
            ``time_budget="15m"``; the section is found), dotted (``**{"train.lr": 3e-4}``) or by
            section (``train={"lr": 3e-4}``). Values are checked as ``--set`` checks them; strings
            are read as YAML scalars (``"3e-4"``, ``"null"``). Units: ``image_size`` pixels,
            ``time_budget`` seconds or ``"90s"``/``"15m"``/``"1.5h"``, ``lr`` per step.

    Returns:
        A new :class:`~medclass.core.config.RunConfig`.
    Raises:
        ConfigError: an unknown key (close names suggested), a value of the wrong type or out of
            range, an unknown preset, an unreadable ``file``.
    """
    dotted = _dotted(options)
    cfg = RunConfig()
    if file is not None:
        cfg = RunConfig.load(Path(file))
    elif data is None:
        fixed = "train.epochs" in dotted and dotted.get("train.time_budget") is None
        cfg.update(PRESETS["breastmnist-epochs" if fixed else "breastmnist"])
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        cfg.update(PRESETS[preset])
    if data is not None:
        cfg.data.source = str(data)
    for key, value in dotted.items():
        cfg.set(key, value)
    check_budget_config(cfg)
    return cfg


def _heavy_imports() -> None:
    """Import tqdm.auto (which the engine uses) with its notebook warning silenced: in Jupyter
    without ipywidgets it warns "IProgress not found" on import and uses the text bar, which the
    API turns off there anyway (epoch lines are printed)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.auto  # noqa: F401


# --------------------------------------------------------------------------- display helpers


class Figure:
    """A PNG figure written by medclass (confusion matrix, ROC, reliability, training curves),
    shown inline by Jupyter (``_repr_png_``). ``path``: the file; ``data``: its bytes."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    def _repr_png_(self) -> bytes:
        return self.data

    def _repr_html_(self) -> str:
        return _img_tag(self.path)

    def __repr__(self) -> str:
        return f"Figure({str(self.path)!r})"


def _img_tag(path: Path, width: Optional[int] = None) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    style = f' style="max-width:{width}px"' if width else ""
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).name)}"{style}>'


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


# --------------------------------------------------------------------------- results


class Evaluation(Mapping):
    """The result of :meth:`Run.evaluate`: the ``metrics.json`` dict (read it like a dict:
    ``ev["accuracy"]``), the folder it was written to and its figures.

    Attributes:
        metrics: the dict of :func:`medclass.evaluation.evaluate_run` (fractions in [0, 1]; ``loss``
            in nats; ``n`` images; ``confidence_intervals``, ``calibration``, ``operating_point``...).
        path: the output folder (default ``RUN/eval-<split>``).
        figures: ``{"confusion_matrix", "roc", "reliability"}`` -> :class:`Figure` (those written).
    """

    def __init__(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics
        self.path = Path(metrics["out_dir"])
        self.figures = {name: Figure(self.path / f"{name}.png") for name in ("confusion_matrix", "roc", "reliability")
                        if (self.path / f"{name}.png").is_file()}

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def confidence_interval(self, metric: str) -> tuple[Optional[float], Optional[float]]:
        """The bootstrap 95 % interval ``(low, high)`` of ``metric`` (accuracy, balanced_accuracy,
        macro_f1, auroc).

        Raises:
            KeyError: no interval for ``metric`` (the message lists those there are).
        """
        cis = (self.metrics.get("confidence_intervals") or {}).get("metrics") or {}
        if metric not in cis:
            raise KeyError(f"no confidence interval for {metric!r}; there are: {', '.join(cis)}")
        return cis[metric]["low"], cis[metric]["high"]

    def text(self) -> str:
        """The lines ``medclass evaluate`` prints."""
        from .evaluation.evaluate import format_metrics

        return format_metrics(self.metrics)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        m = self.metrics
        cis = (m.get("confidence_intervals") or {}).get("metrics") or {}
        rows = []
        for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                           ("macro_f1", "macro F1"), ("auroc", "AUROC"), ("loss", "loss")):
            ci = cis.get(key) or {}
            interval = f"{ci['low']:.3f} – {ci['high']:.3f}" if ci.get("low") is not None else ""
            rows.append(f"<tr><td>{label}</td><td>{_fmt(m.get(key))}</td><td>{interval}</td></tr>")
        head = (f"<b>{html.escape(str(m.get('split')))}</b>: n = {m.get('n')} images of "
                f"{html.escape(str(m.get('data')))}, checkpoint epoch {m.get('checkpoint_epoch')}")
        figs = "".join(f"<div style='display:inline-block;margin:4px'>{_img_tag(f.path, 420)}</div>"
                       for f in self.figures.values())
        return (f"<div>{head}<table><tr><th>metric</th><th>value</th><th>95% CI (bootstrap)</th></tr>"
                f"{''.join(rows)}</table>{figs}<div><small>{html.escape(str(self.path))}</small></div></div>")


class Predictions(list):
    """The result of :meth:`Run.predict`: a list of :class:`medclass.serving.prediction.Prediction`
    (``path``, ``predicted`` class name, ``probabilities`` class -> calibrated probability,
    ``error`` for a file that could not be read), shown as a table in Jupyter."""

    def __init__(self, items: Sequence[Any], class_names: Sequence[str]) -> None:
        super().__init__(items)
        self.class_names = list(class_names)

    @property
    def probabilities(self):
        """float32 ``(N, K)`` in class order; NaN rows for files that could not be read."""
        import numpy as np

        out = np.full((len(self), len(self.class_names)), np.nan, np.float32)
        for i, p in enumerate(self):
            if p.probabilities:
                out[i] = [p.probabilities[c] for c in self.class_names]
        return out

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per prediction: ``path``, ``predicted``, ``p_<class>`` ..., ``error``."""
        return [{"path": p.path, "predicted": p.predicted,
                 **{f"p_{c}": (p.probabilities or {}).get(c) for c in self.class_names}, "error": p.error}
                for p in self]

    def _repr_html_(self) -> str:
        head = "".join(f"<th>p({html.escape(c)})</th>" for c in self.class_names)
        rows = []
        for p in self:
            cells = "".join(f"<td>{_fmt((p.probabilities or {}).get(c))}</td>" for c in self.class_names)
            rows.append(f"<tr><td>{html.escape(str(p.path))}</td><td><b>{_fmt(p.predicted)}</b></td>{cells}"
                        f"<td>{html.escape(p.error or '')}</td></tr>")
        return f"<table><tr><th>file</th><th>predicted</th>{head}<th>error</th></tr>{''.join(rows)}</table>"


@dataclass
class Explanation:
    """A Grad-CAM explanation of one image (:meth:`Run.explain`), shown inline in Jupyter.

    Attributes:
        image: the model's input as read, uint8 ``(H, W, C)`` (``H = W`` the run's image size).
        heatmap: float32 ``(H, W)`` in [0, 1] (1 = most important for ``explained``).
        overlay: uint8 ``(H, W, 3)``: the heat map (jet) blended over the image (alpha 0.4).
        predicted: the predicted class name (the run's decision rule, as ``predict``).
        explained: the class the heat map is for.
        probabilities: class name -> calibrated probability.
        name: where the image came from.
    """

    image: Any
    heatmap: Any
    overlay: Any
    predicted: str
    explained: str
    probabilities: dict[str, float]
    name: str = "image"

    def figure(self):
        """A matplotlib Figure: the input and the overlay side by side, titled with the prediction."""
        from matplotlib.figure import Figure as MplFigure

        fig = MplFigure(figsize=(7, 3.8))
        axes = fig.subplots(1, 2)
        img = self.image[..., 0] if self.image.shape[-1] == 1 else self.image
        axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        axes[0].set_title("input")
        axes[1].imshow(self.overlay)
        axes[1].set_title(f"Grad-CAM: {self.explained}")
        for ax in axes:
            ax.axis("off")
        p = self.probabilities[self.predicted]
        fig.suptitle(f"{self.name}: predicted {self.predicted} (p = {p:.3f})", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        return fig

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png", dpi=90)
        return buf.getvalue()

    def __repr__(self) -> str:
        return (f"Explanation({self.name!r}: predicted {self.predicted!r}, explained {self.explained!r}, "
                f"heatmap {tuple(self.heatmap.shape)})")


class Report:
    """An HTML report written by :meth:`Run.report` (``path``), shown inline in Jupyter (in an iframe)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def _repr_html_(self) -> str:
        doc = html.escape(self.path.read_text(), quote=True)
        return f'<iframe srcdoc="{doc}" style="width:100%;height:640px;border:1px solid #ccc"></iframe>'

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r})"


# --------------------------------------------------------------------------- the run


class Run:
    """A run folder (trained by :func:`train`, ``medclass train`` or an ensemble) with the CLI's
    commands as methods. ``os.fspath(run)`` is its folder, so it goes wherever a path does.

    The model is loaded on first use (``train.device``'s rule: CUDA, else MPS, else CPU) and kept;
    :meth:`evaluate` reloads it afterwards, because calibration (temperature, threshold) is stored
    in the run's spec then.

    Attributes:
        path: the run folder. files: its :class:`~medclass.core.runs.RunFiles`.
        result: the :class:`medclass.engine.TrainResult` when this object came from :func:`train`.
        last_evaluation: the latest :class:`Evaluation` made through this object, or None.
    """

    def __init__(self, path: PathLike, result: Any = None) -> None:
        self.path = Path(path)
        self.files = RunFiles(self.path)
        self.result = result
        self.last_evaluation: Optional[Evaluation] = None
        self._loaded: dict[str, Any] = {}

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ----------------------------------------------------------------- what the folder holds

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> RunConfig:
        """The configuration the run was trained with (``config.yaml``)."""
        return RunConfig.load(self.files.config)

    @property
    def class_names(self) -> list[str]:
        """The classes in output order (the run's spec)."""
        from .core.spec import read_spec

        return list(read_spec(self.path).class_names)

    @property
    def history(self) -> list[dict[str, float]]:
        """One dict per epoch from ``metrics.csv``: ``epoch``, ``loss``, ``accuracy`` (training),
        ``val_loss``, ``val_accuracy``, ``val_balanced_accuracy``, ``lr``, ``seconds`` (wall time
        of the epoch); empty before the first epoch."""
        if not self.files.metrics_csv.is_file():
            return []
        with open(self.files.metrics_csv, newline="") as f:
            return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v not in ("", None)}
                    for row in csv.DictReader(f)]

    @property
    def summary(self) -> dict[str, Any]:
        """``train_summary.json`` (best epoch, epochs run, seconds, image counts, device...); {} if missing."""
        try:
            return json.loads(self.files.summary.read_text())
        except (OSError, ValueError):
            return {}

    def curves(self) -> Figure:
        """Training and validation loss and accuracy per epoch (``curves.png``), shown inline.

        Raises:
            RunError: the run has no ``curves.png`` yet (training did not finish an epoch).
        """
        if not self.files.curves.is_file():
            raise RunError(f"{self.files.curves} does not exist: the run has not finished training")
        return Figure(self.files.curves)

    def _repr_html_(self) -> str:
        s = self.summary
        line = f"<b>{html.escape(self.name)}</b> ({html.escape(str(self.path))})"
        if s:
            line += (f": best epoch {s.get('best_epoch')} of {s.get('epochs_run')} ({html.escape(str(s.get('monitor')))}"
                     f" {_fmt(s.get('best_value'))}), {s.get('train_images')} training images, "
                     f"{_fmt(s.get('train_seconds'))} s of training")
        if self.last_evaluation is not None:
            line += "<br>" + self.last_evaluation._repr_html_()
        elif self.files.curves.is_file():
            line += "<br>" + _img_tag(self.files.curves, 640)
        return f"<div>{line}</div>"

    # ----------------------------------------------------------------- the commands

    def _load(self, checkpoint: str = "best"):
        if checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
        if checkpoint not in self._loaded:
            _heavy_imports()
            from .engine import load_run

            self._loaded[checkpoint] = load_run(self.path, checkpoint)
        return self._loaded[checkpoint]

    def evaluate(self, split: str = "test", data: Optional[PathLike] = None, *, checkpoint: str = "best",
                 tta: bool = False, bootstrap: int = 1000, seed: int = 0, dedupe: bool = False, explain: int = 0,
                 target_sensitivity: Optional[float] = None, out: Optional[PathLike] = None,
                 group_aggregation: str = "mean", subgroups: Sequence[str] = (),
                 progress: bool = False) -> Evaluation:
        """``medclass evaluate``: metrics with bootstrap 95 % intervals, temperature calibration
        fitted on the validation split, the binary operating point, confusion matrix, ROC and
        reliability figures, ``predictions.csv``; written to ``out`` (default ``RUN/eval-<split>``)
        and, for a tracked run, to MLflow.

        Args:
            split: ``train``, ``valid`` or ``test`` of the run's own split (its ``manifest.csv``).
            data: other labelled data (folder, CSV, .npz) instead of the run's split.
            checkpoint: ``best`` or ``last``.
            tta: average the logits of each image and its horizontal flip.
            bootstrap: resamples for the intervals. seed: their seed.
            dedupe: leave out images that duplicate an earlier split.
            explain: Grad-CAM figures of the N most confident right and wrong per class.
            target_sensitivity: binary: the threshold reaching this sensitivity on validation
                (default Youden's J).
            group_aggregation: where images share a group (the CSV group column: patient,
                lesion), the group's probabilities are aggregated by ``mean`` or ``max`` (any image
                positive) for the group-level results (``metrics["groups"]``).
            subgroups: CSV columns (e.g. ``["sex", "age"]``; numeric ones binned): results per
                subgroup with 95 % intervals and the best-worst gap (``metrics["subgroups"]``).

        Raises:
            DataError: no such split, or classes the run does not know, or a subgroup column the
                data lacks. RunError, CheckpointError: not a run, no checkpoint.
        """
        _heavy_imports()
        from .evaluation import evaluate_run

        metrics = evaluate_run(self.path, None if data is None else str(data), split, None if out is None else Path(out),
                               checkpoint, progress=progress, tta=("hflip",) if tta else (), n_bootstrap=bootstrap,
                               seed=seed, dedupe=dedupe, explain=explain, target_sensitivity=target_sensitivity,
                               group_how=group_aggregation, subgroups=tuple(subgroups))
        self._loaded.clear()  # calibration went into the spec: predict with it from now on
        self.last_evaluation = Evaluation(metrics)
        return self.last_evaluation

    def _read(self, images: Any, spec) -> tuple[list[Any], Any, list[int]]:
        """Paths (a file, a folder, or a list of them) or uint8 arrays -> ``read_files``'s triple."""
        import numpy as np

        from .serving.prediction import Prediction, read_files

        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if isinstance(images, np.ndarray) or (isinstance(images, (list, tuple)) and images
                                              and isinstance(images[0], np.ndarray)):
            arrays = _as_model_images(images, spec)
            return [Prediction(f"<array {i}>") for i in range(len(arrays))], arrays, list(range(len(arrays)))
        return read_files(list(images), spec)

    def predict(self, images: Any, *, tta: bool = False, checkpoint: str = "best", batch_size: int = 32) -> Predictions:
        """``medclass predict``: the class and calibrated probabilities of each image.

        Args:
            images: a file or folder path, a list of them (folders are searched for images), or
                uint8 arrays: one image ``(H, W)`` / ``(H, W, C)`` (C = 1, 3 or 4), a batch
                ``(N, H, W, C)`` or greyscale ``(N, H, W)``, or a list of images (each resized to
                the run's input as files are: the run's resize rule and channels).
            tta: average the image and its horizontal flip.
            checkpoint: ``best`` or ``last``. batch_size: images per forward pass.

        Returns:
            :class:`Predictions`, one per image in order; a file that cannot be read gets ``error``.
        Raises:
            ValueError: an array that is not uint8 or has another shape.
        """
        from .serving.prediction import predict_read
        from .serving.predictor import TorchClassifier

        loaded = self._load(checkpoint)
        results, arrays, ok = self._read(images, loaded.spec)
        predictor = TorchClassifier(loaded, ("hflip",) if tta else (), batch_size)  # as `medclass predict`'s
        return Predictions(predict_read(predictor, results, arrays, ok), loaded.class_names)

    def explain(self, image: Any, *, target_class: Optional[str] = None, target_layer: Optional[str] = None,
                checkpoint: str = "best") -> Explanation:
        """Grad-CAM of one image (Selvaraju et al. 2017): where the network looked for a class.

        Args:
            image: a file path, or a uint8 array ``(H, W)`` / ``(H, W, C)``.
            target_class: the class name explained; None: the predicted class.
            target_layer: a module name (``"layer3"``); None: the last stage.
            checkpoint: ``best`` or ``last``.

        Returns:
            An :class:`Explanation` (heat map ``(S, S)`` at the run's image size ``S``), shown inline.
        Raises:
            ImageReadError: the file cannot be read. ValueError: an unknown ``target_class`` (the
                message lists the classes) or ``target_layer``; a bad array.
        """
        import torch

        from .core import pipeline
        from .evaluation.explain import gradcam, overlay

        loaded = self._load(checkpoint)
        results, arrays, ok = self._read(image, loaded.spec)
        if len(results) != 1:
            raise ValueError(f"explain takes one image, got {len(results)}: call it once per image")
        if not ok:
            from .data.pixels import ImageReadError

            raise ImageReadError(results[0].error)
        names = loaded.class_names
        probs = loaded.predict_proba(arrays)
        predicted = int(loaded.spec.decide(probs)[0])
        if target_class is not None and target_class not in names:
            raise ValueError(f"target_class {target_class!r} is not a class of this run: {', '.join(names)}")
        target = predicted if target_class is None else names.index(target_class)
        x = loaded.preprocess(torch.from_numpy(pipeline.hwc_to_nchw(arrays)).to(loaded.device))
        heat = gradcam(loaded.model, x, target, target_layer)[0].numpy()
        return Explanation(image=arrays[0], heatmap=heat, overlay=overlay(arrays[0], heat), predicted=names[predicted],
                           explained=names[target], probabilities={n: float(v) for n, v in zip(names, probs[0])},
                           name=Path(results[0].path).name)

    def export(self, format: str = "onnx", out: Optional[PathLike] = None, *, checkpoint: str = "best"):
        """``medclass export``: the model with its preprocessing and calibration inside, checked
        against PyTorch after writing.

        Args:
            format: ``onnx`` (ONNX Runtime, no PyTorch needed to use it) or ``torchscript``.
            out: the file; default ``RUN/export/model.onnx`` or ``RUN/export/model.pt``.
            checkpoint: ``best`` or ``last``.

        Returns:
            :class:`medclass.serving.export.ExportResult`: ``path``, ``seconds``, ``max_prob_diff``
            (largest probability difference to PyTorch on random images).
        Raises:
            ValueError: an unknown format. ImportError: onnx/onnxruntime missing.
        """
        _heavy_imports()
        from .workflow import export

        return export(self.path, format, out, checkpoint=checkpoint).export  # as `medclass export`

    def report(self, split: str = "test", out: Optional[PathLike] = None, *, explain: int = 2, bootstrap: int = 1000,
               tta: bool = False, dedupe: bool = False, progress: bool = False) -> Report:
        """``medclass report``: evaluate ``split`` and audit the data, then one self-contained
        HTML file with every figure (default ``RUN/report-<split>.html``), shown inline.

        Raises:
            as :meth:`evaluate`.
        """
        _heavy_imports()
        from .evaluation import build_report

        path = build_report(self.path, None if out is None else Path(out), split, dedupe, explain, bootstrap,
                            ("hflip",) if tta else (), progress=progress)
        self._loaded.clear()
        return Report(path)


def _as_model_images(images: Any, spec) -> Any:
    """uint8 arrays -> the model's input uint8 ``(N, S, S, C)`` (:func:`medclass.data.pixels.to_model_input`).

    A 3-dimensional array is one image ``(H, W, C)`` when its last side is at most 4 (channels),
    else a batch of greyscale images ``(N, H, W)``.

    Raises:
        ValueError: not uint8, or not ``(H, W)``, ``(H, W, C)`` with C in 1, 3, 4, ``(N, H, W)`` or
            ``(N, H, W, C)``.
    """
    import numpy as np
    from PIL import Image

    from .data.pixels import to_model_input

    if isinstance(images, np.ndarray) and (images.ndim == 4 or (images.ndim == 3 and images.shape[-1] > 4)):
        items = list(images)  # (N, H, W, C), or greyscale (N, H, W)
    elif isinstance(images, np.ndarray):
        items = [images]
    else:
        items = list(images)
    out = []
    for i, a in enumerate(items):
        a = np.asarray(a)
        if a.dtype != np.uint8:
            raise ValueError(f"image {i}: arrays must be uint8 (0..255), got {a.dtype}; e.g. (x * 255).astype(np.uint8)"
                             " for floats in [0, 1]")
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
            raise ValueError(f"image {i}: expected (H, W), (H, W, C) with C in 1, 3, 4, or a batch (N, H, W[, C]); "
                             f"got shape {a.shape}")
        out.append(to_model_input(Image.fromarray(a), spec.channels, spec.image_size, spec.resize))
    return np.stack(out)


# --------------------------------------------------------------------------- train and load


def _config_of(data: Optional[PathLike], config: Union[RunConfig, PathLike, None], options: Mapping[str, Any]) -> RunConfig:
    """The configuration :func:`train` and :func:`cv` run: a copy of ``config`` (a RunConfig) with
    ``data`` and ``options`` applied, else :func:`configure` of them (``config`` a YAML file)."""
    if not isinstance(config, RunConfig):
        return configure(data, file=config, **options)
    import copy

    cfg = copy.deepcopy(config)
    if data is not None:
        cfg.data.source = str(data)
    for key, value in _dotted(options).items():
        cfg.set(key, value)
    check_budget_config(cfg)
    return cfg


def train(data: Optional[PathLike] = None, *, config: Union[RunConfig, PathLike, None] = None,
          name: Optional[str] = None, runs_dir: PathLike = "runs", evaluate: bool = False,
          mlflow: Optional[bool] = None, progress: Optional[bool] = None, **options: Any) -> Run:
    """``medclass train``: train a model and return its :class:`Run`.

    Args:
        data: a folder, CSV manifest or ``.npz``; None: the bundled BreastMNIST (see :func:`configure`).
        config: a :class:`~medclass.core.config.RunConfig` (copied, not changed) or a YAML file.
        name: the run folder's name under ``runs_dir``; None: ``<data>-<arch>-<time>``.
        runs_dir: the folder of runs (created).
        evaluate: also evaluate the best checkpoint on the test split (``run.last_evaluation``); on
            the validation split, with a ``UserWarning``, when the data has none
            (:func:`medclass.evaluation.evaluate.final_split`).
        mlflow: track the run with MLflow (``train.mlflow``; :mod:`medclass.engine.tracking`).
        progress: tqdm bars; None: only when stderr is a terminal (in Jupyter the epoch lines are printed).
        **options: config keys as for :func:`configure` (``epochs=5``, ``image_size=64``,
            ``time_budget="10m"``, ``**{"train.lr": 3e-4}``).

    Returns:
        The :class:`Run` (``run.result``: history, best epoch, seconds).
    Raises:
        ConfigError: a bad key or value. RunError: the run folder exists (give another ``name``),
            is unwritable, or the disk too full. DataError, ImageReadError: bad data (names the file).
        TrackingError: MLflow on but not installed.
    """
    from .engine.tracking import check_tracking

    cfg = _config_of(data, config, options)
    if mlflow is not None:
        cfg.train.mlflow = bool(mlflow)
    if progress is not None:
        cfg.train.progress = bool(progress)
    elif not sys.stderr.isatty():
        cfg.train.progress = False
    check_tracking(cfg)
    _heavy_imports()
    from .workflow import train_run

    # the workflow of `medclass train`: train, fit the OOD detector (RUN/ood.json), evaluate when asked
    outcome = train_run(cfg, new_run_dir(Path(runs_dir), name, cfg), evaluate=evaluate)  # warnings.warn, print
    run = Run(outcome.run_dir, outcome.result)
    if outcome.metrics is not None:
        run.last_evaluation = Evaluation(outcome.metrics)
    return run


def cv(data: Optional[PathLike] = None, *, config: Union[RunConfig, PathLike, None] = None, folds: int = 5,
       group_pattern: Optional[str] = None, name: Optional[str] = None, runs_dir: PathLike = "runs",
       resume: bool = False, progress: Optional[bool] = None, **options: Any) -> dict[str, Any]:
    """``medclass cv``: K-fold cross-validation that keeps each group (patient, lesion) inside one
    fold (scikit-learn ``StratifiedGroupKFold``), out-of-fold metrics, and the K fold models as one
    soft-voting ensemble evaluated on the untouched test split
    (:func:`medclass.evaluation.cv.cross_validate`).

    Args:
        data, config, **options: as for :func:`train` (``time_budget`` is the budget of all folds
            together).
        folds: K, at least 2.
        group_pattern: a regular expression whose first group, searched in each file name, names
            its group (default: the CSV group column, else no grouping).
        name: the folder under ``runs_dir`` (needed with ``resume``).
        resume: continue an interrupted cross-validation ``runs_dir/name``.
        progress: tqdm bars; None: only when stderr is a terminal.

    Returns:
        The record written to ``RUN/cv.json``: fold sizes, per-fold validation metrics with mean
        and standard deviation, out-of-fold metrics with intervals, the ensemble's test metrics;
        ``record["run_dir"]`` is the folder (its ``ensemble`` subfolder opens with :func:`load`).
    Raises:
        ConfigError: a bad key or value. RunError: the folder exists (without ``resume``), or
            ``resume`` with other settings or nothing to resume. DataError: bad data, groups or
            pattern.
    """
    if resume:
        root, cfg, folds, group_pattern = resume_cv_dir(runs_dir, name)
    else:
        cfg = _config_of(data, config, options)
    if progress is not None:
        cfg.train.progress = bool(progress)
    elif not sys.stderr.isatty():
        cfg.train.progress = False
    _heavy_imports()
    from .evaluation.cv import cross_validate

    if not resume:
        root = new_run_dir(Path(runs_dir), name, cfg)
    record = cross_validate(cfg, root, folds, group_pattern, resume=resume, progress=cfg.train.progress,
                            log=print)
    return {**record, "run_dir": str(root)}


def load(path: PathLike) -> Run:
    """Open a run folder (written by ``medclass train``, :func:`train`, ``medclass ensemble``).

    Raises:
        RunError: ``path`` is not a run folder (no ``config.yaml`` or ``model_spec.json``).
    """
    files = RunFiles(Path(path))
    if not files.root.is_dir():
        raise RunError(f"{files.root} does not exist (a run folder is made by medclass train)")
    if not (files.config.is_file() or files.spec.is_file()):
        raise RunError(f"{files.root} is not a medclass run folder (no config.yaml or model_spec.json)")
    return Run(files.root)
