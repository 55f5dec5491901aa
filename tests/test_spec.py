"""The run contract (medclass.core.spec) and the numbers around the network (medclass.core.pipeline):
round trips, version-1 specs, atomic writes, runs written before model_spec.json (committed runs in
results/), train writing the spec before its first epoch without changing its config, evaluate
storing calibration in it, and the numpy and torch branches of the pipeline agreeing."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medclass.core import pipeline
from medclass.core.config import RunConfig
from medclass.core.runs import RunError, RunFiles
from medclass.core.spec import (
    IMAGENET_MEAN, IMAGENET_STD, IMAGENET_WEIGHT_NAMES, SPEC_VERSION, ModelSpec, calibration_record, read_spec,
    spec_from_config, update_calibration, write_spec,
)

from helpers import make_folder_dataset, tiny_config

RESULTS = Path(__file__).resolve().parents[1] / "results"
CHEST_CLASSES = ["adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma"]


def _spec(**kw) -> ModelSpec:
    base = dict(class_names=["benign", "malignant"], channels=1, image_size=28, mean=[0.5], std=[0.25],
                dicom_window=[-600.0, 1500.0], temperature=1.3, threshold=0.4, single_logit=True, run="r",
                checkpoint_epoch=3, arch="resnet18", resize="pad", medclass_version="0.1.0")
    return ModelSpec(**{**base, **kw})


# ---- the spec object ------------------------------------------------------------------------------


def test_round_trip_through_json_and_the_run_folder(tmp_path):
    spec = _spec()
    assert spec.version == SPEC_VERSION == 4 and spec.task == "single_logit" and spec.num_outputs == 1
    assert ModelSpec.from_json(spec.to_json()) == spec
    path = write_spec(spec, tmp_path)
    assert path == RunFiles(tmp_path).spec and read_spec(tmp_path) == spec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_spec.json"]  # no temporary file left


def test_version_1_spec_reads_with_defaults_and_newer_is_refused():
    v1 = {"class_names": ["a", "b", "c"], "channels": 3, "image_size": 32, "mean": None, "std": None,
          "dicom_window": None, "temperature": 1.6, "threshold": None, "single_logit": False, "run": "run",
          "checkpoint_epoch": 1, "version": 1, "extra": {}}  # what medclass 0.1 exports embed
    spec = ModelSpec.from_json(json.dumps(v1))
    assert (spec.arch, spec.resize, spec.medclass_version, spec.version) == ("", "squash", "", SPEC_VERSION)
    assert spec.class_names == ["a", "b", "c"] and spec.temperature == 1.6 and spec.task == "softmax"
    assert spec.logit_adjustment is None  # a spec before version 3: the arg-max
    assert spec.intensity == "fixed"  # a spec before version 4: the fixed mean/std
    with pytest.raises(ValueError, match="version 5; this medclass reads up to 4"):
        ModelSpec.from_json(json.dumps({**v1, "version": 5}))
    with pytest.raises(ValueError, match="not JSON"):
        ModelSpec.from_json("{")


@pytest.mark.parametrize("change, message", [
    ({"class_names": ["a", "a"]}, "duplicate names"),
    ({"class_names": ["a", ""]}, "non-empty strings"),
    ({"class_names": ["a"]}, "at least 2 classes"),
    ({"threshold": 1.5}, "threshold"),
    ({"temperature": 0.0}, "temperature"),
    ({"class_names": ["a", "b", "c"]}, "single_logit needs 2 classes"),
    ({"mean": [0.5], "std": None}, "both"),
    ({"mean": [0.1, 0.2], "std": [0.3, 0.4]}, "1 or 1 values"),
    ({"std": [0.0]}, "std must be > 0"),
    ({"resize": "crop"}, "resize"),
    ({"channels": 2}, "channels"),
])
def test_invalid_fields_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        _spec(**change)


def test_atomic_write_refuses_a_planted_symlink(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    RunFiles(run).spec.symlink_to(target)
    with pytest.raises(RunError, match="symbolic link"):
        write_spec(_spec(), run)
    assert target.read_text() == "precious" and RunFiles(run).spec.is_symlink()
    assert sorted(p.name for p in run.iterdir()) == ["model_spec.json"]


def test_a_broken_spec_or_calibration_names_the_file(tmp_path):
    RunFiles(tmp_path).spec.write_text("{not json")
    with pytest.raises(ValueError, match="model_spec.json"):
        read_spec(tmp_path)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    RunConfig().save(legacy / "config.yaml")
    (legacy / "classes.json").write_text('["a", "b"]')
    (legacy / "calibration.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"calibration\.json is not JSON"):
        read_spec(legacy)
    with pytest.raises(RunError, match="not a medclass run folder"):
        read_spec(tmp_path / "nothing-here")


def test_spec_module_and_pipeline_do_not_import_torch():
    code = ("import sys; import medclass.core.spec, medclass.core.pipeline, medclass.serving.prediction; "
            "import numpy as np; from medclass.core import pipeline as p; "
            "p.decide(p.probabilities(np.zeros((2, 3)), 2.0)); p.preprocess(np.zeros((1, 1, 2, 2), np.uint8), [0.5], [0.2]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---- runs written before model_spec.json: committed runs in results/ ------------------------------


def test_committed_run_loads_from_its_config_and_classes():
    run = RESULTS / "chest-ct-64"
    assert not RunFiles(run).spec.exists() and not RunFiles(run).best.exists()  # config.yaml + classes.json only
    spec = read_spec(run)
    assert spec.class_names == CHEST_CLASSES and (spec.channels, spec.image_size) == (3, 64)
    assert (spec.mean, spec.std, spec.temperature, spec.threshold) == (None, None, 1.0, None)
    assert (spec.arch, spec.task, spec.resize, spec.run, spec.medclass_version) == (
        "resnet50", "softmax", "squash", "chest-ct-64", "")
    assert calibration_record(spec) is None
    binary = read_spec(RESULTS / "brain-mri-64")  # a single-logit run
    assert binary.single_logit and binary.task == "single_logit" and len(binary.class_names) == 2
    assert read_spec(RESULTS / "chest-ct-64-chained").arch == "chained"


def test_legacy_run_with_calibration_and_ensemble(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    for name in ("config.yaml", "classes.json"):
        (run / name).write_bytes((RESULTS / "chest-ct-64" / name).read_bytes())
    record = json.loads((RESULTS / "chest-ct-report" / "calibration.json").read_text())  # a real calibration.json
    (run / "calibration.json").write_text(json.dumps(record))
    spec = read_spec(run)
    assert spec.temperature == record["temperature"] and spec.threshold is None
    assert calibration_record(spec) == record
    # an ensemble run of the current layout: config.yaml and classes.json copied from a member
    (run / "ensemble.json").write_text(json.dumps({"members": [], "weights": [], "checkpoint": "best"}))
    (run / "calibration.json").unlink()
    ens = read_spec(run)
    assert (ens.mean, ens.std, ens.arch, ens.single_logit) == (None, None, "ensemble", False)
    # update_calibration gives the old run a model_spec.json carrying the calibration
    updated = update_calibration(run, 0.9, None, record={"temperature": 0.9, "fitted_on": "valid"})
    assert read_spec(run) == updated and updated.temperature == 0.9 and calibration_record(updated)["fitted_on"] == "valid"


def test_imagenet_weights_mean_imagenet_normalisation_in_one_place():
    from medclass.models import pretrained as P

    assert IMAGENET_WEIGHT_NAMES == {*P.IMAGENET_CHECKPOINTS, *P.IMAGENET_ALIASES}
    assert P.IMAGENET_MEAN is IMAGENET_MEAN and P.IMAGENET_STD is IMAGENET_STD
    cfg = RunConfig()
    cfg.data.intensity = "fixed"  # what data.intensity: auto resolves to with pretrained weights
    before = cfg.to_dict()
    for name, expect in (("imagenet-v2", list(IMAGENET_MEAN)), ("ImageNet", list(IMAGENET_MEAN)), (None, None),
                         ("runs/other", None)):
        cfg.model.pretrained = name
        assert spec_from_config(cfg, ["a", "b"], "r").mean == expect
    cfg.model.pretrained = "imagenet"
    cfg.data.normalize, cfg.data.mean, cfg.data.std = True, [0.4], [0.3]  # an explicit normalisation wins
    assert (spec_from_config(cfg, ["a", "b"], "r").mean, spec_from_config(cfg, ["a", "b"], "r").std) == ([0.4], [0.3])
    assert before["data"]["normalize"] is False  # the function never touches its config


# ---- training writes it, evaluation calibrates it ----------------------------------------------------


class _StopAtFirstStep(Exception):
    pass


def _stop_at_first_step(monkeypatch, check):
    """Make the first optimizer step (epoch 1, step 0) run ``check()`` and stop training."""

    def step(self, *args, **kwargs):
        check()
        raise _StopAtFirstStep

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def test_train_writes_the_spec_before_the_first_epoch(tmp_path, monkeypatch):
    from medclass.engine import train

    data = make_folder_dataset(tmp_path / "data")
    cfg = tiny_config(data, epochs=1)
    cfg.data.dicom_window = [40.0, 400.0]
    seen = {}

    def check():
        seen["spec"] = read_spec(tmp_path / "run")
        seen["last"] = RunFiles(tmp_path / "run").last.exists()

    _stop_at_first_step(monkeypatch, check)
    with pytest.raises(_StopAtFirstStep):
        train(cfg, tmp_path / "run")
    spec = seen["spec"]
    assert not seen["last"]  # before any checkpoint
    assert spec.class_names == ["bright", "dark"] and (spec.channels, spec.image_size) == (3, 16)
    assert (spec.arch, spec.task, spec.mean, spec.temperature, spec.threshold) == ("resnet18", "softmax", None, 1.0, None)
    assert spec.dicom_window == [40.0, 400.0] and spec.run == "run" and spec.checkpoint_epoch == -1
    import medclass

    assert spec.medclass_version == medclass.__version__


def test_train_does_not_mutate_its_config_with_imagenet_weights(tmp_path, monkeypatch):
    """pretrained="imagenet": the spec and config.yaml say ImageNet normalisation; the caller's config
    is unchanged. The weights are a random ResNet-50 in a private torch hub cache, named by its hash."""
    from medclass.engine import train
    from medclass.models import resnet50
    from medclass.models import pretrained as P

    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = P.hub_checkpoint_dir()
    hub.mkdir(parents=True)
    weights = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(resnet50().state_dict(), weights)
    name = f"resnet50-{hashlib.sha256(weights.read_bytes()).hexdigest()[:8]}.pth"
    os.replace(weights, hub / name)
    monkeypatch.setitem(P.IMAGENET_CHECKPOINTS, "imagenet-v1",
                        P.HubCheckpoint("imagenet-v1", "test", name, f"https://example.invalid/{name}"))

    data = make_folder_dataset(tmp_path / "data")
    cfg = tiny_config(data, epochs=1)
    cfg.model.arch, cfg.model.stem, cfg.model.pretrained = "resnet50", "imagenet", "imagenet"
    before = cfg.to_dict()
    _stop_at_first_step(monkeypatch, lambda: None)  # the weights loaded; no need to train
    with pytest.raises(_StopAtFirstStep):
        train(cfg, tmp_path / "run")
    assert cfg.to_dict() == before and cfg.data.normalize is False
    spec = read_spec(tmp_path / "run")
    assert (spec.mean, spec.std) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    saved = RunConfig.load(tmp_path / "run" / "config.yaml")
    assert saved.data.normalize and saved.data.mean == list(IMAGENET_MEAN)
    # where the weights came from is in the spec (not in the config): the file and its SHA-256
    provenance = spec.extra.pop("pretrained")
    assert provenance["file"] == str(hub / name) and provenance["sha256"] == hashlib.sha256((hub / name).read_bytes()).hexdigest()
    assert spec_from_config(saved, spec.class_names, "run") == spec  # config.yaml reads back to the same spec


def test_evaluate_stores_calibration_in_the_spec_and_every_path_uses_it(tmp_path):
    from medclass.engine import load_run, train
    from medclass.evaluation import evaluate_run
    from medclass.serving.predictor import TorchClassifier
    from medclass.serving.prediction import predict_files
    from medclass.workflow import predict

    data = make_folder_dataset(tmp_path / "data", per_class=16)
    run_dir = tmp_path / "run"
    train(tiny_config(data, epochs=1), run_dir)
    assert read_spec(run_dir).temperature == 1.0
    m = evaluate_run(run_dir, progress=False, n_bootstrap=50)
    spec = read_spec(run_dir)
    assert spec.temperature == m["calibration"]["temperature"] != 1.0
    assert spec.threshold == m["operating_point"]["chosen_on_valid"]["threshold"]
    assert calibration_record(spec) == json.loads(RunFiles(run_dir).calibration.read_text())

    run = load_run(run_dir)
    assert run.spec == dataclasses.replace(spec, checkpoint_epoch=run.checkpoint_epoch) and run.checkpoint_epoch == 1
    files = sorted((data / "dark").iterdir())[:3] + sorted((data / "bright").iterdir())[:3]
    torch_preds, names = predict(run_dir, files)  # `medclass predict RUN FILES`: load_predictor, then predict_files
    backend_preds = predict_files(TorchClassifier(run), files)
    assert names == spec.class_names
    assert [p.to_dict() for p in torch_preds] == [p.to_dict() for p in backend_preds]
    probs = np.array([[p.probabilities[n] for n in spec.class_names] for p in torch_preds])
    decided = [spec.class_names[k] for k in pipeline.decide(probs, spec.threshold)]
    assert [p.predicted for p in torch_preds] == decided


# ---- pipeline: numpy and torch agree ----------------------------------------------------------------


def test_pipeline_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    x_np = pipeline.preprocess(images, mean, std)
    x_t = pipeline.preprocess(torch.from_numpy(images), mean, std)
    assert x_np.dtype == np.float32 and x_t.dtype == torch.float32
    np.testing.assert_allclose(x_np, x_t.numpy(), atol=1e-6)
    assert pipeline.preprocess(images).max() <= 1.0  # no normalisation: [0, 1]
    for k in (1, 2, 4):
        logits = rng.standard_normal((6, k)).astype(np.float32) * 3
        for t in (1.0, 1.7):
            p_np = pipeline.probabilities(logits, t)
            p_t = pipeline.probabilities(torch.from_numpy(logits), t)
            assert p_np.dtype == np.float32 and p_np.shape == (6, max(k, 2))
            np.testing.assert_allclose(p_np, p_t.numpy(), atol=1e-6)
            np.testing.assert_allclose(p_np.sum(1), 1.0, atol=1e-6)
            for thr in (None, 0.3):
                np.testing.assert_array_equal(pipeline.decide(p_np, thr), pipeline.decide(p_t, thr).numpy())
    hwc = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    hwc.setflags(write=False)
    nchw = pipeline.hwc_to_nchw(hwc)
    assert nchw.shape == (2, 3, 4, 5) and nchw.flags.c_contiguous and nchw.flags.writeable
    np.testing.assert_array_equal(pipeline.nchw_to_hwc(nchw), hwc)


def test_preprocess_and_ensemble_use_the_pipeline():
    from medclass.data import Preprocess
    from medclass.models import logits_to_probs

    images = torch.randint(0, 256, (3, 1, 6, 6), dtype=torch.uint8)
    np.testing.assert_allclose(Preprocess([0.5], [0.25])(images).numpy(),
                               pipeline.preprocess(images.numpy(), [0.5], [0.25]), atol=1e-6)
    z = torch.randn(4, 1)
    torch.testing.assert_close(logits_to_probs(z), pipeline.probabilities(z))
    assert Preprocess.from_spec(_spec(mean=None, std=None)).normalize is False


def test_logit_adjustment_in_the_spec_is_used_by_every_path(tmp_path):
    """A stored adjustment that favours one class by a huge offset decides every prediction, in
    predict, the serving backend and evaluate's as-deployed figures; it survives the JSON round trip."""
    from medclass.engine import load_run, train
    from medclass.evaluation import evaluate_run
    from medclass.serving.prediction import load_predictor, predict_files
    from medclass.serving.predictor import TorchClassifier
    from medclass.core.spec import update_calibration

    data = make_folder_dataset(tmp_path / "data", per_class=16)
    run_dir = tmp_path / "run"
    train(tiny_config(data, epochs=1), run_dir)
    spec = update_calibration(run_dir, 1.0, None, logit_adjustment=[0.0, 60.0])
    assert ModelSpec.from_json(spec.to_json()).logit_adjustment == [0.0, 60.0]
    assert read_spec(run_dir).logit_adjustment == [0.0, 60.0]
    run = load_run(run_dir)
    files = sorted((data / "dark").iterdir())[:3] + sorted((data / "bright").iterdir())[:3]
    favoured = spec.class_names[1]
    assert {p.predicted for p in predict_files(load_predictor(run_dir), files)} == {favoured}
    assert {p.predicted for p in predict_files(TorchClassifier(run), files)} == {favoured}
    m = evaluate_run(run_dir, progress=False, n_bootstrap=20, calibrate=False)
    assert m["as_deployed"]["rule"] == "logit_adjustment"
    y_fav = np.asarray(m["confusion_matrix"])[1].sum()
    assert m["as_deployed"]["accuracy"] == pytest.approx(y_fav / m["n"])  # everything called the favoured class
    with pytest.raises(ValueError, match="logit_adjustment needs 2 finite"):
        dataclasses.replace(spec, logit_adjustment=[0.0])
    with pytest.raises(ValueError, match="logit_adjustment needs 2 finite"):
        dataclasses.replace(spec, logit_adjustment=[0.0, float("nan")])
