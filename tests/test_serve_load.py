"""The service under load and attack (issue 14): bounded decode memory, uploads kept in memory,
a bounded admission queue with JSON 503s, idle and slow connections closed, every error in the
``{"error", "detail"}`` contract, a safe /docs, and dynamic batching (torch and ONNX backends).

Most tests serve a fake numpy classifier (no training); the batching tests at the end serve a
custom CNN trained for one epoch on 16 px synthetic images and its ONNX export.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medclass.serving import app as app_module  # noqa: E402
from medclass.serving.app import ServeOptions, create_app  # noqa: E402

from helpers import FakeClassifier, make_folder_dataset, png_bytes, tiny_config  # noqa: E402


def grey_png(value: int, side: int = 16) -> bytes:
    return png_bytes(Image.fromarray(np.full((side, side), value, np.uint8)))


def post(client, data: bytes, name: str = "x.png", **kw):
    return client.post("/predict", files={"file": (name, data, "image/png")}, **kw)


def is_error_body(r, code: str | None = None) -> bool:
    body = r.json()
    return set(body) == {"error", "detail"} and (code is None or body["error"] == code) and len(body["detail"]) > 10


# ------------------------------------------------------------------ uploads stay in memory (defect 6)


def test_uploads_over_one_mebibyte_are_never_spooled_to_disk(monkeypatch):
    rng = np.random.default_rng(0)
    data = png_bytes(Image.fromarray(rng.integers(0, 256, (1200, 1200), dtype=np.uint8)), compress_level=0)
    assert len(data) > 1.2 * 2**20  # above Starlette's 1 MiB spool limit
    disk = []
    real = tempfile.TemporaryFile

    def recording_temporary_file(*a, **k):  # SpooledTemporaryFile rolls over to this
        disk.append(1)
        return real(*a, **k)

    monkeypatch.setattr(tempfile, "TemporaryFile", recording_temporary_file)
    with TestClient(create_app(FakeClassifier())) as client:
        r = post(client, data)
    assert r.status_code == 200, r.text
    assert disk == [], "the upload was spooled to a temporary file on disk"


# ------------------------------------------------------------------ decode memory budget (defect 1)


def test_decodes_are_admitted_against_a_memory_budget_from_the_header(monkeypatch):
    # 16-bit 2000 x 2000: 8 MB of pixels, a cost of 64 MB; the budget holds one such decode at a time
    big = png_bytes(Image.fromarray(np.zeros((2000, 2000), np.uint16)))
    assert len(big) < 100_000
    from medclass.serving.uploads import DECODE_AMPLIFICATION, decode_cost

    assert decode_cost(big) == 2000 * 2000 * 2 * DECODE_AMPLIFICATION
    state = {"now": 0, "peak": 0}
    guard = threading.Lock()

    def slow_decode(data, *a, **k):
        with guard:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.2)
        with guard:
            state["now"] -= 1
        return np.zeros((16, 16, 1), np.uint8)

    monkeypatch.setattr(app_module, "decode_upload", slow_decode)
    options = ServeOptions(decode_memory_bytes=100 * 2**20, max_active=8)
    with TestClient(create_app(FakeClassifier(), options=options)) as client:
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: post(client, big).status_code, range(4)))
        assert codes == [200] * 4
        assert state["peak"] == 1, f"{state['peak']} decodes of 64 MB ran at once within a 100 MB budget"
        assert client.get("/health").json()["decode_memory"]["in_use_bytes"] == 0


# ------------------------------------------------------------------ burst: queue, then JSON 503 (defect 3)


def test_a_burst_waits_in_the_queue_and_only_past_it_gets_a_json_503(monkeypatch):
    def slow_decode(data, *a, **k):
        time.sleep(0.3)
        return np.zeros((16, 16, 1), np.uint8)

    monkeypatch.setattr(app_module, "decode_upload", slow_decode)
    options = ServeOptions(max_active=1, max_queue=1, retry_after_s=2)
    with TestClient(create_app(FakeClassifier(), options=options)) as client:
        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(lambda _: post(client, grey_png(9)), range(3)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 503], codes
        busy = next(r for r in responses if r.status_code == 503)
        assert is_error_body(busy, "busy") and busy.headers["retry-after"] == "2"
        health = client.get("/health").json()
        assert health["busy"] == 1 and health["rejected"] == 1 and health["predictions"] == 2


def test_a_burst_within_the_queue_is_served_without_refusals():
    clf = FakeClassifier(delay=0.01)
    with TestClient(create_app(clf, options=ServeOptions(max_active=2, max_queue=64))) as client:
        with ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(lambda i: post(client, grey_png(i)).status_code, range(48)))
        assert codes == [200] * 48
        assert client.get("/health").json()["busy"] == 0


# ------------------------------------------------------------------ the error contract (defect 9)


def test_every_error_body_is_error_and_detail_and_counted():
    with TestClient(create_app(FakeClassifier())) as client:
        r = client.post("/predict?explain=maybe", files={"file": ("x.png", grey_png(5))})
        assert r.status_code == 422 and is_error_body(r, "invalid_request"), r.text
        r = client.post("/predict", files=[("file", ("a.png", grey_png(5))), ("file", ("b.png", grey_png(200)))])
        assert r.status_code == 400 and is_error_body(r, "too_many_files"), r.text
        r = client.post("/predict", files={"other": ("a.png", grey_png(5))})
        assert r.status_code == 422 and is_error_body(r, "no_file"), r.text
        r = client.post("/predict", content=b"x" * 100, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 422 and is_error_body(r, "no_file"), r.text
        r = client.post("/predict", content=b"x", headers={"content-length": str(10**9),
                                                          "content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413 and is_error_body(r, "too_large"), r.text
        r = client.get("/nowhere")
        assert r.status_code == 404 and is_error_body(r, "not_found"), r.text
        r = client.get("/predict")
        assert r.status_code == 405 and is_error_body(r, "method_not_allowed"), r.text
        health = client.get("/health").json()
        assert health["rejected"] == 6 and health["predictions"] == 0  # 405 on GET /predict counts too


def test_a_single_upload_still_predicts():
    clf = FakeClassifier()
    with TestClient(create_app(clf)) as client:
        r = post(client, grey_png(40))
    assert r.status_code == 200, r.text
    expected = clf.predict_proba(np.full((1, 16, 16, 1), 40, np.uint8))[0]
    got = r.json()["probabilities"]
    np.testing.assert_allclose([got[n] for n in ("a", "b", "c")], expected, atol=1e-6)


# ------------------------------------------------------------------ /docs (defect 7)


def test_docs_escape_names_have_a_csp_and_load_nothing_from_a_cdn(monkeypatch):
    monkeypatch.delenv(app_module.SWAGGER_UI_ENV, raising=False)
    clf = FakeClassifier(run="<img src=x onerror=alert(1)>", classes=("<b>bold</b>", "**two**", "c"))
    with TestClient(create_app(clf)) as client:
        description = client.get("/openapi.json").json()["info"]["description"]
        assert "<img" not in description and "<b>" not in description and "**two**" not in description
        r = client.get("/docs")
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "cdn" not in r.text.lower() and "https://" not in r.text and "<img src=x" not in r.text
        assert "/predict" in r.text and "/openapi.json" in r.text


def test_docs_serve_local_swagger_ui_files_when_configured(tmp_path, monkeypatch):
    (tmp_path / "swagger-ui-bundle.js").write_text("window.SwaggerUIBundle = function () {};")
    (tmp_path / "swagger-ui.css").write_text("body {}")
    monkeypatch.setenv(app_module.SWAGGER_UI_ENV, str(tmp_path))
    with TestClient(create_app(FakeClassifier())) as client:
        page = client.get("/docs")
        assert 'src="/docs-assets/swagger-ui-bundle.js"' in page.text and "https://" not in page.text
        assert "<script>" not in page.text  # no inline script: the CSP holds
        assert client.get("/docs-assets/swagger-ui-bundle.js").text.startswith("window.SwaggerUIBundle")
        assert client.get("/docs-assets/other.js").status_code == 404


# ------------------------------------------------------------------ idle and slow connections (defect 2)


def http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]


def test_idle_connections_are_closed_and_never_block_health(live):
    host, port, _ = live
    idle = [socket.create_connection((host, port), timeout=5) for _ in range(70)]
    try:
        status, body = http_get(host, port, "/health")
        assert status == 200, body  # uvicorn's limit_concurrency=64 answered 503 here
        time.sleep(1.0)
        for s in idle:  # the server closed every connection that sent no request head in time
            s.settimeout(2)
            assert s.recv(10) == b""
    finally:
        for s in idle:
            s.close()


def test_a_byte_by_byte_request_head_is_dropped(live):
    host, port, _ = live
    with socket.create_connection((host, port), timeout=5) as s:
        t0 = time.time()
        closed = False
        for ch in b"GET /health HTTP/1.1\r\nHost: x\r\n":
            try:
                s.sendall(bytes([ch]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        if not closed:
            s.settimeout(2)
            try:
                closed = s.recv(100) == b""
            except ConnectionResetError:
                closed = True
        assert closed and time.time() - t0 < 5


def test_a_slow_body_gets_a_json_408_and_is_counted(live):
    host, port, application = live
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 5000\r\n\r\n--b\r\n")
        s.settimeout(5)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408"), data
    assert json.loads(body)["error"] == "slow_request"
    status, health = http_get(host, port, "/health")
    assert json.loads(health)["timeouts"] == 1 and json.loads(health)["rejected"] == 1


# ------------------------------------------------------------------ dynamic batching


def test_concurrent_requests_are_batched_with_the_same_probabilities():
    clf = FakeClassifier(delay=0.05)
    values = list(range(10, 250, 15))  # 16 different images
    with TestClient(create_app(clf, options=ServeOptions(max_batch=8, max_wait_ms=20))) as client:
        singles = {v: post(client, grey_png(v)).json()["probabilities"] for v in values}
        calls_before = len(clf.calls)
        with ThreadPoolExecutor(16) as pool:
            batched = dict(zip(values, pool.map(lambda v: post(client, grey_png(v)).json()["probabilities"], values)))
        calls = clf.calls[calls_before:]
        stats = client.get("/health").json()["batching"]
    assert sum(calls) == 16 and len(calls) < 16 and max(calls) > 1, calls
    assert stats["images"] == 32 and stats["max_batch"] == 8
    for v in values:
        assert batched[v] == pytest.approx(singles[v], abs=1e-6)


def test_max_batch_one_turns_batching_off():
    clf = FakeClassifier(delay=0.02)
    with TestClient(create_app(clf, options=ServeOptions(max_batch=1))) as client:
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(lambda v: post(client, grey_png(v)).status_code, range(8))) == [200] * 8
    assert clf.calls == [1] * 8


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A custom CNN trained one epoch on 16 px synthetic images, with its ONNX export."""
    from medclass.engine import load_run, train
    from medclass.serving.export import export_run

    root = tmp_path_factory.mktemp("batching")
    data = make_folder_dataset(root / "data", per_class=8)
    cfg = tiny_config(data, epochs=1)
    cfg.model.arch, cfg.model.cnn_widths = "custom_cnn", [8, 16]
    run_dir = train(cfg, root / "runs" / "tiny").files.root
    export_run(load_run(run_dir, device="cpu"), "onnx")
    images = [p.read_bytes() for p in sorted((root / "data").rglob("*.png"))[:12]]
    return run_dir, images


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_real_backends_batch_concurrent_requests_like_single_ones(tiny_run, backend):
    from medclass.serving.service import build_app

    run_dir, images = tiny_run
    application = build_app(run_dir, backend=backend, device="cpu", options=ServeOptions(max_batch=16, max_wait_ms=50))
    with TestClient(application) as client:
        singles = [post(client, data).json()["probabilities"] for data in images]
        before = client.get("/health").json()["batching"]["model_calls"]
        with ThreadPoolExecutor(len(images)) as pool:
            batched = list(pool.map(lambda d: post(client, d).json()["probabilities"], images))
        after = client.get("/health").json()["batching"]["model_calls"]
        if backend == "torch":  # Grad-CAM requests run unbatched and stay correct beside batched ones
            with ThreadPoolExecutor(4) as pool:
                explained = list(pool.map(lambda d: post(client, d, params={"explain": "true"}).json(), images[:4]))
            for body, single in zip(explained, singles):
                assert body["gradcam_png"].startswith("data:image/png;base64,")
                assert body["probabilities"] == pytest.approx(single, abs=1e-5)
    assert after - before < len(images), f"{after - before} model calls for {len(images)} concurrent requests"
    for b, s in zip(batched, singles):
        assert b == pytest.approx(s, abs=1e-5)
