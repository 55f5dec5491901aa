"""Dynamic batching for the service: concurrent requests share one forward pass.

Like Triton's dynamic batcher and TorchServe's ``batch_size``/``max_batch_delay``: a request's
decoded image is queued; one worker thread takes the first image waiting, then keeps collecting
until it holds ``max_batch`` images or ``max_wait_ms`` milliseconds have passed since that first
image, and runs the classifier once on the stacked batch. Each request gets its own row of the
probabilities. ``max_batch = 1`` turns batching off (every image is its own forward pass, one at
a time, as before).

The classifier runs only in the worker thread, under ``lock``; Grad-CAM (not batched: its hooks
and gradients are per image) takes the same lock, so a forward pass and a Grad-CAM never overlap.
Backends are deterministic per image up to floating-point rounding: a row of a batched forward
pass equals the single-image pass within about 1e-6 (convolution algorithms may sum in another
order for another batch size).

Torch-free (numpy and the standard library).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

__all__ = ["BatchingOptions", "DynamicBatcher"]


@dataclass(frozen=True)
class BatchingOptions:
    """How concurrent requests are batched.

    Attributes:
        max_batch: most images per forward pass (1: no batching).
        max_wait_ms: longest a request waits in milliseconds for others to join its batch, counted
            from the first image of the batch (0: take what is queued, never wait).
    """

    max_batch: int = 8
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {self.max_batch!r}")
        if not (isinstance(self.max_wait_ms, (int, float)) and 0 <= self.max_wait_ms <= 10_000):
            raise ValueError(f"max_wait_ms must be a number of milliseconds in 0..10000, got {self.max_wait_ms!r}")


class DynamicBatcher:
    """Queue single images, run ``predict`` on batches of them in one worker thread.

    Args:
        predict: uint8 ``(N, H, W, C)`` -> float32 ``(N, K)`` (a backend's ``predict_proba``).
        options: :class:`BatchingOptions`.
        lock: held around every ``predict`` call (shared with Grad-CAM); a new lock when None.

    Attributes:
        model_calls: forward passes run so far.
        images: images predicted so far (``images / model_calls`` is the mean batch size).
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], options: BatchingOptions = BatchingOptions(),
                 lock: Optional[threading.Lock] = None) -> None:
        self.predict = predict
        self.options = options
        self.lock = lock if lock is not None else threading.Lock()
        self.model_calls = 0
        self.images = 0
        self._queue: deque[tuple[np.ndarray, concurrent.futures.Future]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="medclass-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray) -> concurrent.futures.Future:
        """Queue one uint8 ``(H, W, C)`` image; the future's result is its float32 ``(K,)``
        probabilities, or the exception the batch raised.

        Raises:
            RuntimeError: the batcher is closed.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append((image, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        """Stop the worker after the queued images are predicted."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def stats(self) -> dict:
        """``{"max_batch", "max_wait_ms", "model_calls", "images", "queued"}`` for ``/health``."""
        return {"max_batch": self.options.max_batch, "max_wait_ms": self.options.max_wait_ms,
                "model_calls": self.model_calls, "images": self.images, "queued": len(self._queue)}

    def _take_batch(self) -> list[tuple[np.ndarray, concurrent.futures.Future]]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return []
            deadline = time.monotonic() + self.options.max_wait_ms / 1000.0
            while len(self._queue) < self.options.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(self.options.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            batch = [(img, fut) for img, fut in batch if fut.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                with self.lock:
                    probs = self.predict(np.stack([img for img, _ in batch]))
                self.model_calls += 1
                self.images += len(batch)
            except BaseException as e:  # every waiting request gets the error
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            for row, (_, fut) in zip(probs, batch):
                fut.set_result(row)
