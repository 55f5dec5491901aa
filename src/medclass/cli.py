"""The ``medclass`` command line (Typer): it only wires the data, engine and evaluation stages."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .config import PRESETS, ConfigError, RunConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and use medical image classifiers.")

#: MedMNIST v2 (Yang et al., Scientific Data 2023, Table 3) test results on BreastMNIST.
PUBLISHED_BREASTMNIST = {"ResNet-50 (28)": {"accuracy": 0.812, "auroc": 0.857}, "ResNet-18 (28)": {"accuracy": 0.863, "auroc": 0.901}}


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _build_config(data: Optional[str], config: Optional[Path], sets: List[str], **options) -> RunConfig:
    cfg = RunConfig()
    try:
        if config is None and data is None:
            cfg.update(PRESETS["breastmnist"])
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
    except ConfigError as e:
        _fail(str(e))
    return cfg


def _print_eval(metrics: dict) -> None:
    auc = metrics["auroc"]
    typer.echo(
        f"{metrics['split']}: n={metrics['n']}  accuracy {metrics['accuracy']:.4f}  balanced accuracy "
        f"{metrics['balanced_accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}  AUROC "
        + (f"{auc:.4f}" if auc is not None else "n/a") + f"  loss {metrics['loss']:.4f}"
    )
    ci = metrics.get("confidence_intervals", {}).get("metrics", {})
    if ci:
        typer.echo("  95% CI (bootstrap): " + "  ".join(
            f"{k} {v['low']:.3f}-{v['high']:.3f}" for k, v in ci.items() if v.get("low") is not None))
    cal = metrics.get("calibration") or {}
    if cal.get("temperature"):
        typer.echo(f"  calibration: T={cal['temperature']:.3f} (fitted on valid); ECE ({cal['n_bins']} bins) "
                   f"{cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after")
    op = metrics.get("operating_point")
    if op:
        a = op["at_chosen"]
        typer.echo(f"  operating point ({op['chosen_on_valid']['method']} on valid, positive {op['positive_class']}): "
                   f"threshold {a['threshold']:.3f}  sensitivity {a['sensitivity']:.3f}  specificity {a['specificity']:.3f}")
    dup = metrics.get("held_out_duplicates")
    if dup:
        other = dup.get("metrics_with_duplicates") or dup.get("metrics_without_duplicates")
        label = "with them" if dup["deduplicated"] else "without them"
        if other:
            typer.echo(f"  {dup['n']} images duplicate an earlier split; {label}: accuracy {other['accuracy']:.4f}"
                       + (f"  AUROC {other['auroc']:.4f}" if other.get("auroc") is not None else ""))
    typer.echo(f"written to {metrics['out_dir']}/metrics.json")


@app.command()
def train(
    data: Optional[str] = typer.Argument(None, help="Folder, CSV manifest or .npz; none: the bundled BreastMNIST."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (sections data/model/train)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name: the run goes to RUNS_DIR/NAME."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Training size in pixels."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    arch: Optional[str] = typer.Option(None, "--arch", help="resnet18|34|50|101|152"),
    single_logit: Optional[bool] = typer.Option(None, "--single-logit/--softmax", help="Binary: one logit + BCE."),
    pretrained: Optional[str] = typer.Option(
        None, "--pretrained", help="imagenet|imagenet-v1|imagenet-v2, a .pth/.pt/.safetensors/.h5 file, or a run folder."
    ),
    skip_corrupt: Optional[bool] = typer.Option(None, "--skip-corrupt/--fail-on-corrupt"),
    dedupe: Optional[bool] = typer.Option(
        None, "--dedupe/--keep-duplicates", help="Leave out valid/test images that duplicate an earlier split."
    ),
    sets: List[str] = typer.Option([], "--set", help="Override any config key: section.key=value (repeatable)."),
    evaluate_test: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate the best checkpoint on the test split."),
) -> None:
    """Train a model; then evaluate it on the test split."""
    from .data import DataError, ImageReadError
    from .engine import RunError
    from .engine import train as run_training
    from .models.pretrained import PretrainedError
    from .evaluation import evaluate_run

    run_dir = runs_dir / name if name else None
    if resume:
        if run_dir is None:
            _fail("--resume needs --name of the run to continue")
        cfg = RunConfig.load(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else None
        if cfg is None:
            _fail(f"cannot resume: {run_dir}/config.yaml not found")
    else:
        cfg = _build_config(
            data, config, sets,
            **{"train.epochs": epochs, "data.image_size": image_size, "train.batch_size": batch_size,
               "train.lr": lr, "model.arch": arch, "model.single_logit": single_logit, "model.pretrained": pretrained,
               "data.skip_corrupt": skip_corrupt, "data.dedupe": dedupe},
        )
        if run_dir is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _fail("under torchrun give --name, so that every process uses the same run folder")
        if run_dir is None:
            from datetime import datetime

            stem = Path(cfg.data.source).stem if cfg.data.source else "breastmnist"
            run_dir = runs_dir / f"{stem}-{cfg.model.arch}-{datetime.now():%Y%m%d-%H%M%S}"
    if not sys.stderr.isatty():
        cfg.train.progress = False
    try:
        result = run_training(cfg, run_dir, resume=resume)
        if not result.is_main:  # DDP ranks other than 0: rank 0 reports and evaluates
            return
        typer.echo(f"best epoch {result.best_epoch} ({cfg.train.monitor} {result.best_value:.4f}); run in {run_dir}")
        if evaluate_test:
            metrics = evaluate_run(run_dir, split="test", progress=cfg.train.progress)
            _print_eval(metrics)
            if cfg.data.source is None:
                typer.echo("published MedMNIST v2 test results on BreastMNIST (Yang et al. 2023):")
                for model, m in PUBLISHED_BREASTMNIST.items():
                    typer.echo(f"  {model:15s} accuracy {m['accuracy']:.3f}  AUROC {m['auroc']:.3f}")
                typer.echo(f"  {'medclass':15s} accuracy {metrics['accuracy']:.3f}  AUROC {metrics['auroc']:.3f}")
    except (DataError, ImageReadError, RunError, ConfigError, PretrainedError, ValueError) as e:
        _fail(str(e))


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
) -> None:
    """Evaluate a run: metrics with 95% CIs, calibration, confusion matrix, ROC, reliability diagram."""
    from .data import DataError, ImageReadError
    from .engine import CheckpointError, RunError
    from .evaluation import evaluate_run

    try:
        _print_eval(evaluate_run(run, data, split, out, checkpoint, progress=sys.stderr.isatty(),
                                 tta=("hflip",) if tta else (), n_bootstrap=bootstrap, seed=seed, dedupe=dedupe,
                                 explain=explain, target_layer=target_layer, target_sensitivity=target_sensitivity))
    except (DataError, ImageReadError, RunError, CheckpointError, ConfigError, ValueError) as e:
        _fail(str(e))


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default RUN/report-SPLIT[-dedupe].html)."),
    split: str = typer.Option("test", "--split"),
    dedupe: bool = typer.Option(False, "--dedupe", help="Leave out images that duplicate an earlier split."),
    explain: int = typer.Option(2, "--explain", help="Grad-CAM examples: N right and N wrong per class."),
    bootstrap: int = typer.Option(1000, "--bootstrap"),
    tta: bool = typer.Option(False, "--tta"),
) -> None:
    """Write one self-contained HTML report (figures embedded) of a run."""
    from .data import DataError, ImageReadError
    from .engine import CheckpointError, RunError
    from .evaluation.report import build_report

    try:
        path = build_report(run, out, split, dedupe, explain, bootstrap, ("hflip",) if tta else (),
                            progress=sys.stderr.isatty())
    except (DataError, ImageReadError, RunError, CheckpointError, ConfigError, ValueError) as e:
        _fail(str(e))
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

    Exits with 1 when no file could be predicted, 2 on a usage error (bad option, not a run, no export)."""
    if fmt not in ("table", "csv", "json"):
        _fail(f"--format must be table, csv or json, got {fmt!r}")
    if backend not in ("torch", "onnx", "torchscript"):
        _fail(f"--backend must be torch, onnx or torchscript, got {backend!r}")
    if backend == "torch":
        from .engine import CheckpointError, RunError, load_run
        from .evaluation import predict_images

        if run.is_file() and run.suffix.lower() in (".onnx", ".pt"):
            other = "onnx" if run.suffix.lower() == ".onnx" else "torchscript"
            _fail(f"{run} is an exported model, not a run folder: add --backend {other}")
        try:
            loaded = load_run(run)
        except (RunError, CheckpointError, ConfigError) as e:
            _fail(str(e))
        try:
            preds = predict_images(loaded, paths, tta=("hflip",) if tta else (), explain_dir=explain, target_layer=target_layer)
        except ValueError as e:
            _fail(str(e))
        names = loaded.class_names
    else:
        # No PyTorch import on this path for onnx: only numpy, Pillow and onnxruntime.
        from .serving.onnx_backend import ModelFileError, load_onnx_classifier, predict_files

        if explain is not None:
            _fail(f"--explain needs the torch backend (Grad-CAM takes gradients through the PyTorch model); "
                  f"drop --backend {backend}, or drop --explain")
        suffix, fmt_name = (".onnx", "onnx") if backend == "onnx" else (".pt", "torchscript")
        model_path = run / "export" / f"model{suffix}" if run.is_dir() else run
        if run.is_dir() and not model_path.is_file():
            _fail(f"{run} has no {fmt_name} export ({model_path} is missing): run "
                  f"`medclass export {run} --format {fmt_name}` first, or give the exported file")
        try:
            if backend == "onnx":
                classifier = load_onnx_classifier(model_path, tta=("hflip",) if tta else ())
            else:
                from .serving.predictor import load_torchscript_classifier

                classifier = load_torchscript_classifier(model_path, tta=("hflip",) if tta else ())
        except (FileNotFoundError, ModelFileError, ImportError) as e:
            _fail(str(e))
        try:
            preds = predict_files(classifier, paths)
        except ValueError as e:
            _fail(str(e))
        names = classifier.spec.class_names
    if not preds:
        _fail("no image files found in the given paths")
    buf = io.StringIO()
    if fmt == "json":
        json.dump([p.to_dict() for p in preds], buf, indent=1)
        buf.write("\n")
    elif fmt == "csv":
        w = csv.writer(buf)
        w.writerow(["path", "predicted", *[f"p_{n}" for n in names], "error"])
        for p in preds:
            probs = [f"{p.probabilities[n]:.6f}" for n in names] if p.probabilities else [""] * len(names)
            w.writerow([p.path, p.predicted or "", *probs, p.error or ""])
    else:
        width = max(len(p.path) for p in preds)
        buf.write(f"{'path':{width}s}  {'predicted':>14s}  " + "  ".join(f"{n[:12]:>12s}" for n in names) + "\n")
        for p in preds:
            if p.error:
                buf.write(f"{p.path:{width}s}  ERROR: {p.error}\n")
            else:
                buf.write(f"{p.path:{width}s}  {p.predicted[:14]:>14s}  "
                          + "  ".join(f"{p.probabilities[n]:12.4f}" for n in names) + "\n")
    if output:
        output.write_text(buf.getvalue())
        typer.echo(f"wrote {len(preds)} predictions to {output}")
    else:
        typer.echo(buf.getvalue(), nl=False)
    errors = [p for p in preds if p.error]
    for p in errors:
        typer.secho(f"error: {p.error}", fg=typer.colors.RED, err=True)
    if len(errors) == len(preds):
        raise typer.Exit(code=1)


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run folder."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (ONNX Runtime, no PyTorch needed) or torchscript."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Destination file (default: RUN/export/model.onnx "
                                       "or RUN/export/model.pt)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
) -> None:
    """Export a run for deployment: preprocessing, calibration and class names travel inside the file.

    The exported model takes uint8 images (N, C, H, W) as decoded and resized, and outputs logits and
    calibrated probabilities; `medclass predict FILE --backend onnx|torchscript` uses it."""
    if fmt not in ("onnx", "torchscript"):
        _fail(f"--format must be onnx or torchscript, got {fmt!r}")
    if checkpoint not in ("best", "last"):
        _fail(f"--checkpoint must be best or last, got {checkpoint!r}")
    from .engine import CheckpointError, RunError, load_run
    from .serving.export import VERIFY_TOLERANCE, export_run

    try:
        loaded = load_run(run, checkpoint=checkpoint, device="cpu")
    except (RunError, CheckpointError, ConfigError) as e:
        _fail(str(e))
    import warnings

    try:
        with warnings.catch_warnings():
            # a mismatch is reported below, as a CLI warning
            warnings.filterwarnings("ignore", message=r"the exported model .* differs", category=RuntimeWarning)
            result = export_run(loaded, fmt, out)
    except (ValueError, ImportError, OSError) as e:
        _fail(str(e))
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


