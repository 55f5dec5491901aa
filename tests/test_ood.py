"""Out-of-distribution scores (issue 13, part 4): medclass.evaluation.ood and the features they read."""

import numpy as np
import pytest
import torch

from medclass.core.ood import energy_score, fit_mahalanobis, fit_threshold, ood_auroc
from medclass.core.ood import combine_layer_scores, fit_detector, layered_mahalanobis_score, robust_scale


def test_energy_is_minus_logsumexp_and_single_logits_are_two():
    z = np.array([[2.0, 0.0, -1.0], [0.1, 0.1, 0.1]])
    np.testing.assert_allclose(energy_score(z), -np.log(np.exp(z).sum(1)))
    np.testing.assert_allclose(energy_score(z, temperature=2.0), -2.0 * np.log(np.exp(z / 2).sum(1)))
    np.testing.assert_allclose(energy_score(np.array([3.0, -1.0])), -np.log(1 + np.exp([3.0, -1.0])))
    np.testing.assert_allclose(energy_score(np.array([[1000.0, 0.0]])), [-1000.0])  # no overflow
    # a confident logit vector has lower energy (more in-distribution) than a flat one
    assert energy_score(np.array([[8.0, 0.0]]))[0] < energy_score(np.array([[0.5, 0.4]]))[0]
    with pytest.raises(ValueError, match="> 0"):
        energy_score(z, temperature=0)


def test_mahalanobis_flags_features_far_from_every_class():
    rng = np.random.default_rng(0)
    means = np.array([[0.0] * 8, [4.0] * 8])
    y = rng.integers(0, 2, 300)
    feats = means[y] + rng.normal(0, 1, (300, 8))
    model = fit_mahalanobis(feats, y, 2)
    np.testing.assert_allclose(model.means, [feats[y == 0].mean(0), feats[y == 1].mean(0)])
    near = means[rng.integers(0, 2, 100)] + rng.normal(0, 1, (100, 8))
    far = rng.normal(0, 1, (100, 8)) + np.r_[[12.0] * 4, [-8.0] * 4]
    s_in, s_out = model.score(near), model.score(far)
    threshold = fit_threshold(s_in)
    assert np.mean(s_in > threshold) == pytest.approx(0.05, abs=0.011)
    assert np.mean(s_out > threshold) == 1.0 and ood_auroc(s_in, s_out) == 1.0
    with pytest.raises(ValueError, match="classes \\[2\\]"):
        fit_mahalanobis(feats, y, 3)


def test_threshold_and_auroc_edges():
    assert fit_threshold(np.arange(101.0), rule="quantile") == pytest.approx(95.0)
    # conformal (the default): the ceil((n + 1) * 0.95)-th smallest; with 38 validation scores (brain MRI's) the largest
    assert fit_threshold(np.arange(101.0)) == 96.0  # ceil(96.9) = 97th smallest
    assert fit_threshold(np.arange(38.0), rule="conformal") == 37.0
    assert fit_threshold(np.arange(38.0), rule="quantile") == pytest.approx(35.15)
    with pytest.raises(ValueError, match="quantile, conformal"):
        fit_threshold(np.arange(3.0), rule="max")
    with pytest.raises(ValueError):
        fit_threshold(np.array([]))
    with pytest.raises(ValueError):
        fit_threshold(np.arange(3.0), quantile=1.0)
    assert ood_auroc(np.array([]), np.array([1.0])) is None
    assert ood_auroc(np.array([0.0, 1.0]), np.array([0.5, 2.0])) == pytest.approx(0.75)


def test_features_are_the_heads_input_in_one_pass():
    from medclass.data import Preprocess
    from medclass.engine.inference import logits_and_features
    from medclass.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3, in_channels=1, stem="small").eval()
    images = torch.randint(0, 255, (5, 1, 16, 16), dtype=torch.uint8)
    logits, feats = logits_and_features(model, images, Preprocess(None, None), torch.device("cpu"), batch_size=2)
    assert logits.shape == (5, 3) and feats.shape == (5, model.get_classifier().in_features)
    torch.testing.assert_close(model.get_classifier()(feats), logits)
    assert not model.get_classifier()._forward_pre_hooks  # the hook is removed


