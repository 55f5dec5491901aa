"""The prediction service (FastAPI TestClient) and its web page (headless Chromium via Playwright).

The served run is a tiny ResNet-18 trained for two epochs on 40 real chest-ct images (32 px), and
evaluated so that its model card has metrics. Uploads are real chest-ct files.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclass.data.io import read_image
from medclass.engine import load_run, train

from helpers import CHEST_CT, bomb_png, need, png_bytes, served, tiny_config, write_dicom

pytestmark = pytest.mark.integration  # every test here serves a run trained on real chest-ct images

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medclass.serving.app import create_app  # noqa: E402
from medclass.evaluation.model_card import build_model_card  # noqa: E402
from medclass.serving.predictor import TorchClassifier  # noqa: E402
from medclass.serving.service import build_app  # noqa: E402
from medclass.serving.uploads import UploadLimits  # noqa: E402


def chest_ct_images(split: str = "test", per_class: int = 10) -> list[Path]:
    need(CHEST_CT)
    out = []
    for cls in sorted(p for p in (CHEST_CT / split).iterdir() if p.is_dir()):
        out += sorted(p for p in cls.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:per_class]
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A trained and evaluated run on real chest-ct images (4 classes, 32 px)."""
    root = tmp_path_factory.mktemp("serve")
    data = root / "data"
    for path in chest_ct_images("test", per_class=10):
        dest = data / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    cfg = tiny_config(data, image_size=32, batch_size=8, epochs=2)
    result = train(cfg, root / "run")
    from medclass.evaluation import evaluate_run

    evaluate_run(result.files.root, progress=False, n_bootstrap=200)
    return result.files.root


@pytest.fixture(scope="module")
def client(run_dir) -> TestClient:
    with TestClient(build_app(run_dir)) as c:
        yield c


def upload(client, path_or_bytes, filename=None, explain=False, **kw):
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    name = filename if filename is not None else (path_or_bytes.name if isinstance(path_or_bytes, Path) else "x.png")
    return client.post("/predict" + ("?explain=true" if explain else ""), files={"file": (name, data)}, **kw)


# --------------------------------------------------------------------------------------------- API


def test_health_names_the_model(client, run_dir):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == run_dir.name and body["backend"] == "torch"
    assert body["classes"] == json.loads((run_dir / "classes.json").read_text())
    assert body["image_size"] == 32 and body["can_explain"] is True


def test_predict_equals_the_run_on_real_images(client, run_dir):
    run = load_run(run_dir, device="cpu")
    classifier = TorchClassifier(run)
    for path in chest_ct_images("valid", per_class=1):
        r = upload(client, path)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["filename"] == path.name
        probs = body["probabilities"]
        assert list(probs) == run.class_names
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        expected = classifier.predict_proba(read_image(path, 3, 32)[None])[0]
        np.testing.assert_allclose([probs[n] for n in run.class_names], expected, atol=1e-5)
        assert body["predicted"] == run.class_names[int(np.argmax(expected))]
        assert body["gradcam_png"] is None


def test_predict_with_gradcam_returns_an_overlay_png(client):
    path = chest_ct_images("valid", per_class=1)[0]
    r = upload(client, path, explain=True)
    assert r.status_code == 200, r.text
    uri = r.json()["gradcam_png"]
    assert uri.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.format == "PNG" and img.mode == "RGB" and min(img.size) >= 256
    arr = np.asarray(img)
    assert arr.std() > 5  # a real picture, not a flat fill


def test_openapi_documents_predict_and_its_errors(client):
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/predict"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {"200", "400", "413", "415", "422"} <= set(post["responses"])
    assert "/health" in schema["paths"] and "/model-card" in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_page_and_its_assets(client, run_dir):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="file"' in r.text and 'src="/static/app.js"' in r.text and run_dir.name in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "fetch(" in js.text and "innerHTML" not in js.text
    assert client.get("/static/style.css").status_code == 200


