"""The prediction service: a FastAPI app serving one classifier, with a web page and a model card.

Routes:

- ``POST /predict``: multipart form with one image in the field ``file`` (PNG, JPEG or DICOM);
  query ``explain=true`` adds a Grad-CAM overlay (base64 PNG) when the backend can explain.
  Returns :class:`PredictionOut` JSON; when the model has an out-of-distribution detector
  (:mod:`medclass.ood`) its ``ood`` object says whether the image is unlike the training images. Bad uploads get a 4xx JSON body ``{"error": code,
  "detail": message}`` (see :mod:`medclass.serving.uploads`); the service keeps serving.
- ``GET /health``: liveness and what is served. ``GET /openapi.json`` and ``GET /docs``: the API
  schema (FastAPI).
- ``GET /``: a page where a person uploads an image and sees the class probabilities and the
  Grad-CAM overlay. ``GET /model-card`` (HTML) and ``GET /model-card.json``: data, metrics and
  intended use of the served run.

The app has no authentication: bind it to loopback (the CLI's default) or put it behind a reverse
proxy that authenticates and terminates TLS. Uploads are decoded in memory and never written to
disk; request bodies above ``limits.max_bytes`` (plus multipart overhead) are cut off with 413
while they stream in.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from typing import Any, Optional, Protocol

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from .. import __version__
from ..ood import OOD_METHODS
from ..prediction import classify
from ..spec import ModelSpec
from .uploads import UploadError, UploadLimits, check_filename, decode_upload

__all__ = ["create_app", "Classifier", "PredictionOut"]

log = logging.getLogger("medclass.serving")

#: multipart framing (boundaries, part headers, the filename) allowed on top of the image bytes.
_MULTIPART_OVERHEAD = 64 * 1024

#: Grad-CAM overlays are upscaled (bilinear) to at least this side in pixels for display.
_OVERLAY_MIN_SIDE = 256


class Classifier(Protocol):
    """What the app needs from a backend (:class:`medclass.serving.predictor.TorchClassifier`,
    the ONNX Runtime and TorchScript classifiers)."""

    spec: ModelSpec
    can_explain: bool

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, C)`` at ``spec.image_size`` -> float32 calibrated probabilities ``(N, K)``."""

    def explain(self, image: np.ndarray, class_idx: Optional[int] = None) -> np.ndarray:
        """uint8 ``(H, W, C)`` -> float32 Grad-CAM heat map ``(H, W)`` in [0, 1] for ``class_idx``
        (None: the predicted class)."""


class OODOut(BaseModel):
    """The out-of-distribution answer (:class:`medclass.ood.OODResult`): is the image unlike the training images?"""

    score: float = Field(description="the method's score; higher means less like the training images")
    threshold: float = Field(description="flag above this score (95% of the validation images are at or below it)")
    flag: bool = Field(description="true: this image is unlike the training images; the prediction is not to be trusted")
    method: str = Field(description=f"the score: one of {', '.join(OOD_METHODS)} (energy: Liu et al. 2020; "
                                    "mahalanobis: Lee et al. 2018)")


class PredictionOut(BaseModel):
    """The answer of ``POST /predict``."""

    filename: str = Field(description="the uploaded file's base name")
    predicted: str = Field(description="the predicted class")
    probabilities: dict[str, float] = Field(description="calibrated probability of each class (sum 1)")
    threshold: Optional[float] = Field(None, description="binary operating threshold on P(second class), if one is used")
    model: str = Field(description="the served run")
    seconds: float = Field(description="server time for decoding and inference, in seconds")
    gradcam_png: Optional[str] = Field(None, description="Grad-CAM overlay as a data:image/png;base64 URI (explain=true)")
    ood: Optional[OODOut] = Field(None, description="out-of-distribution score and flag; null when the model has no "
                                                    "detector (an ensemble, or a run trained before medclass fitted one)")


class ErrorOut(BaseModel):
    """A rejected request."""

    error: str = Field(description="machine-readable code, e.g. too_large, not_an_image, truncated, bad_filename")
    detail: str = Field(description="what is wrong and what to do")


class _BodySizeLimit:
    """ASGI middleware: answer 413 once a request body passes ``max_bytes`` while it streams in,
    so a huge upload is never buffered (Starlette would spool it to disk before the route runs)."""

    def __init__(self, app, max_bytes: int, image_limit: int) -> None:
        self.app = app
        self.max_bytes = max_bytes  # the image limit plus multipart framing
        self.image_limit = image_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send, int(declared))
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(seen, self.image_limit)
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge as e:
            if not started:
                await self._reject(send, e.seen)

    async def _reject(self, send, size: int) -> None:
        body = ErrorOut(error="too_large", detail=_TooLarge(size, self.image_limit).detail).model_dump_json().encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit. An ``HTTPException`` so that FastAPI's
    body parsing re-raises it (it turns other exceptions into a 400) and the app's handler answers 413."""

    def __init__(self, seen: int, max_bytes: int) -> None:
        self.seen = seen
        super().__init__(status_code=413, detail=(
            f"the upload is larger than this server's limit of {max_bytes:,} bytes per image ({seen:,} bytes "
            "or more arrived); send a smaller image (the limit is set with medclass serve --max-upload-mb)"))