@pytest.mark.parametrize("arch,options", [("resnet18", {"stem": "small"}), ("custom_cnn", {}),
                                          ("chained", {"chain_stage": 2, "cnn_widths": (8, 8)})])
def test_layer_features_are_each_stage_pooled_in_the_same_pass(arch, options):
    from medclass.data import Preprocess
    from medclass.engine.inference import logits_and_features, logits_and_layer_features, model_feature_layers
    from medclass.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, in_channels=1, **options).eval()
    stages = model.feature_stages()
    assert {"resnet18": ("layer1", "layer2", "layer3", "layer4"), "custom_cnn": tuple(f"features.{i}" for i in range(4)),
            "chained": ("resnet.layer1", "resnet.layer2", "cnn.0", "cnn.1")}[arch] == stages
    names = model_feature_layers(model, "stages+std")
    assert names == stages + tuple(f"{n}:std" for n in stages) and model_feature_layers(model, "penultimate") == (
        "penultimate",)
    size = 32 if arch == "chained" else 16
    images = torch.randint(0, 255, (5, 1, size, size), dtype=torch.uint8)
    cpu = torch.device("cpu")
    logits, feats = logits_and_layer_features(model, images, Preprocess(None, None), cpu, (*names, "penultimate"), 2)
    plain, penultimate = logits_and_features(model, images, Preprocess(None, None), cpu, batch_size=2)
    torch.testing.assert_close(logits, plain)
    torch.testing.assert_close(feats[-1], penultimate)  # "penultimate": the head's input
    torch.testing.assert_close(feats[len(stages) - 1], penultimate)  # = the last stage, average-pooled
    # each stage's map, captured by a hook on its module: mean and (population) std over h, w
    maps = {}
    hooks = [dict(model.named_modules())[n].register_forward_hook(lambda m, a, out, n=n: maps.__setitem__(n, out))
             for n in stages]
    with torch.no_grad():
        model(Preprocess(None, None)(images[:2]))
    for h in hooks:
        h.remove()
    for i, n in enumerate(stages):
        assert feats[i].shape == (5, maps[n].shape[1])
        torch.testing.assert_close(feats[i][:2], maps[n].mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(feats[len(stages) + i][:2], maps[n].std(dim=(2, 3), correction=0), rtol=1e-4,
                                   atol=1e-5)
    with pytest.raises(ValueError, match="no feature stage 'layer9'"):
        model.stage_indices(["layer9"])


def test_layers_are_standardised_by_their_validation_median_and_iqr_then_combined():
    rng = np.random.default_rng(0)
    assert robust_scale(np.arange(9.0)) == (4.0, 4.0) and robust_scale(np.zeros(5)) == (0.0, 1e-12)
    scores = [np.array([1.0, 5.0, 9.0]), np.array([100.0, 200.0, 700.0])]
    np.testing.assert_allclose(combine_layer_scores(scores, [5.0, 200.0], [4.0, 100.0], "max"), [-1.0, 0.0, 5.0])
    np.testing.assert_allclose(combine_layer_scores(scores, [5.0, 200.0], [4.0, 100.0], "sum"), [-2.0, 0.0, 6.0])
    with pytest.raises(ValueError, match="max, sum"):
        combine_layer_scores(scores, [0, 0], [1, 1], "mean")
    # two layers: in-distribution images are ordinary in both; a foreign image is far out in one layer only,
    # on a scale (layer 2's distances are 100x layer 1's) that an unstandardised sum would drown
    y = rng.integers(0, 2, 400)
    train = [rng.normal(0, 1, (400, 4)) + y[:, None], 10 * rng.normal(0, 1, (400, 6)) + 10 * y[:, None]]
    yv = rng.integers(0, 2, 100)
    valid = [rng.normal(0, 1, (100, 4)) + yv[:, None], 10 * rng.normal(0, 1, (100, 6)) + 10 * yv[:, None]]
    logits = rng.normal(0, 1, (100, 2))
    d = fit_detector(train, y, valid, logits, 2, ("a", "b"), combine="max", threshold_rule="quantile")
    assert d.layers == ("a", "b") and d.feature_dims == [4, 6] and len(d.centre) == len(d.scale) == 2
    assert d.valid_flagged["mahalanobis"] == pytest.approx(0.05) and d.n_train == 400 and d.n_valid == 100
    odd = [np.full((1, 4), 9.0), valid[1][:1]]  # far out in layer "a", ordinary in "b"
    assert d.flag(d.score(None, odd))[0]
    z = [(s - c) / w for s, c, w in zip(d.layer_scores(odd), d.centre, d.scale)]
    assert d.score(None, odd)[0] == pytest.approx(max(z[0][0], z[1][0]))
    with pytest.raises(ValueError, match="refit"):
        d.score(None, odd[:1])
    # a constant layer (the ':std' of a 1 x 1 map) is left out; the conformal rule keeps more below it
    c = fit_detector([*train, np.zeros((400, 3))], y, [*valid, np.zeros((100, 3))], logits, 2, ("a", "b", "c"))
    assert c.layers == ("a", "b") and c.threshold_rule == "conformal" and c.valid_flagged["mahalanobis"] == 0.04


def test_the_graphs_score_function_is_the_detectors_on_tensors():
    """The exported graphs call layered_mahalanobis_score on float32 buffers (OODDetector.tensors):
    the same numbers as the float64 numpy path, for both combine rules."""
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    train = [rng.normal(size=(60, 3)) + y[:, None], rng.normal(size=(60, 5))]
    valid = [rng.normal(size=(20, 3)), rng.normal(size=(20, 5))]
    test = [rng.normal(size=(7, 3)) * 3, rng.normal(size=(7, 5)) * 3]
    for rule in ("max", "sum"):
        d = fit_detector(train, y, valid, rng.normal(size=(20, 2)), 2, ("l1", "l2"), combine=rule)
        t = d.tensors()
        got = layered_mahalanobis_score([torch.tensor(f, dtype=torch.float32) for f in test], t["means"],
                                        t["precisions"], t["centre"], t["scale"], rule)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), d.score(None, test), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_ood_benchmark_scores_a_run_against_foreign_sets_and_corruptions(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    from helpers import make_folder_dataset, tiny_config

    from medclass.engine import train

    spec = importlib.util.spec_from_file_location("ood_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "ood.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = make_folder_dataset(tmp_path / "data", size=16, splits={"train": 12, "valid": 6, "test": 6})
    foreign = make_folder_dataset(tmp_path / "other", size=16, per_class=5, stripe=3, seed=4)
    train(tiny_config(data, epochs=1), tmp_path / "run")
    out = tmp_path / "ood.json"
    assert bench.main([str(tmp_path / "run"), "--foreign", str(data), str(foreign), "--per-set", "6",
                       "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    (r,) = record["runs"]
    assert set(r["variants"]) == {"energy/quantile", *bench.VARIANTS} and r["n_valid"] == 12
    assert {"penultimate/quantile", "stages-max/quantile", "stages-sum/quantile"} <= set(r["variants"])
    for m in r["variants"].values():
        assert set(m["foreign"]) == {"blank", "noise", "inverted", "other"}  # its own set is not foreign
        assert m["foreign"]["other"]["n"] == 6 and 0 <= m["foreign"]["noise"]["flagged"] <= 1
        assert 0 <= m["own_test_flagged"] <= 1 and m["min_modality_flagged"] == m["foreign"]["other"]["flagged"]
    assert set(r["layer_auroc"]) == set(r["layers"]) and "layer1:std" in r["layers"]
    assert set(record["summary"]) == set(r["variants"]) and record["hardware"]["cpu_model"]


# ---- the detector a run stores, and every prediction path that returns it -----------------------

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from helpers import make_folder_dataset, png_bytes  # noqa: E402

from medclass.cli.app import app  # noqa: E402
from medclass.core.ood import (  # noqa: E402
    DEFAULT_OOD_COMBINE, DEFAULT_OOD_LAYERS, DEFAULT_OOD_METHOD, OOD_VERSION, OOD_WARNING, OODDetector, read_ood,
    write_ood,
)
from medclass.core.runs import RunError, RunFiles  # noqa: E402

SIZE = 16


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _foreign_images(folder: Path) -> list[Path]:
    """A blank image and four uniform-noise images, nothing like the dark/bright striped training set."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = [np.zeros((SIZE, SIZE, 3), np.uint8)] + [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                                                      for _ in range(4)]
    paths = []
    for i, a in enumerate(arrays):
        paths.append(folder / f"{'blank' if i == 0 else f'noise{i}'}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def ood_run(tmp_path_factory):
    """`medclass train` (the CLI, so the automatic OOD fit runs) on a tiny two-class set, 2 epochs
    at 16 px; returns (run_dir, data_dir, foreign image paths)."""
    root = tmp_path_factory.mktemp("ood")
    data = make_folder_dataset(root / "data", size=SIZE, splits={"train": 20, "valid": 10, "test": 10})
    r = _invoke("train", data, "--name", "run", "--runs-dir", root, "--epochs", 2, "--image-size", SIZE,
                "--arch", "resnet18", "--batch-size", 4, "--set", "model.stem=small", "--no-eval")
    assert r.exit_code == 0, r.output
    assert "OOD detector (mahalanobis;" in r.output
    return root / "run", data, _foreign_images(root / "foreign")


def test_train_stores_the_detector_with_the_run(ood_run):
    run_dir, _, _ = ood_run
    files = RunFiles(run_dir)
    record = json.loads(files.ood.read_text())
    assert record["method"] == DEFAULT_OOD_METHOD == "mahalanobis" and record["quantile"] == 0.95
    assert record["threshold"] == record["thresholds"]["mahalanobis"] and set(record["thresholds"]) == {"energy",
                                                                                                       "mahalanobis"}
    stages = ["layer1", "layer2", "layer3", "layer4"]
    layers = stages + [f"{n}:std" for n in stages] if DEFAULT_OOD_LAYERS == "stages+std" else stages
    assert record["version"] == OOD_VERSION == 2 and record["layers"] == layers
    assert record["combine"] == DEFAULT_OOD_COMBINE and len(record["centre"]) == len(record["scale"]) == len(layers)
    assert record["feature_dims"] == [64, 128, 256, 512] * (len(layers) // 4)
    assert (record["n_train"], record["n_valid"], record["num_classes"]) == (40, 20, 2)
    assert record["parameters"]["file"] == "ood.npz" and files.ood_params.is_file()
    with np.load(files.ood_params) as z:
        assert sorted(z.files) == sorted([f"means_{i}" for i in range(len(layers))]
                                         + [f"precision_{i}" for i in range(len(layers))])
    # the conformal rank ceil((20 + 1) * 0.95) = 20 of 20 validation images: none above
    assert record["threshold_rule"] == "conformal" and record["valid_flagged"]["mahalanobis"] == 0.0
    summary = json.loads(files.summary.read_text())
    assert summary["ood"]["method"] == "mahalanobis" and 0 < summary["ood"]["seconds"] < 60
    detector = read_ood(run_dir)
    assert [m.shape for m in detector.means] == [(2, f) for f in record["feature_dims"]]
    assert [p.shape for p in detector.precisions] == [(f, f) for f in record["feature_dims"]]
    assert detector.checkpoint_epoch == summary["best_epoch"]
    assert not list(run_dir.glob(".*.tmp*"))  # atomic_write's temporary files: .<stem>.<random>.tmp<suffix>


def test_blank_and_noise_images_are_flagged_and_own_test_images_mostly_not(ood_run):
    from medclass.engine import load_run
    from medclass.serving.prediction import predict_files
    from medclass.serving.predictor import TorchClassifier

    run_dir, data, foreign = ood_run
    run = load_run(run_dir)
    preds = predict_files(TorchClassifier(run), [*foreign, data / "test"])
    odd, own = preds[: len(foreign)], preds[len(foreign):]
    assert len(own) == 20 and all(p.ood is not None and p.ood.method == "mahalanobis" for p in preds)
    assert [p.ood_flag for p in odd] == [True] * len(odd), [p.ood_score for p in odd]
    assert np.mean([p.ood_flag for p in own]) <= 0.2
    assert min(p.ood_score for p in odd) > max(sorted(p.ood_score for p in own)[:-2])
    # the probabilities are those of the model (the detector adds, it does not change)
    plain = run.predict_proba(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in foreign]))
    np.testing.assert_allclose([[p.probabilities[n] for n in run.class_names] for p in odd], plain, atol=1e-6)


def test_predict_cli_has_ood_columns_in_every_format(ood_run):
    run_dir, data, foreign = ood_run
    own = sorted((data / "test" / "dark").iterdir())[:2]
    r = _invoke("predict", run_dir, foreign[0], foreign[1], *own, "--format", "csv")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "path,predicted,p_bright,p_dark,ood_score,ood_flag,error"
    flags = [line.split(",")[5] for line in lines[1:]]
    assert flags[:2] == ["true", "true"] and all(f in ("true", "false") for f in flags)
    scores = [float(line.split(",")[4]) for line in lines[1:]]  # standardised sums: may be below 0
    assert all(np.isfinite(scores)) and min(scores[:2]) > max(scores[2:])
    rows = json.loads(_invoke("predict", run_dir, foreign[0], "--format", "json").stdout)
    assert rows[0]["ood_flag"] is True and rows[0]["ood_score"] > read_ood(run_dir).threshold
    table = _invoke("predict", run_dir, foreign[0], own[0]).stdout.splitlines()
    assert "ood_score" in table[0] and "UNLIKE TRAINING" in table[1]


def test_post_predict_returns_the_ood_object_and_the_page_warns(ood_run):
    from fastapi.testclient import TestClient

    from medclass.serving.pages import SCRIPT_JS
    from medclass.serving.service import build_app

    run_dir, data, foreign = ood_run
    detector = read_ood(run_dir)
    with TestClient(build_app(run_dir)) as client:
        def post(path):
            r = client.post("/predict", files={"file": (path.name, path.read_bytes())})
            assert r.status_code == 200, r.text
            return r.json()

        odd = post(foreign[1])
        assert odd["ood"] == {"score": pytest.approx(odd["ood"]["score"]), "threshold": detector.threshold,
                              "flag": True, "method": "mahalanobis"}
        assert odd["ood"]["score"] > detector.threshold
        own = [post(p)["ood"]["flag"] for p in sorted((data / "test" / "bright").iterdir())[:5]]
        assert own.count(False) >= 4
        assert client.get("/health").json()["ood"] == {"method": "mahalanobis", "threshold": detector.threshold}
        assert "ood" in client.get("/openapi.json").json()["components"]["schemas"]["PredictionOut"]["properties"]
        page = client.get("/").text
    assert 'id="ood-warning"' in page
    assert OOD_WARNING in SCRIPT_JS and "showOod(r.ood)" in SCRIPT_JS


def test_a_run_without_ood_json_still_predicts_and_serves(ood_run, tmp_path):
    from fastapi.testclient import TestClient

    from medclass.serving.service import build_app

    run_dir, _, foreign = ood_run
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("ood.json", "ood.npz"))
    r = _invoke("predict", old, foreign[0], "--format", "csv")
    assert r.exit_code == 0, r.output
    row = r.stdout.splitlines()[1].split(",")
    assert row[4:6] == ["", ""] and row[1] in ("dark", "bright")
    assert "ood_score" not in _invoke("predict", old, foreign[0]).stdout.splitlines()[0]
    with TestClient(build_app(old)) as client:
        body = client.post("/predict", files={"file": ("x.png", png_bytes(Image.open(foreign[0])))}).json()
    assert body["ood"] is None and body["predicted"] in ("dark", "bright")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_returns_the_same_ood_score(ood_run, tmp_path, fmt):
    from medclass.engine import load_run
    from medclass.serving.prediction import predict_files
    from medclass.serving.export import export_run
    from medclass.serving.onnx_backend import load_onnx_classifier
    from medclass.serving.predictor import TorchClassifier, load_torchscript_classifier

    run_dir, data, foreign = ood_run
    run = load_run(run_dir, device="cpu")
    result = export_run(run, fmt, tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}")
    assert result.spec.extra["ood"]["method"] == "mahalanobis" and result.max_ood_rel_diff < 1e-3
    exported = (load_onnx_classifier if fmt == "onnx" else load_torchscript_classifier)(result.path)
    assert exported.ood.threshold == run.ood.threshold and exported.ood.means is None  # the graph holds them
    paths = [*foreign, *sorted((data / "test" / "dark").iterdir())[:4]]
    got, want = predict_files(exported, paths), predict_files(TorchClassifier(run), paths)
    np.testing.assert_allclose([p.ood_score for p in got], [p.ood_score for p in want], rtol=1e-3)
    assert [p.ood_flag for p in got] == [p.ood_flag for p in want] and all(p.ood_flag for p in got[:len(foreign)])


def test_refit_with_energy_and_an_export_of_it(ood_run, tmp_path):
    run_dir, _, foreign = ood_run
    copy = tmp_path / "energy-run"
    shutil.copytree(run_dir, copy)
    r = _invoke("ood-fit", copy, "--method", "energy")
    assert r.exit_code == 0, r.output
    detector = read_ood(copy)
    assert detector.method == "energy" and detector.threshold == detector.thresholds["energy"]
    assert not detector.needs_features
    rows = json.loads(_invoke("predict", copy, *foreign, "--format", "json").stdout)
    # energies -logsumexp(logits) of a two-class model: below 0 for any logits
    assert all(row["ood_score"] < 0 and isinstance(row["ood_flag"], bool) for row in rows)
    bad = _invoke("ood-fit", copy, "--method", "knn")
    assert bad.exit_code == 2 and "energy, mahalanobis" in bad.output and "Traceback" not in bad.output


def test_bad_or_stale_ood_files_give_clear_errors(ood_run, tmp_path):
    from medclass.engine import load_run

    run_dir, _, foreign = ood_run
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    files = RunFiles(broken)
    files.ood.write_text("{not json")
    r = _invoke("predict", broken, foreign[0])
    assert r.exit_code == 2 and "ood.json" in r.output and "ood-fit" in r.output and "Traceback" not in r.output
    fixed = _invoke("ood-fit", broken)  # what the message says to do works
    assert fixed.exit_code == 0, fixed.output
    assert _invoke("predict", broken, foreign[0]).exit_code == 0 and read_ood(broken).method == "mahalanobis"
    shutil.copy(RunFiles(run_dir).ood, files.ood)
    np.savez(files.ood_params, means=np.zeros((2, 512)), precision=np.eye(512))  # not the fitted matrices
    with pytest.raises(ValueError, match="SHA-256"):
        read_ood(broken)
    # a detector fitted on another checkpoint is not used: a warning, and no OOD fields
    shutil.copy(RunFiles(run_dir).ood_params, files.ood_params)
    record = json.loads(files.ood.read_text())
    record["checkpoint_epoch"] = 99
    files.ood.write_text(json.dumps(record))
    with pytest.warns(RuntimeWarning, match="epoch 99"):
        assert load_run(broken).ood is None
    # the files are never written through a symbolic link
    link = tmp_path / "linked"
    link.mkdir()
    (tmp_path / "elsewhere.json").write_text("{}")
    RunFiles(link).ood.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(RunError, match="symbolic link"):
        write_ood(OODDetector("energy", 1.0), link)
    assert (tmp_path / "elsewhere.json").read_text() == "{}"


def test_ensembles_have_no_detector(tmp_path):
    from medclass.evaluation.ood import fit_run_ood

    RunFiles(tmp_path).ensemble.write_text('{"members": [], "weights": []}')
    with pytest.raises(RunError, match="ensemble"):
        fit_run_ood(tmp_path)
    assert read_ood(tmp_path) is None


def test_detector_round_trips_and_rejects_bad_records():
    d = OODDetector("mahalanobis", 3.5, thresholds={"energy": -1.0, "mahalanobis": 3.5}, layers=("a", "b"),
                    combine="sum", centre=[1.0, 0.0], scale=[2.0, 1.0], means=[np.zeros((2, 2)), np.ones((2, 1))],
                    precisions=[np.eye(2), np.eye(1)])
    back = OODDetector.from_summary(json.loads(json.dumps(d.summary())), d.means, d.precisions)
    assert back.threshold == 3.5 and back.thresholds == d.thresholds and back.feature_dims == [2, 1]
    assert (back.layers, back.combine, back.centre, back.scale) == (("a", "b"), "sum", [1.0, 0.0], [2.0, 1.0])
    # layer a: (25 - 1) / 2 = 12; layer b: (1 - 1)^2 = 0 -> sum 12
    np.testing.assert_allclose(back.score(None, [np.array([[0.0, 0.0], [3.0, 4.0]]), np.ones((2, 1))]), [-0.5, 12.0])
    assert [r.flag for r in back.results(np.array([3.5, 3.6]))] == [False, True]
    with pytest.raises(ValueError, match="knn"):
        OODDetector("knn", 1.0)
    with pytest.raises(ValueError, match="'threshold'"):
        OODDetector.from_summary({"method": "energy"})
    with pytest.raises(ValueError, match="finite"):
        OODDetector("energy", float("nan"))
    with pytest.raises(ValueError, match="features"):
        back.score(None, None)
    with pytest.raises(ValueError, match="one of each per layer"):
        OODDetector("mahalanobis", 1.0, layers=("a", "b"))
    with pytest.raises(ValueError, match="scales > 0"):
        OODDetector("mahalanobis", 1.0, scale=[0.0])
    with pytest.raises(ValueError, match="do not match"):
        OODDetector("mahalanobis", 1.0, means=[np.zeros((2, 3))], precisions=[np.eye(2)])
    with pytest.raises(ValueError, match="version 3"):
        OODDetector.from_summary({**d.summary(), "version": 3})


def _as_version_1(run_dir: Path) -> OODDetector:
    """Refit ``run_dir``'s detector on the penultimate features, and store it as medclass wrote
    version 1 of ood.json: ``feature_dim``, no layers, ``means`` and ``precision`` in ood.npz."""
    from medclass.evaluation.ood import fit_run_ood
    from medclass.core.fileio import sha256_of_file

    new = fit_run_ood(run_dir, layers="penultimate")
    files = RunFiles(run_dir)
    record = {k: v for k, v in new.summary().items()
              if k not in ("layers", "combine", "centre", "scale", "feature_dims", "threshold_rule")}
    np.savez(files.ood_params, means=new.means[0], precision=new.precisions[0])
    record.update(version=1, feature_dim=512,
                  parameters={"file": "ood.npz", "sha256": sha256_of_file(files.ood_params)})
    files.ood.write_text(json.dumps(record))
    return new


def test_a_version_1_detector_still_reads_and_scores_as_before(ood_run, tmp_path):
    from medclass.engine import load_run
    from medclass.serving.export import export_run
    from medclass.serving.onnx_backend import load_onnx_classifier

    run_dir, data, foreign = ood_run
    old = tmp_path / "v1"
    shutil.copytree(run_dir, old)
    fitted = _as_version_1(old)
    detector = read_ood(old)
    assert detector.layers == ("penultimate",) and detector.centre == [0.0] and detector.scale == [1.0]
    assert detector.feature_dims == [512] and detector.extra["read_from_version"] == 1
    assert detector.threshold == fitted.threshold
    run = load_run(old, device="cpu")
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in foreign])
    _, scores = run.predict_proba_ood(images)
    # the raw penultimate Mahalanobis distances, as version 1 scored them (centre 0, scale 1)
    from medclass.engine.inference import logits_and_features
    from medclass.core.ood import mahalanobis_score

    _, f = logits_and_features(run.model, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), run.preprocess,
                               run.device)
    np.testing.assert_allclose(scores, mahalanobis_score(f.numpy(), fitted.means[0], fitted.precisions[0]), rtol=1e-6)
    rows = json.loads(_invoke("predict", old, *foreign, "--format", "json").stdout)
    assert [r["ood_score"] for r in rows] == pytest.approx(list(scores), rel=1e-5)
    result = export_run(run, "onnx", tmp_path / "v1.onnx")  # the graph reads the penultimate layer alone
    assert result.max_ood_rel_diff < 1e-3 and result.spec.extra["ood"]["layers"] == ["penultimate"]
    # a record naming a layer the model does not have: refused, the file and the fix named
    record = json.loads(RunFiles(old).ood.read_text())
    RunFiles(old).ood.write_text(json.dumps({**record, "version": 2, "layers": ["layer9"], "combine": "max",
                                             "centre": [0.0], "scale": [1.0], "feature_dims": [512]}))
    r = _invoke("predict", old, foreign[0])
    assert r.exit_code == 2 and "layer9" in r.output and "ood.json" in r.output and "ood-fit" in r.output


def test_scores_are_the_same_on_numpy_and_torch():
    from medclass.core.ood import mahalanobis_score

    rng = np.random.default_rng(0)
    z, f = rng.normal(size=(6, 3)), rng.normal(size=(6, 4))
    means, a = rng.normal(size=(3, 4)), rng.normal(size=(4, 4))
    precision = a @ a.T + np.eye(4)
    np.testing.assert_allclose(energy_score(torch.tensor(z)).numpy(), energy_score(z), rtol=1e-5)
    np.testing.assert_allclose(energy_score(torch.tensor(z[:, :1])).numpy(), energy_score(z[:, :1]), rtol=1e-5)
    t = mahalanobis_score(torch.tensor(f, dtype=torch.float32), torch.tensor(means, dtype=torch.float32),
                          torch.tensor(precision, dtype=torch.float32))
    np.testing.assert_allclose(t.numpy(), mahalanobis_score(f, means, precision), rtol=1e-5)


@pytest.mark.browser
def test_web_page_warns_when_the_image_is_unlike_the_training_images(ood_run, chromium, tmp_path):
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    from helpers import served

    run_dir, data, foreign = ood_run
    own = next(p for p in sorted((data / "test" / "dark").iterdir())
               if not json.loads(_invoke("predict", run_dir, p, "--format", "json").stdout)[0]["ood_flag"])
    with served(run_dir, tmp_path / "serve.log") as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.set_input_files("#file", str(foreign[1]))
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=30_000)
            assert page.is_visible("#ood-warning") and OOD_WARNING in page.inner_text("#ood-warning")
            assert "(flagged)" in page.inner_text("#details")
            page.set_input_files("#file", str(own))  # one of its own test images: the warning goes away
            page.click("#submit")
            page.wait_for_selector("#ood-warning", state="hidden", timeout=30_000)
            assert not page.is_visible("#ood-warning") and "(in range)" in page.inner_text("#details")
        finally:
            browser.close()


def test_ood_fit_without_validation_images_says_so(ood_run, tmp_path):
    run_dir, _, _ = ood_run
    copy = tmp_path / "no-valid"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("ood.json", "ood.npz"))
    manifest = RunFiles(copy).manifest
    manifest.write_text("\n".join(line for line in manifest.read_text().splitlines() if not line.startswith("valid,")))
    r = _invoke("ood-fit", copy)
    assert r.exit_code == 2 and "manifest.csv" in r.output and "has 40 and 0" in r.output and "Traceback" not in r.output
    assert read_ood(copy) is None
