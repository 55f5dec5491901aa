"""The Python API (medclass.api): configuration from keyword arguments, and train / evaluate /
predict / explain / export / report on a tiny run, as a notebook uses them."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import medclass
from medclass.core.config import ConfigError, RunConfig

from helpers import make_folder_dataset

PNG = b"\x89PNG\r\n\x1a\n"


def test_import_medclass_stays_light_and_names_the_api():
    code = ("import sys, medclass; cfg = medclass.configure(epochs=2); f = medclass.train; r = medclass.Run; "
            "print('torch' in sys.modules, cfg.train.epochs, sorted(set(medclass.__all__) - set(dir(medclass))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "2", "[]"]  # no torch; every public name listed by dir()
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        medclass.trian


def test_configure_takes_bare_dotted_and_sectioned_keys():
    cfg = medclass.configure("data/x", epochs=4, image_size=64, **{"train.lr": "3e-4"}, model={"arch": "resnet34"},
                             time_budget="2m")
    assert isinstance(cfg, RunConfig)
    assert (cfg.data.source, cfg.train.epochs, cfg.data.image_size, cfg.train.lr, cfg.model.arch,
            cfg.train.time_budget) == ("data/x", 4, 64, 3e-4, "resnet34", "2m")
    # no data, no file: the bundled BreastMNIST's presets, as `medclass train` without arguments
    assert medclass.configure().train.time_budget == "10m"
    fixed = medclass.configure(epochs=3)
    assert (fixed.data.image_size, fixed.data.channels, fixed.model.stem) == (28, 1, "small")
    assert fixed.train.time_budget is None


def test_configure_errors_name_the_key_and_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch'; did you mean epochs"):
        medclass.configure(epoch=3)
    with pytest.raises(ConfigError, match=r"train.epochs must be of type int"):
        medclass.configure(epochs="many")
    with pytest.raises(ConfigError, match=r"train= must be a mapping"):
        medclass.configure(train=3)
    with pytest.raises(ConfigError, match=r"train.time_budget must be a duration"):
        medclass.configure(time_budget="soon")
    with pytest.raises(ConfigError, match=r"unknown preset 'fast'"):
        medclass.configure(preset="fast")
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml does not exist"):
        medclass.configure(file=tmp_path / "nope.yaml")


def test_load_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(medclass.RunError, match="does not exist"):
        medclass.load(tmp_path / "missing")
    with pytest.raises(medclass.RunError, match="not a medclass run folder"):
        medclass.load(tmp_path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run trained through the API: 16 px, 2 epochs of 2 steps, evaluated."""
    root = tmp_path_factory.mktemp("api")
    data = make_folder_dataset(root / "data", splits={"train": 8, "valid": 4, "test": 4}, size=16)
    run = medclass.train(data, name="tiny", runs_dir=root / "runs", image_size=16, stem="small", batch_size=4,
                         epochs=2, max_steps_per_epoch=2, evaluate=True)
    return run, data


def _run_files(root):
    """Every file of a run folder, relative, without the ones that differ by nature (TensorBoard events,
    the decode cache)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and "tensorboard" not in p.parts and "cache" not in p.parts)


def test_a_run_trained_from_python_has_the_files_of_one_trained_by_the_cli(tiny_run, tmp_path):
    """One workflow (medclass.workflow.train_run) behind both: the API's run has its OOD detector too."""
    from typer.testing import CliRunner

    from medclass.cli import app

    run, data = tiny_run
    runs = tmp_path / "runs"
    r = CliRunner().invoke(app, ["train", str(data), "--name", "tiny", "--runs-dir", str(runs), "--image-size", "16",
                                 "--epochs", "2", "--batch-size", "4", "--set", "model.stem=small",
                                 "--set", "train.max_steps_per_epoch=2", "--set", "train.progress=false"])
    assert r.exit_code == 0, r.output
    api_files, cli_files = _run_files(run.path), _run_files(runs / "tiny")
    assert "ood.json" in api_files and "ood.npz" in api_files and "eval-test/metrics.json" in api_files
    assert api_files == cli_files


def test_train_returns_a_run_with_its_history_and_evaluation(tiny_run):
    run, data = tiny_run
    assert isinstance(run, medclass.Run) and run.name == "tiny" and os.fspath(run) == str(run.path)
    assert [r["epoch"] for r in run.history] == [1, 2] and run.result.best_epoch in (1, 2)
    assert run.config.data.source == str(data) and run.config.train.epochs == 2
    assert run.class_names == ["bright", "dark"]
    ev = run.last_evaluation
    saved = json.loads((run.path / "eval-test" / "metrics.json").read_text())
    assert ev["accuracy"] == saved["accuracy"] and ev["n"] == 8 and ev.path == run.path / "eval-test"
    low, high = ev.confidence_interval("accuracy")
    assert low <= ev["accuracy"] <= high
    with pytest.raises(KeyError, match="no confidence interval for 'speed'"):
        ev.confidence_interval("speed")
    assert set(ev.figures) == {"confusion_matrix", "roc", "reliability"}
    assert ev.figures["roc"]._repr_png_().startswith(PNG)
    page = ev._repr_html_()
    assert "balanced accuracy" in page and page.count("data:image/png;base64,") == 3
    assert "test: n=8" in repr(ev)
    assert run.curves()._repr_png_().startswith(PNG) and "best epoch" in run._repr_html_()
    reopened = medclass.load(run.path)
    assert reopened.history == run.history


