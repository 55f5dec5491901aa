"""The prediction service: a FastAPI app serving one classifier, with a web page and a model card.

Routes:

- ``POST /predict``: multipart form with one image in the field ``file`` (PNG, JPEG or DICOM);
  query ``explain=true`` adds a Grad-CAM overlay (base64 PNG) when the backend can explain.
  Returns :class:`PredictionOut` JSON; when the model has an out-of-distribution detector
  (:mod:`medclass.core.ood`) its ``ood`` object says whether the image is unlike the training images. Every refused request gets a JSON body ``{"error": code,
  "detail": message}`` (:class:`ErrorOut`): bad uploads (see :mod:`medclass.serving.uploads`),
  a malformed form or a second ``file`` part (400), FastAPI's own validation errors (422), an
  unknown path (404), a body over the limit (413), a body that arrives too slowly (408) and a
  full server (503 with ``Retry-After``). The service keeps serving.
- ``GET /health``: liveness, what is served, request counters (``predictions``, ``rejected``:
  every 4xx and 503 answer to ``/predict``, ``busy``: the 503s, ``timeouts``: the 408s,
  ``failed``: 500s), the admission queue, the decode memory in use and the batching statistics.
- ``GET /openapi.json``; ``GET /docs``: Swagger UI from local files when
  ``$MEDCLASS_SWAGGER_UI_DIR`` names a folder holding ``swagger-ui-bundle.js`` and
  ``swagger-ui.css`` (the ``swagger-ui-dist`` npm package's files; nothing is fetched from a CDN,
  which an offline hospital network cannot reach), otherwise a plain page listing the endpoints
  and linking the schema. Both under a Content-Security-Policy without inline script.
- ``GET /``: a page where a person uploads an image and sees the class probabilities and the
  Grad-CAM overlay. ``GET /model-card`` (HTML) and ``GET /model-card.json``: data, metrics and
  intended use of the served run.

Load and memory (:class:`ServeOptions`): at most ``max_active`` ``/predict`` requests are
processed at once; up to ``max_queue`` more wait (first in, first out) for at most
``queue_timeout_s``; only past that does a request get 503 ``busy`` with ``Retry-After``. An
upload's decode is admitted against ``decode_memory_bytes``: its cost is computed from the image
header (width x height x bytes per sample x samples, times
:data:`~medclass.serving.uploads.DECODE_AMPLIFICATION`) before any pixel is decoded, and a decode
waits while the decodes in progress would pass the budget (an image whose cost alone passes it
is decoded by itself). Decoded images are predicted by a :class:`~medclass.serving.batching.DynamicBatcher`
(``max_batch`` images or ``max_wait_ms``); Grad-CAM runs unbatched under the same model lock.

The app has no authentication: bind it to loopback (the CLI's default) or put it behind a reverse
proxy that authenticates and terminates TLS. Uploads are parsed and decoded in memory and never
written to disk (the multipart parser's spool limit is raised above the body limit); request
bodies above ``limits.max_bytes`` (plus multipart overhead) are cut off with 413 while they
stream in, and a body must arrive within ``body_timeout_s``. Idle connections and requests whose
headers do not arrive within ``header_timeout_s`` are closed by the server
(:func:`medclass.serving.service.serve`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import io
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from ..core import __version__
from ..core.ood import OOD_METHODS
from .prediction import scored
from ..core.spec import ModelSpec
from .batching import BatchingOptions, DynamicBatcher
from .uploads import UploadError, UploadLimits, check_filename, decode_cost, decode_upload

__all__ = ["create_app", "Classifier", "PredictionOut", "ErrorOut", "ServeOptions", "SWAGGER_UI_ENV"]

log = logging.getLogger("medclass.serving")

#: multipart framing (boundaries, part headers, the filename) allowed on top of the image bytes.
_MULTIPART_OVERHEAD = 64 * 1024

#: Grad-CAM overlays are upscaled (bilinear) to at least this side in pixels for display.
_OVERLAY_MIN_SIDE = 256

#: Environment variable naming a folder with Swagger UI's ``swagger-ui-bundle.js`` and ``swagger-ui.css``.
SWAGGER_UI_ENV = "MEDCLASS_SWAGGER_UI_DIR"

_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeOptions:
    """Load, memory and batching settings of the service (the defaults suit 2-16 CPU cores).

    Attributes:
        max_active: ``/predict`` requests processed at once (reading, decoding, predicting).
        max_queue: ``/predict`` requests waiting for a slot; past it a request gets 503 ``busy``.
        queue_timeout_s: longest wait in seconds for a slot before 503 ``busy``.
        retry_after_s: the ``Retry-After`` seconds of a 503.
        decode_memory_bytes: memory budget in bytes for the decodes in progress (see
            :func:`medclass.serving.uploads.decode_cost`); default 1 GiB.
        body_timeout_s: seconds a request body may take to arrive in full; a slower one gets 408
            ``slow_request`` and the connection is closed.
        header_timeout_s: seconds a connection may take to send a request's headers (also an
            idle connection's first request); used by :func:`medclass.serving.service.serve`.
        keep_alive_s: seconds an idle keep-alive connection stays open between requests (uvicorn).
        max_connections: open connections the server accepts; past it a connection gets 503
            ``busy`` (JSON) and is closed (:func:`medclass.serving.service.serve`).
        max_batch, max_wait_ms: dynamic batching (:class:`~medclass.serving.batching.BatchingOptions`).

    Raises:
        ValueError: a value out of range (the message names the field).
    """

    max_active: int = 16
    max_queue: int = 256
    queue_timeout_s: float = 30.0
    retry_after_s: int = 1
    decode_memory_bytes: int = 1024 * MiB
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 1024
    max_batch: int = 8
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = int if f.type in ("int", int) else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"ServeOptions.{f.name} must be {'an integer' if kind is int else 'a number'}, "
                                 f"got {value!r}")
            if value < (0 if f.name in ("max_queue", "max_wait_ms") else 1e-9):
                raise ValueError(f"ServeOptions.{f.name} must be {'>= 0' if f.name in ('max_queue', 'max_wait_ms') else '> 0'}, "
                                 f"got {value!r}")
        BatchingOptions(self.max_batch, self.max_wait_ms)

    @property
    def batching(self) -> BatchingOptions:
        return BatchingOptions(self.max_batch, self.max_wait_ms)


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
    """The out-of-distribution answer (:class:`medclass.core.ood.OODResult`): is the image unlike the training images?"""

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

    error: str = Field(description="machine-readable code, e.g. too_large, not_an_image, truncated, bad_filename, busy")
    detail: str = Field(description="what is wrong and what to do")


def _error_body(code: str, detail: str) -> bytes:
    return ErrorOut(error=code, detail=detail).model_dump_json().encode()


async def _send_error(send, status: int, code: str, detail: str, headers: tuple = ()) -> None:
    """Answer a raw ASGI request with the JSON error body and ``Connection: close``."""
    body = _error_body(code, detail)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class _Admission:
    """At most ``max_active`` holders; up to ``max_queue`` waiters, served first in, first out."""

    def __init__(self, max_active: int, max_queue: int, timeout_s: float) -> None:
        self.max_active, self.max_queue, self.timeout_s = max_active, max_queue, timeout_s
        self.active = 0
        self.waiting: deque[asyncio.Future] = deque()

    async def enter(self) -> bool:
        """True once a slot is held (call :meth:`leave` after); False when the queue is full or
        the wait passed ``timeout_s``."""
        if self.active < self.max_active and not self.waiting:
            self.active += 1
            return True
        if len(self.waiting) >= self.max_queue:
            return False
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        try:
            await asyncio.wait_for(future, self.timeout_s)  # leave() hands its slot over
        except asyncio.TimeoutError:
            self._forget(future)
            return False
        except asyncio.CancelledError:
            self._forget(future)
            if future.done() and not future.cancelled():
                self.leave()
            raise
        return True

    def _forget(self, future: asyncio.Future) -> None:
        try:
            self.waiting.remove(future)
        except ValueError:
            pass

    def leave(self) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(None)  # the slot passes to the next waiter
                return
        self.active -= 1


class _MemoryGate:
    """Decodes in progress may together claim at most ``budget`` bytes (their header-based cost)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._cond: Optional[asyncio.Condition] = None
        self._loop = None

    @property
    def cond(self) -> asyncio.Condition:
        """The condition of the running event loop (a test client may run each request in its own loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._cond, self._loop = asyncio.Condition(), loop
        return self._cond

    async def acquire(self, cost: int) -> int:
        """Wait until ``cost`` (capped at the budget: a big image alone is decoded by itself) fits;
        return the bytes claimed, to pass to :meth:`release`."""
        cost = min(int(cost), self.budget)
        if cost <= 0:
            return 0
        async with self.cond:
            await self.cond.wait_for(lambda: self.used + cost <= self.budget)
            self.used += cost
        return cost

    async def release(self, cost: int) -> None:
        if cost <= 0:
            return
        async with self.cond:
            self.used -= cost
            self.cond.notify_all()


class _TooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit. An ``HTTPException`` so that FastAPI's
    body parsing re-raises it (it turns other exceptions into a 400) and the app's handler answers 413."""

    def __init__(self, seen: int, max_bytes: int) -> None:
        self.seen = seen
        super().__init__(status_code=413, detail=(
            f"the upload is larger than this server's limit of {max_bytes:,} bytes per image ({seen:,} bytes "
            "or more arrived); send a smaller image (the limit is set with medclass serve --max-upload-mb)"))