@app.command()
def ensemble(
    runs: List[Path] = typer.Argument(..., help="Member run folders (same data split, classes and image size)."),
    name: str = typer.Option(..., "--name", help="The ensemble run goes to RUNS_DIR/NAME."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    weights: str = typer.Option("equal", "--weights", help="equal, auto (fit on validation) or w1,w2,..."),
    evaluate_test: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate it on the test split."),
) -> None:
    """Soft-voting ensemble of runs, saved as a run of its own that refers to its members."""
    from .data import DataError
    from .engine import CheckpointError, RunError
    from .evaluation import evaluate_run, make_ensemble

    try:
        w = weights if weights in ("equal", "auto") else [float(x) for x in weights.split(",")]
    except ValueError:
        _fail(f"--weights must be equal, auto or comma-separated numbers, got {weights!r}")
    progress = sys.stderr.isatty()
    try:
        spec = make_ensemble(runs, runs_dir / name, w, progress=progress)
        typer.echo("ensemble " + ", ".join(f"{Path(m).name}: {x:.3f}" for m, x in zip(spec["members"], spec["weights"]))
                   + f"; run in {runs_dir / name}")
        if evaluate_test:
            _print_eval(evaluate_run(runs_dir / name, progress=progress))
    except (DataError, RunError, CheckpointError, ConfigError, ValueError) as e:
        _fail(str(e))


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="Run folders (trained or ensembles)."),
    out: Path = typer.Option(Path("comparison"), "--out", help="Folder for comparison.md/.csv/.png."),
) -> None:
    """Compare runs side by side: a Markdown and CSV table and a bar chart."""
    from .engine import CheckpointError, RunError
    from .evaluation import compare_runs

    try:
        compare_runs(runs, out, progress=sys.stderr.isatty())
    except (RunError, CheckpointError, ConfigError) as e:
        _fail(str(e))
    typer.echo((out / "comparison.md").read_text(), nl=False)
    typer.echo(f"written to {out}/comparison.md, comparison.csv, comparison.png")