def test_predict_takes_files_folders_and_arrays_alike(tiny_run, tmp_path):
    run, data = tiny_run
    files = sorted((data / "test" / "bright").glob("*.png"))[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    preds = run.predict([*files, bad])
    assert isinstance(preds, medclass.Predictions) and len(preds) == 3
    assert preds[2].error and preds[2].predicted is None
    assert all(p.predicted in ("bright", "dark") for p in preds[:2])
    probs = preds.probabilities
    assert probs.shape == (3, 2) and np.isnan(probs[2]).all() and np.allclose(probs[:2].sum(1), 1, atol=1e-5)
    arrays = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])  # (2, 16, 16, 3) uint8
    from_arrays = run.predict(arrays)
    assert [p.predicted for p in from_arrays] == [p.predicted for p in preds[:2]]
    assert from_arrays.probabilities == pytest.approx(probs[:2], abs=1e-6)
    assert len(run.predict(arrays[..., 0])) == 2  # greyscale (N, H, W): converted to the run's 3 channels
    assert len(run.predict(data / "test")) == 8  # a folder: its images
    assert "<table>" in preds._repr_html_() and "broken.png" in preds._repr_html_()
    assert preds.to_records()[0].keys() == {"path", "predicted", "p_bright", "p_dark", "error"}
    with pytest.raises(ValueError, match="must be uint8"):
        run.predict(arrays.astype(np.float32))


def test_explain_gives_a_heat_map_at_the_input_size(tiny_run):
    run, data = tiny_run
    path = sorted((data / "test" / "bright").glob("*.png"))[0]
    ex = run.explain(path)
    assert isinstance(ex, medclass.Explanation)
    assert ex.heatmap.shape == (16, 16) and 0 <= ex.heatmap.min() and ex.heatmap.max() <= 1
    assert ex.overlay.shape == (16, 16, 3) and ex.overlay.dtype == np.uint8
    assert ex.predicted == run.predict(path)[0].predicted and ex.explained == ex.predicted
    assert ex._repr_png_().startswith(PNG)
    other = "dark" if ex.predicted == "bright" else "bright"
    assert run.explain(np.asarray(Image.open(path)), target_class=other).explained == other
    with pytest.raises(ValueError, match="not a class of this run: bright, dark"):
        run.explain(path, target_class="tumour")
    with pytest.raises(ValueError, match="explain takes one image, got 8"):
        run.explain(data / "test")


def test_export_and_report_write_their_files(tiny_run):
    run, _ = tiny_run
    exported = run.export("torchscript")
    assert exported.path == run.path / "export" / "model.pt" and exported.path.is_file()
    assert exported.max_prob_diff is not None and exported.max_prob_diff < 1e-4
    with pytest.raises(ValueError, match="format must be one of onnx, torchscript"):
        run.export("tflite")
    report = run.report(explain=1, bootstrap=20)
    assert report.path == run.path / "report-test.html" and report.path.is_file()
    assert report._repr_html_().startswith("<iframe srcdoc=")
    rows = list(csv.DictReader(open(run.path / "eval-test" / "predictions.csv")))
    assert len(rows) == 8


@pytest.mark.slow
def test_cv_and_subgroup_evaluation_from_the_python_api(tmp_path):
    """Issue 13's cross-validation and subgroup results are reachable from `import medclass`, not only
    from the CLI: medclass.cv(...) and Run.evaluate(subgroups=..., group_aggregation=...)."""
    from test_groups import _csv_with_patients

    csv_path, rows = _csv_with_patients(tmp_path / "data")
    record = medclass.cv(csv_path, folds=2, name="cv", runs_dir=tmp_path / "runs", epochs=1, image_size=16,
                         batch_size=8, progress=False)
    root = tmp_path / "runs" / "cv"
    assert record["run_dir"] == str(root) and (root / "cv.json").is_file()
    assert len(record["folds"]) == 2 and record["out_of_fold"]["n"] == sum(record["fold_sizes"])
    ensemble = medclass.load(root / "ensemble")
    assert ensemble.class_names == sorted({r["label"] for r in rows})
    with pytest.raises(medclass.RunError, match="exists|already"):
        medclass.cv(csv_path, folds=2, name="cv", runs_dir=tmp_path / "runs", epochs=1, image_size=16)

    run = medclass.load(root / "fold-1")
    ev = run.evaluate(data=csv_path, subgroups=["sex"], group_aggregation="max", bootstrap=20,
                      out=tmp_path / "eval-sub")
    assert set(ev["subgroups"]["sex"]["subgroups"]) == {"male", "female", "unknown"}
    assert ev["group_level"]["aggregation"] == "max" and ev["group_level"]["n_groups"] < ev["n"]


def test_cv_resume_errors_are_the_same_from_the_cli_and_the_api(tmp_path):
    """One definition (medclass.core.runs.resume_cv_dir) of the interrupted cross-validation to continue."""
    from typer.testing import CliRunner

    from medclass.cli.app import app

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("{}\n")  # a folder without cv.json
    for name, message in ((None, "needs the --name"), ("nothing", "holds no interrupted cross-validation"),
                          ("half", "holds no interrupted cross-validation")):
        with pytest.raises(medclass.RunError, match=message):
            medclass.cv(name=name, runs_dir=tmp_path, resume=True)
        r = CliRunner().invoke(app, ["cv", "--resume", "--runs-dir", str(tmp_path)] + (["--name", name] if name else []))
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