class _SlowBody(HTTPException):
    """Raised from ``receive`` when the body does not arrive within ``body_timeout_s``."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(status_code=408, detail=(
            f"the request body did not arrive within {timeout_s:g} s; send the upload again over a faster "
            "connection"))


class _Guard:
    """The outermost ASGI layer: admission of ``POST /predict`` (bounded queue, JSON 503 with
    ``Retry-After``), the body size limit (413 while the body streams in, so a huge upload is never
    buffered), the body deadline (408), and the ``/predict`` counters, counted from the status of
    every answer (so answers made by middleware count too)."""

    def __init__(self, app, max_bytes: int, image_limit: int, options: ServeOptions, counters: dict,
                 admission: _Admission) -> None:
        self.app = app
        self.max_bytes = max_bytes  # the image limit plus multipart framing
        self.image_limit = image_limit
        self.options = options
        self.counters = counters
        self.admission = admission

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        predict = scope["path"] == "/predict"
        status_seen = {"status": None}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status_seen["status"] = message["status"]
                if predict:
                    self._count(message["status"])
            await send(message)

        if predict and scope["method"] == "POST":
            if not await self.admission.enter():
                return await _send_error(
                    counting_send, 503, "busy",
                    f"the server is busy ({self.options.max_active} requests in progress and "
                    f"{len(self.admission.waiting)} waiting); retry in {self.options.retry_after_s} s",
                    ((b"retry-after", str(self.options.retry_after_s).encode()),))
            try:
                return await self._guarded(scope, receive, counting_send, status_seen)
            finally:
                self.admission.leave()
        return await self._guarded(scope, receive, counting_send, status_seen)

    def _count(self, status: int) -> None:
        if status == 503:
            self.counters["busy"] += 1
        if status == 408:
            self.counters["timeouts"] += 1
        if 400 <= status < 500 or status == 503:
            self.counters["rejected"] += 1

    async def _guarded(self, scope, receive, send, status_seen):
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_error(send, 413, "too_large", _TooLarge(int(declared), self.image_limit).detail)
        seen = 0
        body_done = False
        deadline = time.monotonic() + self.options.body_timeout_s

        async def limited_receive():
            nonlocal seen, body_done
            if body_done:
                return await receive()  # waiting for http.disconnect: no deadline
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except asyncio.TimeoutError:
                raise _SlowBody(self.options.body_timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(seen, self.image_limit)
                body_done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge as e:
            if status_seen["status"] is None:
                await _send_error(send, 413, "too_large", e.detail)
        except _SlowBody as e:
            if status_seen["status"] is None:
                await _send_error(send, 408, "slow_request", e.detail)


class _InMemoryMultiPartParser(MultiPartParser):
    """Starlette's multipart parser with the spool limit above the body limit: an upload stays in
    memory (a ``SpooledTemporaryFile`` that never rolls over to disk)."""

    def __init__(self, *args, spool_bytes: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spool_max_size = spool_bytes


def _png_data_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    img = Image.fromarray(rgb)
    if min(img.size) < _OVERLAY_MIN_SIDE:
        scale = _OVERLAY_MIN_SIDE / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _markdown_text(text: str) -> str:
    """``text`` safe inside the OpenAPI description, which Swagger UI renders as Markdown with HTML:
    HTML-escaped, and Markdown's punctuation backslash-escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~>])", r"\\\1", html.escape(text, quote=True))


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 406: "not_acceptable", 408: "slow_request", 413: "too_large",
                 415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests", 503: "busy"}