def test_model_card_states_data_metrics_and_intended_use(client, run_dir):
    card = client.get("/model-card.json").json()
    metrics = json.loads((run_dir / "eval-test" / "metrics.json").read_text())
    assert card["metrics"]["n"] == metrics["n"]
    assert card["metrics"]["overall"]["accuracy"]["estimate"] == pytest.approx(metrics["accuracy"])
    assert card["metrics"]["overall"]["auroc"]["low"] is not None
    assert card["data"]["source"].endswith("data") and card["data"]["train_images"] > 0
    assert card["model"]["classes"] == metrics["class_names"]
    assert "Not a medical device" in card["intended_use"]
    page = client.get("/model-card")
    assert page.status_code == 200
    for text in ("Intended use", "Out of scope", "Metrics", f"{metrics['accuracy']:.3f}", "resnet18", "Caveats"):
        assert text in page.text, text


def test_model_card_without_evaluation_says_so(tmp_path, run_dir):
    bare = tmp_path / "bare"
    # a run never evaluated: no eval-*, no calibration (in calibration.json nor in its spec)
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("eval-*", "calibration.json", "model_spec.json"))
    card = build_model_card(bare)
    assert card["metrics"] is None
    assert any("not been evaluated" in c for c in card["caveats"])
    assert any("not calibrated" in c for c in card["caveats"])


def test_concurrent_requests_with_gradcam_all_succeed(client):
    paths = chest_ct_images("valid", per_class=2)
    results, errors = [], []

    def worker(path):
        try:
            r = upload(client, path, explain=True)
            results.append((path.name, r.status_code, r.json()))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == len(paths)
    assert all(code == 200 and body["gradcam_png"] for _, code, body in results)
    # the same answers as one at a time
    for name, _, body in results[:2]:
        path = next(p for p in paths if p.name == name)
        again = upload(client, path).json()
        for k, v in again["probabilities"].items():
            assert body["probabilities"][k] == pytest.approx(v, abs=1e-5)


# ------------------------------------------------------------------- end to end: server + browser