@app.command()
def audit(
    data: Optional[str] = typer.Argument(None, help="Folder, CSV manifest or .npz (as for train); none: the bundled BreastMNIST."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for audit.json and audit.md (default ./audit-<data name>)."),
    near_threshold: Optional[int] = typer.Option(
        None, "--near-threshold", help="Near duplicates: largest pHash Hamming distance (bits of 64); default 2 (medclass.data.audit.NEAR_THRESHOLD)."
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
    from .data import DataError, build_index, write_manifest
    from .data.audit import NEAR_THRESHOLD, audit as run_audit, dedupe, write_audit

    cfg = _build_config(data, config, sets)
    cfg.data.skip_corrupt = True  # a CSV id without its file is reported as unreadable, not an error
    threshold = NEAR_THRESHOLD if near_threshold is None else near_threshold
    if not 0 <= threshold <= 64:
        _fail(f"--near-threshold must be 0..64 (bits of the 64-bit perceptual hash), got {threshold}")
    source = cfg.data.manifest or cfg.data.source
    stem = (Path(source).resolve().stem or "data") if source else "breastmnist"
    out = out if out is not None else Path(f"audit-{stem}")
    try:
        index = build_index(cfg.data)
        report = run_audit(index, threshold, near, progress=sys.stderr.isatty(),
                           source=str(source) if source else None)
        json_path, md_path = write_audit(report, out)
    except (DataError, ConfigError, OSError, ValueError) as e:
        _fail(str(e))
    splits = list(report["counts"])
    width = max([len("class")] + [len(c) for c in report["class_names"]])
    typer.echo(f"{'class':{width}s}  " + "  ".join(f"{s:>6s}" for s in splits) + "   total")
    for c in report["class_names"]:
        row = [report["counts"][s].get(c, 0) for s in splits]
        typer.echo(f"{c:{width}s}  " + "  ".join(f"{n:6d}" for n in row) + f"  {sum(row):6d}")
    totals = [sum(report["counts"][s].values()) for s in splits]
    typer.echo(f"{'total':{width}s}  " + "  ".join(f"{n:6d}" for n in totals) + f"  {sum(totals):6d}")
    ex, nd = report["exact_duplicates"], report["near_duplicates"]
    typer.echo(f"unreadable files: {len(report['unreadable'])}")
    typer.echo(f"exact duplicate groups: {ex['n_groups']} ({ex['n_cross_split']} across splits, "
               f"{ex['n_within_split']} within one split; {ex['n_images_in_groups']} images)")
    if near:
        typer.echo(f"near duplicates (pHash distance <= {threshold}): {nd['n_pairs']} pairs ({nd['n_cross_split_pairs']} "
                   f"across splits), {nd['n_groups']} groups ({nd['n_cross_split']} across splits, "
                   f"{nd['n_within_split']} within one split)")
    typer.echo(f"groups (patient/lesion) in several splits: {len(report['groups_in_several_splits'])}; "
               f"label conflicts: {len(report['label_conflicts'])}")
    cross = [g for g in ex["groups"] if g["cross_split"]]
    shown = 10
    root = Path(source) if source and Path(source).is_dir() else (Path(source).parent if source else None)

    def rel(path: str) -> str:
        try:
            return os.path.relpath(path, root) if root is not None and "::" not in path else path
        except ValueError:
            return path

    if cross:
        typer.echo("exact duplicates across splits (one file per split shown):")
        for g in cross[:shown]:
            first = {}
            for i in g["items"]:
                first.setdefault(i["split"], i["path"])
            counts = ", ".join(f"{s} {n}" for s, n in g["splits"].items())
            typer.echo(f"  [{counts}] {', '.join(g['labels'])}: " + " = ".join(rel(x) for x in first.values()))
        if len(cross) > shown:
            typer.echo(f"  ... and {len(cross) - shown} more groups (all in {md_path})")
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
    run: Path = typer.Argument(..., help="Run folder to serve."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default serves this machine only."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    backend: str = typer.Option("torch", "--backend", help="torch (Grad-CAM on the page) or onnx (RUN/export/model.onnx, ONNX Runtime)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last (torch backend)."),
    max_upload_mb: Optional[float] = typer.Option(None, "--max-upload-mb", help="Largest upload in MiB (default 20, or $MEDCLASS_MAX_UPLOAD_BYTES)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Largest width x height (default 40,000,000, or $MEDCLASS_MAX_UPLOAD_PIXELS)."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="Longest side in pixels (default 10,000, or $MEDCLASS_MAX_UPLOAD_SIDE)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: critical, error, warning, info, debug."),
) -> None:
    """Serve a run over HTTP: POST /predict, GET /health, a web page at /, the model card at /model-card,
    the API schema at /docs. No authentication: keep the default loopback host, or put it behind a
    reverse proxy that authenticates users and terminates TLS."""
    from .serving.service import BACKENDS, build_app, is_loopback, serve as run_server
    from .serving.uploads import UploadLimits

    if backend not in BACKENDS:
        _fail(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if checkpoint not in ("best", "last"):
        _fail(f"--checkpoint must be best or last, got {checkpoint!r}")
    if not 0 < port < 65536:
        _fail(f"--port must be 1..65535, got {port}")
    try:
        limits = UploadLimits.from_env(
            max_bytes=None if max_upload_mb is None else int(max_upload_mb * 1024 * 1024),
            max_pixels=max_pixels, max_side=max_side)
    except ValueError as e:
        _fail(str(e))
    from .engine import CheckpointError, RunError

    try:
        application = build_app(run, backend=backend, limits=limits, checkpoint=checkpoint)
    except (RunError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    if not is_loopback(host):
        typer.secho(f"warning: {host} is reachable from other machines and the service has no authentication or "
                    "TLS; put it behind a reverse proxy that provides both", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"serving {run} ({backend}) at http://{host}:{port}/  (API schema: /docs; stop with Ctrl-C)")
    try:
        run_server(application, host=host, port=port, log_level=log_level)
    except OSError as e:
        _fail(f"cannot listen on {host}:{port}: {e}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
