"""Helpers shared by the benchmark scripts: hardware description, threads, timing, tables, JSON.

Not a test module and not part of the ``medclass`` package; the scripts import it as a sibling
(``python benchmarks/<script>.py`` puts ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

__all__ = [
    "cpu_model",
    "hardware_info",
    "run_metadata",
    "set_threads",
    "time_once",
    "median",
    "markdown_table",
    "write_json",
    "log",
    "matmul_gflops",
    "RunMonitor",
]


def log(msg: str) -> None:
    """Progress message on stderr (stdout carries only the result table)."""
    print(msg, file=sys.stderr, flush=True)


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> Optional[int]:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None when it cannot tell."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, phys, core = set(), None, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if core is not None:
                cores.add((phys, core))
            phys, core = None, None
        elif line.startswith("physical id"):
            phys = line.split(":", 1)[1].strip()
        elif line.startswith("core id"):
            core = line.split(":", 1)[1].strip()
    return len(cores) or None


def set_threads(threads: Optional[int]) -> int:
    """Set PyTorch's intra-op threads (when given) and return the number in use."""
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def hardware_info() -> dict[str, Any]:
    """CPU model, core counts, load, memory, library versions and the threads PyTorch uses."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    for name in ("numpy", "monai", "onnx", "onnxruntime", "onnxscript"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            pass
    return info


def run_metadata() -> dict[str, Any]:
    """What every result file starts with: the command line, the UTC date, the hardware."""
    return {
        "command": [sys.executable, *sys.argv],
        "argv": list(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware_info(),
    }


def time_once(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call of ``fn`` (CPU work is synchronous)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) < 1e-3:
            return f"{value:.1e}"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats and ints formatted for reading."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: os.PathLike | str, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Speed of a float32 ``n x n`` matmul in GFLOP/s with the current threads: a canary taken at
    the start and the end of a run; a large drop means the machine was busy."""
    a = torch.randn(n, n)
    a @ a
    seconds = time_once(lambda: [a @ a for _ in range(repeats)])
    return 2 * n**3 * repeats / seconds / 1e9


def _proc_stat_cpu() -> Optional[list[int]]:
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None


class RunMonitor:
    """How busy the machine was while a benchmark ran: this process' CPU time over wall time,
    the machine-wide busy and steal fractions (/proc/stat), load average, matmul canary."""

    def __init__(self) -> None:
        self.gflops_start = matmul_gflops()
        self.wall = time.perf_counter()
        self.times = os.times()
        self.stat = _proc_stat_cpu()

    def summary(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall
        times = os.times()
        cpu = (times.user - self.times.user) + (times.system - self.times.system)
        out: dict[str, Any] = {
            "wall_s": round(wall, 2),
            "process_cpu_s": round(cpu, 2),
            "process_cpu_per_wall": round(cpu / wall, 2) if wall > 0 else None,
            "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        }
        stat = _proc_stat_cpu()
        if self.stat is not None and stat is not None:
            delta = [b - a for a, b in zip(self.stat, stat)]
            total = sum(delta[:8]) or 1  # user nice system idle iowait irq softirq steal
            out["machine_busy_fraction"] = round(1 - (delta[3] + delta[4]) / total, 3)
            out["machine_steal_fraction"] = round(delta[7] / total, 3) if len(delta) > 7 else None
        out["matmul_gflops_start"] = round(self.gflops_start, 1)
        out["matmul_gflops_end"] = round(matmul_gflops(), 1)
        return out