def create_app(
    classifier: Classifier,
    model_card: Optional[dict[str, Any]] = None,
    limits: Optional[UploadLimits] = None,
    backend: str = "torch",
    options: Optional[ServeOptions] = None,
) -> FastAPI:
    """Build the service around one loaded classifier.

    Args:
        classifier: the backend; ``predict_proba`` is called by the app's
            :class:`~medclass.serving.batching.DynamicBatcher` (one worker thread, batches of up to
            ``options.max_batch``), ``explain`` one image at a time; a lock keeps them from
            overlapping (Grad-CAM hooks are not thread-safe, and on a CPU the cores are shared anyway).
        model_card: from :func:`medclass.evaluation.model_card.build_model_card`; None gives a card
            with the spec only.
        limits: upload limits (:class:`~medclass.serving.uploads.UploadLimits`; default values
            when None).
        backend: the backend's name, reported by ``/health``.
        options: load, memory and batching settings (:class:`ServeOptions`; defaults when None).
            The server-level ones (``header_timeout_s``, ``keep_alive_s``, ``max_connections``)
            are applied by :func:`medclass.serving.service.serve`, which reads them from
            ``app.state.options``.

    Returns:
        The FastAPI app; run it with :func:`medclass.serving.service.serve`.
    """
    from ..evaluation.model_card import INTENDED_USE, OUT_OF_SCOPE, render_model_card
    from .pages import INDEX_HTML, SCRIPT_JS, STYLE_CSS

    spec = classifier.spec
    limits = limits or UploadLimits()
    options = options or ServeOptions()
    card = model_card or {"name": spec.run or "model", "model": {"classes": spec.class_names,
                          "image_size": spec.image_size, "channels": spec.channels},
                          "intended_use": INTENDED_USE, "out_of_scope": OUT_OF_SCOPE, "caveats": []}
    card_html = render_model_card(card)
    lock = threading.Lock()
    detector = getattr(classifier, "ood", None)

    def predict_batch(images: np.ndarray) -> list[tuple[np.ndarray, Optional[float]]]:
        """Per image of uint8 ``(N, H, W, C)``: its calibrated probabilities float32 ``(K,)`` and its OOD
        score (None without a detector), from one forward pass (:func:`medclass.serving.prediction.scored`)."""
        probs, scores = scored(classifier, images)
        return [(p, None if scores is None else float(sc)) for p, sc in zip(probs, scores if scores is not None
                                                                             else [None] * len(probs))]

    batcher = DynamicBatcher(predict_batch, options.batching, lock)
    counters = {"predictions": 0, "rejected": 0, "busy": 0, "timeouts": 0, "failed": 0, "refused_connections": 0}
    admission = _Admission(options.max_active, options.max_queue, options.queue_timeout_s)
    memory = _MemoryGate(options.decode_memory_bytes)
    started = time.time()
    names = ", ".join(_markdown_text(n) for n in spec.class_names)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()  # predicts what is queued, then stops the worker thread

    app = FastAPI(
        lifespan=lifespan,
        title="medclass prediction service",
        version=__version__,
        description=f"Serves the medclass run {_markdown_text(spec.run or 'model')} ({names}; {spec.image_size} px). "
                    "Research use only; not a medical device.",
        docs_url=None, redoc_url=None,
    )
    app.state.options = options
    app.state.counters = counters
    app.state.batcher = batcher
    app.add_middleware(_Guard, max_bytes=limits.max_bytes + _MULTIPART_OVERHEAD, image_limit=limits.max_bytes,
                       options=options, counters=counters, admission=admission)

    @app.middleware("http")
    async def security_headers(request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path in ("/", "/model-card", "/docs"):
            response.headers["Content-Security-Policy"] = _CSP
        return response

    @app.exception_handler(_TooLarge)
    async def too_large(request, exc: _TooLarge):
        return JSONResponse(status_code=413, content=ErrorOut(error="too_large", detail=exc.detail).model_dump(),
                            headers={"Connection": "close"})

    @app.exception_handler(_SlowBody)
    async def slow_body(request, exc: _SlowBody):
        return JSONResponse(status_code=408, content=ErrorOut(error="slow_request", detail=exc.detail).model_dump(),
                            headers={"Connection": "close"})

    @app.exception_handler(UploadError)
    async def upload_error(request, exc: UploadError):
        log.info("rejected upload: %s %s", exc.code, exc.message)
        return JSONResponse(status_code=exc.status_code, content=ErrorOut(error=exc.code, detail=exc.message).model_dump())

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return JSONResponse(status_code=422, content=ErrorOut(
            error="invalid_request", detail=f"the request is not valid ({problems[:500]}); see /docs").model_dump())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        path = _html_escape(request.url.path[:200])
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"there is no {path} here; the endpoints are listed at /docs"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {path}; the endpoints and their methods are listed at /docs"
        return JSONResponse(status_code=exc.status_code, content=ErrorOut(error=code, detail=detail).model_dump(),
                            headers=getattr(exc, "headers", None))

    async def read_upload(request: Request) -> tuple[bytes, Optional[str]]:
        """The bytes and file name of the one ``file`` part, parsed in memory.

        Raises:
            UploadError: not multipart, no ``file`` part, more than one, or a malformed form.
        """
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise UploadError(422, "no_file", "send the image as multipart/form-data in a field named 'file' "
                              f"(got content type {content_type[:100]!r}); e.g. curl -F file=@scan.png URL/predict")
        parser = _InMemoryMultiPartParser(request.headers, request.stream(), max_files=1, max_fields=16,
                                          max_part_size=64 * 1024, spool_bytes=limits.max_bytes + _MULTIPART_OVERHEAD)
        try:
            form = await parser.parse()
        except MultiPartException as e:
            if "Too many files" in e.message:
                raise UploadError(400, "too_many_files", "the form holds more than one file; send exactly one "
                                  "image in the field 'file' per request") from None
            raise UploadError(400, "bad_multipart", f"the multipart form could not be parsed ({e.message}); send "
                              "one image in the field 'file'") from None
        try:
            parts = form.getlist("file")
            if len(parts) > 1:
                raise UploadError(400, "too_many_files", f"the form has {len(parts)} 'file' parts; send exactly one "
                                  "image per request")
            if not parts or isinstance(parts[0], str):
                raise UploadError(422, "no_file", "the form has no file in the field 'file'; send the image as "
                                  "multipart/form-data, e.g. curl -F file=@scan.png URL/predict")
            upload = parts[0]
            name = upload.filename
            upload.file.seek(0)
            data = upload.file.read(limits.max_bytes + 1)
            return data, name
        finally:
            await form.close()

    def decode(data: bytes, filename: str) -> np.ndarray:
        return decode_upload(data, filename, spec.channels, spec.image_size, spec.dicom_window, limits,
                             resize=spec.resize)

    def gradcam(image: np.ndarray, k: int) -> Optional[str]:
        with lock:
            heat = classifier.explain(image, class_idx=k)
        from ..evaluation.explain import overlay

        return _png_data_uri(overlay(image, heat))

    @app.post("/predict", response_model=PredictionOut, responses={
        400: {"model": ErrorOut, "description": "malformed, empty or truncated upload; bad filename; more than one file"},
        408: {"model": ErrorOut, "description": "the body did not arrive in time"},
        413: {"model": ErrorOut, "description": "over the byte, pixel or side limit"},
        415: {"model": ErrorOut, "description": "not a PNG, JPEG or DICOM image"},
        422: {"model": ErrorOut, "description": "an image the model cannot use (channels, frames, size); no file field; "
                                                "an invalid query"},
        503: {"model": ErrorOut, "description": "the server is busy: retry after the Retry-After seconds"},
    }, openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "one image: PNG, JPEG or DICOM"}}}}}}})
    async def predict(
        request: Request,
        explain: bool = Query(False, description="add a Grad-CAM overlay of the predicted class"),
    ):
        """Classify one uploaded image."""
        t0 = time.perf_counter()
        data, raw_name = await read_upload(request)
        filename = check_filename(raw_name, limits)
        claimed = await memory.acquire(decode_cost(data))
        try:
            image = await run_in_threadpool(decode, data, filename)
        finally:
            await memory.release(claimed)
        del data
        try:
            probs, score = await asyncio.wrap_future(batcher.submit(image))
            k = int(spec.decide(probs[None])[0])
            ood = detector.results(np.array([score]))[0] if detector is not None and score is not None else None
            overlay_uri = await run_in_threadpool(gradcam, image, k) if explain and classifier.can_explain else None
        except Exception:
            counters["failed"] += 1
            log.exception("prediction failed for %s", filename)
            return JSONResponse(status_code=500, content=ErrorOut(
                error="internal", detail=f"the server failed to classify {filename}; see its log").model_dump())
        counters["predictions"] += 1
        return PredictionOut(
            filename=filename, predicted=spec.class_names[k],
            probabilities={n: float(p) for n, p in zip(spec.class_names, probs)},
            threshold=spec.threshold if len(spec.class_names) == 2 else None, model=spec.run or "model",
            seconds=time.perf_counter() - t0, gradcam_png=overlay_uri,
            ood=OODOut(**ood.to_dict()) if ood is not None else None,
        )

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, what is served, request counters, the admission queue, decode memory and batching."""
        detector = getattr(classifier, "ood", None)
        return {"status": "ok", "model": spec.run, "backend": backend, "classes": spec.class_names,
                "ood": None if detector is None else {"method": detector.method, "threshold": detector.threshold},
                "image_size": spec.image_size, "channels": spec.channels, "can_explain": bool(classifier.can_explain),
                "uptime_seconds": round(time.time() - started, 3), **counters,
                "queue": {"active": admission.active, "waiting": len(admission.waiting),
                          "max_active": options.max_active, "max_queue": options.max_queue},
                "decode_memory": {"budget_bytes": memory.budget, "in_use_bytes": memory.used},
                "batching": batcher.stats(),
                "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels, "max_side": limits.max_side}}

    swagger_dir = _swagger_ui_dir()

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> str:
        if swagger_dir is not None:
            return _SWAGGER_HTML
        return _endpoint_list_html(app.openapi(), spec.run or "model")

    @app.get("/docs-assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        files = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
        if swagger_dir is None or name not in files:
            raise StarletteHTTPException(404, f"no such file: {name}")
        return Response((swagger_dir / name).read_bytes(), media_type=files[name])

    @app.get("/docs-init.js", include_in_schema=False)
    def docs_init() -> PlainTextResponse:
        return PlainTextResponse(_SWAGGER_INIT_JS, media_type="text/javascript")

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


def _swagger_ui_dir() -> Optional[Path]:
    """The folder named by ``$MEDCLASS_SWAGGER_UI_DIR`` when it holds ``swagger-ui-bundle.js`` and
    ``swagger-ui.css``; else None (``/docs`` is then a plain list of the endpoints)."""
    folder = os.environ.get(SWAGGER_UI_ENV)
    if not folder:
        return None
    path = Path(folder)
    if (path / "swagger-ui-bundle.js").is_file() and (path / "swagger-ui.css").is_file():
        return path
    log.warning("%s=%s lacks swagger-ui-bundle.js or swagger-ui.css; /docs lists the endpoints instead",
                SWAGGER_UI_ENV, folder)
    return None


_SWAGGER_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medclass API</title>
<link rel="stylesheet" href="/docs-assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script><script src="/docs-init.js"></script></body></html>
"""

