"""Progress that reaches every user: a bar on a terminal, plain lines in a log.

A long step (decoding images, inference, a bootstrap, a duplicate check, an export) reports
through :class:`Progress`. Where it goes depends on stderr:

- a terminal: a tqdm bar (description, count, rate, the step's ETA);
- not a terminal (a log file, ``nohup``, a cluster job): a line when the step starts, saying what
  it does and how much (``evaluate: bootstrap 1000 resamples``), then a line every
  :func:`log_interval` seconds (``... 400/1000 resamples (40%), 85.2/s, elapsed 4.7s, ETA 7.0s``)
  and, when it printed one of those, a last line with the time taken. A log shows life at a
  fixed interval, however long the step.

``progress=False`` (a caller that wants silence: the time-budget measurements, DDP ranks other
than 0) shows neither. The interval is ``$MEDCLASS_LOG_INTERVAL`` seconds (default
:data:`DEFAULT_LOG_INTERVAL`); training uses ``train.log_interval``.

Torch-free (stdlib and tqdm), so the CLI's argument checks and the ONNX path stay light.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO

__all__ = ["DEFAULT_LOG_INTERVAL", "log_interval", "is_terminal", "format_seconds", "Progress", "track", "say"]

#: Seconds between two progress lines in a log (stderr not a terminal), unless
#: ``$MEDCLASS_LOG_INTERVAL`` or ``train.log_interval`` says otherwise.
DEFAULT_LOG_INTERVAL = 30.0


def log_interval() -> float:
    """Seconds between progress lines: ``$MEDCLASS_LOG_INTERVAL`` when it is a positive number, else
    :data:`DEFAULT_LOG_INTERVAL`."""
    try:
        value = float(os.environ.get("MEDCLASS_LOG_INTERVAL", ""))
    except ValueError:
        return DEFAULT_LOG_INTERVAL
    return value if value > 0 else DEFAULT_LOG_INTERVAL


def is_terminal(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def format_seconds(seconds: Optional[float]) -> str:
    """``"42s"``, ``"7m05s"``, ``"1h02m"``; ``"?"`` for ``None``."""
    if seconds is None:
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def say(message: str, stream: Optional[TextIO] = None) -> None:
    """One progress line on ``stream`` (default stderr), flushed at once (logs are block-buffered)."""
    stream = sys.stderr if stream is None else stream
    print(message, file=stream, flush=True)


class Progress:
    """How far one long step is (see the module docstring).

    Args:
        what: what the step does, e.g. ``"evaluate: validation inference for calibration"``.
        total: units of work in all (``None``: unknown; no percentage or ETA).
        unit: name of a unit (``"images"``, ``"resamples"``).
        enabled: ``False``: silent.
        bar: a tqdm bar (default: when stderr is a terminal) instead of lines.
        interval: seconds between lines (default :func:`log_interval`).
        stream: where lines and the bar go (default ``sys.stderr``).
        clock: the time source (tests pass a fake one).
    """

    def __init__(self, what: str, total: Optional[int] = None, unit: str = "", *, enabled: bool = True,
                 bar: Optional[bool] = None, interval: Optional[float] = None, stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.enabled = enabled
        self.stream = stream
        self.clock = clock
        self.interval = log_interval() if interval is None else float(interval)
        self.done = 0
        self.start = clock()
        self.last_line = self.start
        self.lines = 0  # interval lines printed
        self.closed = False
        self._bar: Any = None
        if not enabled:
            return
        if bar if bar is not None else is_terminal(stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=what, unit=f" {unit}" if unit else "it", leave=False,
                             file=stream if stream is not None else sys.stderr)
        else:
            amount = f" ({total:,} {unit})" if total is not None and unit else ""
            say(f"{what}{amount} ...", self.stream)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(ok=exc[0] is None)

    def eta(self) -> Optional[float]:
        """Seconds left at the rate so far; ``None`` without a total or before any work."""
        elapsed = self.clock() - self.start
        if self.total is None or self.done <= 0 or elapsed <= 0:
            return None
        return max(0.0, (self.total - self.done) * elapsed / self.done)

    def status(self) -> str:
        """``"400/1000 resamples (40%), 85.2/s, elapsed 4.7s, ETA 7.0s"``."""
        elapsed = self.clock() - self.start
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            text = f"{self.done:,}/{self.total:,}{unit} ({100.0 * self.done / self.total:.0f}%)"
        else:
            text = f"{self.done:,}{unit}"
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text += f", {rate:.1f}/s, elapsed {format_seconds(elapsed)}"
        if self.total:
            text += f", ETA {format_seconds(self.eta())}"
        return text

    def update(self, n: int = 1) -> None:
        """``n`` more units done: the bar moves, or a line is printed when the interval has passed."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self.clock()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self.lines += 1
            say(f"{self.what}: {self.status()}", self.stream)

    def close(self, ok: bool = True) -> None:
        """End the step: close the bar, or (lines, after at least one interval line) say the time taken."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and ok and self.lines:
            say(f"{self.what}: done, {self.done:,}{' ' + self.unit if self.unit else ''} in "
                f"{format_seconds(self.clock() - self.start)}", self.stream)


def track(items: Iterable[Any], what: str, total: Optional[int] = None, unit: str = "", *, enabled: bool = True,
          **kwargs: Any) -> Iterator[Any]:
    """``items`` one by one, reporting each as one unit through a :class:`Progress` (``total``
    default ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(what, total, unit, enabled=enabled, **kwargs) as p:
        for item in items:
            yield item
            p.update(1)


#: Steps between two refreshes of a training progress bar's loss and accuracy (:meth:`TrainProgress.due`).
BAR_REFRESH_STEPS = 10


class TrainProgress:
    """Step-by-step progress of a training run, for :func:`medclass.engine.train`.

    On a terminal (``bar``) :meth:`step` returns the progress bar's extra fields: images/s and
    the whole run's ETA (the bar itself shows the epoch's count and ETA). In a log it returns
    ``None`` and, every ``interval`` seconds (``train.log_interval``), prints one line::

        train: epoch 3/10 step 120/400 (global 920/4000)  loss 0.4123  acc 0.812  87.3 img/s  elapsed 2m10s  ETA 7m30s

    ETA of the run: the rest of this epoch plus the epochs after it, at the mean wall time of the
    epochs this invocation ran (validation and checkpoints included; before the first one ends,
    at the step rate of this epoch).

    Args:
        steps_per_epoch: optimisation steps per epoch.
        images_per_step: images one step trains on over all processes (the global batch).
        run_start: ``clock()`` time the training call began (elapsed counts from it).
        bar: report for a progress bar (a terminal) instead of lines.
        interval: seconds between lines.
        enabled: ``False``: nothing at all (DDP ranks other than 0, ``train.progress`` off).
        stream: where lines go (default ``sys.stderr``).
        clock: the time source, ``time.time`` by default (the trainer's clock).
    """

    def __init__(self, steps_per_epoch: int, images_per_step: int, run_start: float, *, bar: bool,
                 interval: float = DEFAULT_LOG_INTERVAL, enabled: bool = True, stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.steps_per_epoch, self.images_per_step = max(1, steps_per_epoch), images_per_step
        self.run_start, self.bar, self.interval, self.enabled = run_start, bar, float(interval), enabled
        self.stream, self.clock = stream, clock
        self.epoch, self.epochs, self.epoch_start = 0, 0, run_start
        self.epoch_walls: list[float] = []
        self.last_line = clock()
        self.lines: list[str] = []  # the lines printed (for the run's record and tests)

    def start_epoch(self, epoch: int, epochs: int, epoch_walls: Iterable[float] = ()) -> None:
        """Epoch ``epoch`` of ``epochs`` (the current plan) begins; ``epoch_walls``: wall seconds of
        the epochs this invocation ran so far."""
        self.epoch, self.epochs, self.epoch_start = epoch, epochs, self.clock()
        self.epoch_walls = list(epoch_walls)

    def eta(self, steps_done: int) -> tuple[Optional[float], Optional[float]]:
        """(seconds left in this epoch's training steps, seconds left in the run) after
        ``steps_done`` steps of the epoch; ``None`` before any step."""
        if steps_done <= 0:
            return None, None
        now = self.clock()
        step_s = (now - self.epoch_start) / steps_done
        epoch_left = (self.steps_per_epoch - steps_done) * step_s
        later = max(0, self.epochs - self.epoch)
        if self.epoch_walls:
            per_epoch = sum(self.epoch_walls) / len(self.epoch_walls)
            this_left = max(epoch_left, per_epoch - (now - self.epoch_start))
        else:
            per_epoch, this_left = self.steps_per_epoch * step_s, epoch_left
        return epoch_left, this_left + later * per_epoch

    def due(self, steps_done: int) -> bool:
        """Whether :meth:`step` would show something after ``steps_done`` steps: on a bar every
        :data:`BAR_REFRESH_STEPS` steps (and the first), in a log when ``interval`` seconds have passed
        since the last line. The trainer reads the loss back from the device only then (one device
        sync per logging interval, not per step)."""
        if not self.enabled:
            return False
        if self.bar:
            return steps_done == 1 or steps_done % BAR_REFRESH_STEPS == 0
        return self.clock() - self.last_line >= self.interval

    def step(self, steps_done: int, images_seen: int, loss: float, accuracy: float) -> Optional[dict[str, str]]:
        """After ``steps_done`` steps (``images_seen`` images on this process) of the epoch, with the
        epoch's mean ``loss`` and ``accuracy`` so far: the bar's extra fields, or ``None`` (a line
        was printed when the interval had passed)."""
        if not self.enabled:
            return None
        now = self.clock()
        elapsed_epoch = max(now - self.epoch_start, 1e-9)
        img_s = steps_done * self.images_per_step / elapsed_epoch
        _, run_eta = self.eta(steps_done)
        if self.bar:
            return {"img/s": f"{img_s:.1f}", "run ETA": format_seconds(run_eta)}
        if now - self.last_line >= self.interval:
            self.last_line = now
            done = (self.epoch - 1) * self.steps_per_epoch + steps_done
            line = (f"train: epoch {self.epoch}/{self.epochs} step {steps_done}/{self.steps_per_epoch} "
                    f"(global {done}/{self.epochs * self.steps_per_epoch})  loss {loss:.4f}  acc {accuracy:.3f}  "
                    f"{img_s:.1f} img/s  elapsed {format_seconds(now - self.run_start)}  "
                    f"ETA {format_seconds(run_eta)}")
            self.lines.append(line)
            say(line, self.stream)
        return None
