"""Building the service for a run folder, and running it under uvicorn (``medclass serve``)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

from .uploads import UploadLimits

__all__ = ["load_classifier", "build_app", "make_server", "serve", "BACKENDS", "is_loopback"]

#: Backends ``medclass serve`` can use.
BACKENDS = ("torch", "onnx")


def load_classifier(run_dir: Path, backend: str = "torch", checkpoint: str = "best", device: str = "auto"):
    """The classifier of a run for a backend.

    ``torch``: the run's checkpoint through :func:`medclass.engine.load_run` (Grad-CAM works).
    ``onnx``: ``RUN/export/model.onnx`` written by ``medclass export RUN`` (ONNX Runtime on the
    CPU; no Grad-CAM, PyTorch is not imported for predictions).

    Raises:
        ValueError: an unknown backend.
        RunError, CheckpointError, FileNotFoundError: no usable run, checkpoint or export; the
            message names the file and what to run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from .prediction import load_predictor  # the one adapter, as `medclass predict` uses

    return load_predictor(Path(run_dir), backend, checkpoint=checkpoint, device=device)


def build_app(run_dir: Path, backend: str = "torch", limits: Optional[UploadLimits] = None,
              checkpoint: str = "best", device: str = "auto", options=None):
    """The FastAPI app (:func:`medclass.serving.app.create_app`) serving ``run_dir`` with its model
    card; ``options`` is a :class:`medclass.serving.app.ServeOptions` (None: the defaults)."""
    from .app import create_app
    from ..evaluation.model_card import build_model_card

    classifier = load_classifier(run_dir, backend, checkpoint, device)
    card = build_model_card(Path(run_dir), classifier.spec) if Path(run_dir).is_dir() else None
    return create_app(classifier, card, limits, backend=backend, options=options)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _protocol_class(header_timeout_s: float, max_connections: int, counters: Optional[dict]):
    """uvicorn's h11 protocol, with two guards uvicorn lacks:

    * a connection must send a complete request head within ``header_timeout_s`` seconds of
      opening or of its previous response (uvicorn's keep-alive timer starts only after a first
      response and stops at the first byte, so an idle or byte-by-byte connection would be held
      forever and count against the connection limit);
    * past ``max_connections`` open connections a new one gets a JSON 503 ``busy`` with
      ``Retry-After`` and is closed (uvicorn's own limit answers plain text).
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from .app import _error_body

    refusal = _error_body("busy", f"the server has {max_connections} open connections; retry in 1 s")
    refusal_bytes = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                     b"connection: close\r\ncontent-length: " + str(len(refusal)).encode() + b"\r\n\r\n" + refusal)

    class TimedH11Protocol(H11Protocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                if counters is not None:
                    counters["refused_connections"] += 1
                transport.write(refusal_bytes)
                transport.close()
                return
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE,):
                self.transport.close()  # no complete request head in time: drop the connection

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_head_timer()  # the head is complete; the body has the app's deadline

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

    return TimedH11Protocol


def make_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    """A ``uvicorn.Server`` for ``app`` (not started: call ``.run()``), with the connection
    settings of ``app.state.options`` (:class:`medclass.serving.app.ServeOptions`: header timeout,
    keep-alive, connection limit; the defaults for an app without them). One worker process;
    requests share the model."""
    import uvicorn

    from .app import ServeOptions

    options = getattr(app.state, "options", None) or ServeOptions()
    counters = getattr(app.state, "counters", None)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, server_header=False,
        http=_protocol_class(options.header_timeout_s, options.max_connections, counters),
        timeout_keep_alive=options.keep_alive_s, limit_concurrency=None, backlog=2048)
    return uvicorn.Server(config)


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` under uvicorn until interrupted (:func:`make_server`). The app has no
    authentication: callers should warn when ``host`` is not loopback (:func:`is_loopback`), as
    ``medclass serve`` does.

    Raises:
        OSError: the port is taken or the address cannot be bound.
    """
    server = make_server(app, host, port, log_level)
    server.run()
    if not server.started and getattr(server, "should_exit", False):
        raise OSError(f"cannot listen on {host}:{port}")