_SWAGGER_INIT_JS = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: false});
"""


def _endpoint_list_html(schema: dict, model: str) -> str:
    """A plain page listing the API's endpoints (method, path, summary, answers), every text escaped."""
    rows = []
    for path, ops in sorted(schema.get("paths", {}).items()):
        for method, op in ops.items():
            codes = ", ".join(sorted(op.get("responses", {})))
            rows.append(f"<tr><td><code>{_html_escape(method.upper())}</code></td><td><code>{_html_escape(path)}</code>"
                        f"</td><td>{_html_escape(op.get('summary', ''))}: {_html_escape(op.get('description', ''))}</td>"
                        f"<td>{_html_escape(codes)}</td></tr>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>medclass API</title>"
            "<link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>"
            f"<h1>medclass prediction service: API</h1><p>Serving <code>{_html_escape(model)}</code>. "
            "The full schema is at <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI 3). Errors are JSON "
            "<code>{\"error\": code, \"detail\": message}</code>. An interactive Swagger UI is served here when "
            f"<code>{SWAGGER_UI_ENV}</code> names a folder with swagger-ui-bundle.js and swagger-ui.css "
            "(nothing is loaded from the internet).</p>"
            "<table><thead><tr><th>method</th><th>path</th><th>what</th><th>answers</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></body></html>\n")


def _html_escape(text: str) -> str:
    return html.escape(text, quote=True)
