"""Train/serve skew (issue 11): one image file gives the same uint8 model input and the same calibrated
probabilities on every path that reads it: the training/evaluation decode (``decode_split``, through the
decode cache), ``predict`` with the torch, ONNX and TorchScript backends, and ``POST /predict`` of a
live ``medclass serve``.

The files are real chest-ct PNGs plus an RGBA PNG, a 16-bit PNG and a DICOM that the test writes from
real CT images, so every channel conversion (greyscale -> RGB, alpha, 16-bit rescale, DICOM window)
is on the path. Both resize rules are checked (``squash`` and the aspect-preserving ``pad``); the
run normalises with per-channel mean/std and is calibrated (temperature), so scaling, normalisation
and calibration have to agree too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import CHEST_CLASSES, need, served, stored_from_png, write_dicom
from medclass.core.config import RunConfig
from medclass.data import decode_split
from medclass.data.sources import Sample
from medclass.engine import load_run, predict_logits, train
from medclass.core.pipeline import hwc_to_nchw
from medclass.serving.prediction import predict_files, read_files
from medclass.serving.uploads import decode_upload
from medclass.core.spec import read_spec, update_calibration

pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = 24
TEMPERATURE = 1.7
MEAN, STD = [0.45, 0.5, 0.55], [0.22, 0.25, 0.28]
TOLERANCE = 1e-5


def _chest_files(split: str, cls: str) -> list[Path]:
    return sorted(p for p in need(f"{_chest()}/{split}/{cls}").iterdir() if p.is_file())


def _chest() -> Path:
    from helpers import CHEST_CT

    return need(CHEST_CT)


@pytest.fixture(scope="module", params=["squash", "pad"])
def skew_run(request, tmp_path_factory):
    """A tiny ResNet-18 (small stem) trained one epoch on 24 real chest-ct images at 24 px, RGB,
    normalised, with the given resize rule; calibrated (temperature 1.7) and exported to ONNX and
    TorchScript. Returns the run folder."""
    from medclass.serving import export_run

    root = tmp_path_factory.mktemp(f"skew-{request.param}")
    for cls in CHEST_CLASSES:
        (root / "data" / cls).mkdir(parents=True)
        for p in _chest_files("test", cls)[:6]:
            shutil.copy(p, root / "data" / cls / p.name)
    cfg = RunConfig()
    cfg.data.source = str(root / "data")
    cfg.data.image_size, cfg.data.channels, cfg.data.resize = SIZE, 3, request.param
    cfg.data.val_fraction = cfg.data.test_fraction = 0.25
    cfg.data.normalize, cfg.data.mean, cfg.data.std = True, MEAN, STD
    cfg.model.arch, cfg.model.stem = "resnet18", "small"
    cfg.train.batch_size, cfg.train.epochs, cfg.train.progress = 8, 1, False
    run_dir = root / "run"
    train(cfg, run_dir)
    update_calibration(run_dir, TEMPERATURE, None)
    loaded = load_run(run_dir)
    for fmt in ("onnx", "torchscript"):
        export_run(loaded, fmt)
    return run_dir


@pytest.fixture(scope="module")
def skew_files(tmp_path_factory) -> list[Path]:
    """Four real chest-ct PNGs (one per class, of various sizes and aspect ratios), an RGBA PNG
    (opaque: the service refuses transparent pixels), a 16-bit PNG and a DICOM (HU with a window)
    made from real CT images."""
    out = tmp_path_factory.mktemp("skew-files")
    files = []
    for i, cls in enumerate(CHEST_CLASSES):
        src = _chest_files("test", cls)[6]  # not among the 6 per class the run trains on
        files.append(Path(shutil.copy(src, out / f"{i}-{src.name}")))
    grey = Image.open(files[0]).convert("L")
    rgba = Image.merge("RGBA", [grey, grey.point(lambda v: v // 2), grey.point(lambda v: 255 - v),
                                Image.new("L", grey.size, 255)])
    rgba.save(out / "rgba.png")
    files.append(out / "rgba.png")
    deep = (np.asarray(Image.open(files[1]).convert("L"), dtype=np.uint16) * 200 + 1000).astype(np.uint16)
    Image.fromarray(deep).save(out / "deep16.png")
    assert Image.open(out / "deep16.png").mode.startswith("I;16")
    files.append(out / "deep16.png")
    files.append(write_dicom(out / "slice.dcm", stored_from_png(files[2]), window=(-400, 1500)))
    return files


def _served_probabilities(run_dir: Path, files: list[Path]) -> list[dict]:
    """``medclass serve RUN`` on loopback (:func:`helpers.served`); each file POSTed to /predict."""
    import httpx

    got = []
    with served(run_dir, run_dir.parent / "serve.log") as base:
        for f in files:
            r = httpx.post(base + "/predict", files={"file": (f.name, f.read_bytes())}, timeout=60)
            assert r.status_code == 200, (f.name, r.text)
            got.append(r.json())
    return got


def test_every_path_gives_the_same_input_and_probabilities(skew_run, skew_files, tmp_path):
    from medclass.serving import TorchClassifier, load_onnx_classifier, load_torchscript_classifier

    spec = read_spec(skew_run)
    assert spec.resize in ("squash", "pad") and spec.temperature == TEMPERATURE and spec.mean == MEAN

    # -- the uint8 model inputs: training/evaluation decode, predict's reader, the upload decoder
    decoded = decode_split([Sample(str(f), 0) for f in skew_files], spec.channels, spec.image_size,
                           progress=False, cache_dir=tmp_path / "cache", dicom_window=spec.dicom_window,
                           resize=spec.resize)
    train_input = decoded.images.numpy()  # (N, C, H, W) as training and evaluate see it
    results, predict_input, ok = read_files(skew_files, spec)
    assert ok == list(range(len(skew_files))) and all(r.error is None for r in results)
    upload_input = np.stack([decode_upload(f.read_bytes(), f.name, spec.channels, spec.image_size, spec.dicom_window,
                                           resize=spec.resize) for f in skew_files])
    assert train_input.dtype == predict_input.dtype == upload_input.dtype == np.uint8
    assert predict_input.shape == (len(skew_files), SIZE, SIZE, 3)
    np.testing.assert_array_equal(hwc_to_nchw(predict_input), train_input)
    np.testing.assert_array_equal(upload_input, predict_input)
    if spec.resize == "pad":  # the wide and tall chest-ct images really were padded, not squashed
        assert any((img[0] == 0).all() or (img[:, 0] == 0).all() for img in predict_input[:4])

    # -- the probabilities: evaluate's path (decoded split through the run's model), then every backend
    run = load_run(skew_run)
    logits = predict_logits(run.model, decoded.images, run.preprocess, run.device, 64)
    reference = spec.probabilities(logits.numpy())
    classes = spec.class_names
    backends = {
        "torch": TorchClassifier(run),
        "onnx": load_onnx_classifier(skew_run / "export" / "model.onnx"),
        "torchscript": load_torchscript_classifier(skew_run / "export" / "model.pt"),
    }
    for name, backend in backends.items():
        assert backend.spec.resize == spec.resize and backend.spec.temperature == TEMPERATURE, name
        got = predict_files(backend, skew_files)
        probs = np.array([[p.probabilities[c] for c in classes] for p in got])
        assert np.abs(probs - reference).max() < TOLERANCE, (name, np.abs(probs - reference).max())
        assert [p.predicted for p in got] == [classes[k] for k in spec.decide(reference)], name
    served = _served_probabilities(skew_run, skew_files)
    probs = np.array([[s["probabilities"][c] for c in classes] for s in served])
    assert np.abs(probs - reference).max() < TOLERANCE, ("serve", np.abs(probs - reference).max())
    assert [s["predicted"] for s in served] == [classes[k] for k in spec.decide(reference)]
    assert not np.allclose(reference, reference[:1])  # the images really differ in what the model sees