def _png_data_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    img = Image.fromarray(rgb)
    if min(img.size) < _OVERLAY_MIN_SIDE:
        scale = _OVERLAY_MIN_SIDE / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def create_app(
    classifier: Classifier,
    model_card: Optional[dict[str, Any]] = None,
    limits: Optional[UploadLimits] = None,
    backend: str = "torch",
) -> FastAPI:
    """Build the service around one loaded classifier.

    Args:
        classifier: the backend; its ``predict_proba``/``explain`` are called one request at a
            time (a lock serialises them: Grad-CAM hooks are not thread-safe, and on a CPU the
            cores are shared anyway).
        model_card: from :func:`medclass.serving.model_card.build_model_card`; None gives a card
            with the spec only.
        limits: upload limits (:class:`~medclass.serving.uploads.UploadLimits`; default values
            when None).
        backend: the backend's name, reported by ``/health``.

    Returns:
        The FastAPI app; run it with ``uvicorn.run(app, host=..., port=...)``.
    """
    from .model_card import INTENDED_USE, OUT_OF_SCOPE, render_model_card
    from .pages import INDEX_HTML, SCRIPT_JS, STYLE_CSS

    spec = classifier.spec
    limits = limits or UploadLimits()
    card = model_card or {"name": spec.run or "model", "model": {"classes": spec.class_names,
                          "image_size": spec.image_size, "channels": spec.channels},
                          "intended_use": INTENDED_USE, "out_of_scope": OUT_OF_SCOPE, "caveats": []}
    card_html = render_model_card(card)
    lock = threading.Lock()
    counters = {"predictions": 0, "rejected": 0, "failed": 0}
    started = time.time()

    app = FastAPI(
        title="medclass prediction service",
        version=__version__,
        description=f"Serves the medclass run `{spec.run}` ({', '.join(spec.class_names)}; {spec.image_size} px). "
                    "Research use only; not a medical device.",
    )
    app.add_middleware(_BodySizeLimit, max_bytes=limits.max_bytes + _MULTIPART_OVERHEAD, image_limit=limits.max_bytes)

    @app.middleware("http")
    async def security_headers(request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path in ("/", "/model-card"):
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
        return response

    @app.exception_handler(_TooLarge)
    async def too_large(request, exc: _TooLarge):
        counters["rejected"] += 1
        return JSONResponse(status_code=413, content=ErrorOut(error="too_large", detail=exc.detail).model_dump(),
                            headers={"Connection": "close"})

    @app.exception_handler(UploadError)
    async def upload_error(request, exc: UploadError):
        counters["rejected"] += 1
        log.info("rejected upload: %s %s", exc.code, exc.message)
        return JSONResponse(status_code=exc.status_code, content=ErrorOut(error=exc.code, detail=exc.message).model_dump())

    def _predict(data: bytes, filename: str, explain: bool) -> PredictionOut:
        t0 = time.perf_counter()
        image = decode_upload(data, filename, spec.channels, spec.image_size, spec.dicom_window, limits, resize=spec.resize)
        with lock:
            probs, classes, ood = classify(classifier, image[None])
            k = int(classes[0])
            heat = classifier.explain(image, class_idx=k) if explain and classifier.can_explain else None
        overlay_uri = None
        if heat is not None:
            from ..evaluation.explain import overlay

            overlay_uri = _png_data_uri(overlay(image, heat))
        return PredictionOut(
            filename=filename, predicted=spec.class_names[k],
            probabilities={n: float(p) for n, p in zip(spec.class_names, probs[0])},
            threshold=spec.threshold if len(spec.class_names) == 2 else None, model=spec.run or "model",
            seconds=time.perf_counter() - t0, gradcam_png=overlay_uri,
            ood=OODOut(**ood[0].to_dict()) if ood else None,
        )

    @app.post("/predict", response_model=PredictionOut, responses={
        400: {"model": ErrorOut, "description": "malformed, empty or truncated upload; bad filename"},
        413: {"model": ErrorOut, "description": "over the byte, pixel or side limit"},
        415: {"model": ErrorOut, "description": "not a PNG, JPEG or DICOM image"},
        422: {"model": ErrorOut, "description": "an image the model cannot use (channels, frames, size); or no file field"},
    })
    async def predict(
        file: UploadFile = File(..., description="one image: PNG, JPEG or DICOM"),
        explain: bool = Query(False, description="add a Grad-CAM overlay of the predicted class"),
    ) -> PredictionOut:
        """Classify one uploaded image."""
        filename = check_filename(file.filename, limits)
        data = await file.read(limits.max_bytes + 1)
        try:
            out = await run_in_threadpool(_predict, data, filename, explain)
        except UploadError:
            raise
        except Exception:
            counters["failed"] += 1
            log.exception("prediction failed for %s", filename)
            return JSONResponse(status_code=500, content=ErrorOut(
                error="internal", detail=f"the server failed to classify {filename}; see its log").model_dump())
        counters["predictions"] += 1
        return out

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, what is served, and request counters."""
        detector = getattr(classifier, "ood", None)
        return {"status": "ok", "model": spec.run, "backend": backend, "classes": spec.class_names,
                "ood": None if detector is None else {"method": detector.method, "threshold": detector.threshold},
                "image_size": spec.image_size, "channels": spec.channels, "can_explain": bool(classifier.can_explain),
                "uptime_seconds": round(time.time() - started, 3), **counters,
                "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels, "max_side": limits.max_side}}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return INDEX_HTML.replace("{{MODEL}}", _html_escape(spec.run or "model")).replace(
            "{{CLASSES}}", _html_escape(", ".join(spec.class_names)))

    @app.get("/static/app.js", include_in_schema=False)
    def script() -> PlainTextResponse:
        return PlainTextResponse(SCRIPT_JS, media_type="text/javascript")

    @app.get("/static/style.css", include_in_schema=False)
    def style() -> PlainTextResponse:
        return PlainTextResponse(STYLE_CSS, media_type="text/css")

    @app.get("/model-card", response_class=HTMLResponse)
    def model_card_page() -> str:
        """The model card: data, metrics, intended use and caveats of the served run."""
        return card_html

    @app.get("/model-card.json")
    def model_card_json() -> dict[str, Any]:
        """The model card as JSON."""
        return card

    return app


def _html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)