@pytest.fixture(scope="module")
def live_server(run_dir):
    """``python -m medclass serve RUN`` on a free loopback port, stopped with SIGINT afterwards."""
    with served(run_dir, run_dir.parent / "serve.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser_page(chromium):
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.mark.browser
def test_web_page_uploads_a_real_image_and_shows_the_prediction(live_server, browser_page, tmp_path):
    import httpx

    page = browser_page
    path = chest_ct_images("valid", per_class=1)[-1]
    expected = httpx.post(live_server + "/predict", files={"file": (path.name, path.read_bytes())}).json()

    page.goto(live_server + "/")
    assert "Classify an image" in page.inner_text("h1")
    page.set_input_files("#file", str(path))
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    assert page.inner_text("#predicted") == expected["predicted"]
    assert page.inner_text("#filename") == path.name
    shown = {row.get_attribute("data-class"): float(row.query_selector(".probability").inner_text())
             for row in page.query_selector_all("#probabilities tbody tr")}
    assert set(shown) == set(expected["probabilities"])
    for name, p in expected["probabilities"].items():
        assert shown[name] == pytest.approx(p, abs=6e-5)  # shown with 4 decimals
    # the Grad-CAM overlay is displayed and decoded by the browser
    page.wait_for_function("document.getElementById('overlay').naturalWidth > 0", timeout=10_000)
    assert page.is_visible("#overlay")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    shot = np.asarray(Image.open(tmp_path / "page.png").convert("RGB"))
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # text, bars and the overlay were painted

    # a bad file: the page shows the service's error, and the next good upload works again
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    page.set_input_files("#file", str(bad))
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "notes.png" in page.inner_text("#error") and page.inner_text("#error").startswith("Error 415")
    page.set_input_files("#file", str(path))
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    assert page.inner_text("#predicted") == expected["predicted"]


@pytest.mark.browser
def test_model_card_page_renders_in_the_browser(live_server, browser_page):
    page = browser_page
    page.goto(live_server + "/model-card")
    assert page.inner_text("h1").startswith("Model card")
    assert "Not a medical device" in page.inner_text("#intended-use")
    assert len(page.query_selector_all("#metrics tr")) >= 4  # header + accuracy, balanced accuracy, F1 (+ AUROC)


# ------------------------------------------------------------------------- bad input at the API


def bad_uploads(tmp_path) -> list[tuple[str, str, bytes, int, str]]:
    """(kind, filename, bytes, expected HTTP status, expected error code): 20 kinds."""
    from pydicom.uid import BasicTextSRStorage

    good = chest_ct_images("valid", per_class=1)[0].read_bytes()
    rgb = Image.open(io.BytesIO(good)).convert("RGB")
    transparent = rgb.convert("RGBA")
    transparent.putalpha(128)
    cmyk = io.BytesIO()
    rgb.convert("CMYK").save(cmyk, "JPEG")
    gif = io.BytesIO()
    rgb.save(gif, "GIF")
    frames = io.BytesIO()
    rgb.save(frames, "PNG", save_all=True, append_images=[rgb.rotate(90)])
    ct = np.asarray(rgb.convert("L").resize((64, 64))).astype(np.int16) * 8
    no_pixels = write_dicom(tmp_path / "report.dcm", None, sop=BasicTextSRStorage).read_bytes()
    multi = write_dicom(tmp_path / "multi.dcm", np.stack([ct, ct]), frames=2).read_bytes()
    one = write_dicom(tmp_path / "one.dcm", ct).read_bytes()
    return [
        ("empty file", "empty.png", b"", 400, "empty"),
        ("over the byte limit", "big.png", good + b"\0" * (256 * 1024 + 1000 - len(good)), 413, "too_large"),
        ("plain text", "notes.png", b"patient notes, not an image\n" * 20, 415, "not_an_image"),
        ("PDF", "scan.pdf", b"%PDF-1.7\n" + b"0" * 500, 415, "not_an_image"),
        ("GIF", "scan.gif", gif.getvalue(), 415, "unsupported_format"),
        ("truncated PNG", "cut.png", good[: len(good) // 2], 400, "truncated"),
        ("truncated JPEG", "cut.jpg", cmyk.getvalue()[:400], 400, "truncated"),
        ("corrupt PNG checksum", "crc.png", good[:40] + bytes([good[40] ^ 0xFF]) + good[41:], 400, "corrupt"),
        ("decompression bomb", "bomb.png", bomb_png(20_000, 20_000), 413, "too_many_pixels"),
        ("huge side", "strip.png", png_bytes(Image.new("L", (12_000, 1))), 413, "side_too_large"),
        ("too small", "tiny.png", png_bytes(Image.new("L", (2, 2))), 422, "too_small"),
        ("transparent alpha", "alpha.png", png_bytes(transparent), 422, "transparency"),
        ("CMYK JPEG", "cmyk.jpg", cmyk.getvalue(), 422, "unsupported_channels"),
        ("animated PNG", "anim.png", frames.getvalue(), 422, "multi_frame"),
        ("DICOM without pixels", "report.dcm", no_pixels, 422, "no_pixel_data"),
        ("multi-frame DICOM", "multi.dcm", multi, 422, "multi_frame"),
        ("truncated DICOM", "cut.dcm", one[: len(one) - 3000], 400, "truncated"),
        ("path traversal filename", "../../etc/passwd.png", good, 400, "bad_filename"),
        ("absolute filename", "/etc/scan.png", good, 400, "bad_filename"),
        ("subfolder filename", "scans/x.png", good, 400, "bad_filename"),
        ("300-character filename", "s" * 296 + ".png", good, 400, "bad_filename"),
        ("parent-folder filename", "..", good, 400, "bad_filename"),
    ]


def test_bad_uploads_get_clear_4xx_and_the_service_keeps_serving(run_dir, tmp_path):
    limits = UploadLimits(max_bytes=256 * 1024)  # small, so "over the byte limit" is cheap
    classifier = TorchClassifier(load_run(run_dir, device="cpu"))
    good_path = chest_ct_images("valid", per_class=1)[0]
    cases = bad_uploads(tmp_path)
    assert len({c[0] for c in cases}) >= 15
    with TestClient(create_app(classifier, build_model_card(run_dir), limits)) as c:
        reference = upload(c, good_path).json()
        for kind, name, data, status, code in cases:
            r = upload(c, data, filename=name)
            assert r.status_code == status, (kind, r.status_code, r.text)
            body = r.json()
            assert body["error"] == code, (kind, body)
            base = name.replace("\\", "/").rsplit("/", 1)[-1]
            assert base[:4] in body["detail"], (kind, body["detail"])  # the message names the file
            # the service keeps serving: health and a real prediction still work
            assert c.get("/health").json()["status"] == "ok"
        # python-multipart itself cuts an IE-style Windows path down to its base name
        windows = upload(c, good_path.read_bytes(), filename="C:\\scans\\x.png")
        assert windows.status_code in (200, 400) and "\\" not in windows.json().get("filename", "")
        again = upload(c, good_path)
        assert again.status_code == 200 and again.json()["probabilities"] == pytest.approx(reference["probabilities"])
        health = c.get("/health").json()
        assert health["rejected"] + health["predictions"] == len(cases) + 3 and health["failed"] == 0


def test_malformed_requests_are_4xx(client):
    good = chest_ct_images("valid", per_class=1)[0].read_bytes()
    assert client.post("/predict").status_code == 422  # no form at all
    assert client.post("/predict", files={"image": ("x.png", good)}).status_code == 422  # wrong field name
    assert client.post("/predict", json={"file": "x.png"}).status_code == 422  # not multipart
    assert client.post("/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}).status_code in (400, 422)
    assert client.get("/predict").status_code == 405
    assert client.get("/health").json()["status"] == "ok"


def test_body_over_the_limit_is_413(run_dir):
    limits = UploadLimits(max_bytes=100_000)
    classifier = TorchClassifier(load_run(run_dir, device="cpu"))

    def body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n"
        for _ in range(10):
            yield b"\0" * 65536

    with TestClient(create_app(classifier, None, limits)) as c:
        r = c.post("/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        assert "100,000 bytes" in r.json()["detail"]
        declared = c.post("/predict", content=b"x" * 300_000, headers={"content-type": "multipart/form-data; boundary=b"})
        assert declared.status_code == 413
        assert c.get("/health").json()["status"] == "ok"


def test_live_server_cuts_off_a_huge_chunked_upload(live_server):
    """A real socket, no Content-Length: the server answers 413 after about the limit (20 MiB by
    default), long before the 200 MiB the client would send, and keeps serving."""
    import httpx

    host, port = live_server.rsplit("/", 1)[-1].split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        head = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"huge.png\"\r\n\r\n"
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        block = b"\0" * (1 << 20)
        try:
            for _ in range(200):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
                sent += len(block)
        except OSError:  # the server closed the connection after answering
            pass
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 100 * (1 << 20)
    assert httpx.get(live_server + "/health").json()["status"] == "ok"


def test_serve_cli_errors_are_clear(run_dir, tmp_path):
    from typer.testing import CliRunner

    from medclass.cli.app import app

    runner = CliRunner()
    r = runner.invoke(app, ["serve", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "not a medclass run folder" in r.output
    r = runner.invoke(app, ["serve", str(run_dir), "--backend", "onnx"])
    assert r.exit_code == 2 and "medclass export" in r.output  # no export yet: says what to run
    r = runner.invoke(app, ["serve", str(run_dir), "--backend", "tensorflow"])
    assert r.exit_code == 2 and "--backend" in r.output
    r = runner.invoke(app, ["serve", str(run_dir), "--max-upload-mb", "0"])
    assert r.exit_code == 2 and "max_bytes" in r.output


def test_serve_cli_takes_an_exported_onnx_file(run_dir, tmp_path, monkeypatch):
    """README says `medclass serve RUN/export/model.int8.onnx --backend onnx`; the CLI used to
    refuse any file as "not a medclass run folder"."""
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from medclass.cli.app import app
    from medclass.serving import service

    served = {}
    monkeypatch.setattr(service, "serve", lambda application, **kw: served.update(app=application, **kw))
    runner = CliRunner()
    model = tmp_path / "model.onnx"
    r = runner.invoke(app, ["export", str(run_dir), "--format", "onnx", "--out", str(model)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["serve", str(model), "--backend", "onnx", "--port", "8123"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert served["port"] == 8123
    with TestClient(served["app"]) as c:
        answer = upload(c, chest_ct_images("test", per_class=1)[0])
        assert answer.status_code == 200 and len(answer.json()["probabilities"]) == 4
    r = runner.invoke(app, ["serve", str(model)])  # torch backend: a run folder is needed
    assert r.exit_code == 2 and "--backend onnx" in r.output
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    r = runner.invoke(app, ["serve", str(bad), "--backend", "onnx"])
    assert r.exit_code == 2 and "broken.onnx" in r.output and "Traceback" not in r.output
