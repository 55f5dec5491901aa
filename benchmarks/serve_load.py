#!/usr/bin/env python
"""Bounded load test of ``medclass serve``: N concurrent clients on loopback, a fixed number of requests.

The script starts ``python -m medclass serve RUN`` on 127.0.0.1 (a free port) as a subprocess,
waits for ``GET /health``, sends ``--warmup`` untimed requests, then lets ``--clients`` threads,
each with its own keep-alive HTTP connection (httpx), send ``--requests`` ``POST /predict`` uploads
in all, taking the images of ``--images`` in turn. Each request has a ``--timeout``; a timeout, a
refused connection or any non-200 answer counts as an error. It reports requests/s (completed
requests / wall time of the timed phase), latency percentiles (p50, p90, p99, max, from the
client's side: upload, decoding, inference and answer) and errors, the server's peak RSS
(``VmHWM``), and exits with status 1 if there was any error (the target is none).

    python benchmarks/serve_load.py --run runs/chest-ct-64 --images ../shared/data/chest-ct/test \\
        --clients 8 --requests 400 --out benchmarks/results/serve_load.json

With ``--explain`` every request also asks for the Grad-CAM overlay (``explain=true``).
``--serve-file`` serves an exported file instead of the run's default (e.g.
``RUN/export/model.int8.onnx`` with ``--backend onnx``); ``--max-batch``/``--max-wait-ms`` set the
server's dynamic batching (``--max-batch 1``: none). ``--bombs N`` replaces the timed phase by N
decompression-heavy uploads sent at once (each a valid 16-bit greyscale PNG of
``--bomb-side`` x ``--bomb-side`` pixels, tens of KB on the wire, about 600 MB while it decodes at
6300 px) and reports the server's peak RSS: the decode memory budget must keep it bounded.

    python benchmarks/serve_load.py --run runs/chest-ct-64 --images ../shared/data/chest-ct/test \
        --clients 64 --requests 1280 --backend onnx --serve-file runs/chest-ct-64/export/model.int8.onnx
    python benchmarks/serve_load.py --run runs/chest-ct-64 --images ../shared/data/chest-ct/test --bombs 40
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, markdown_table, run_metadata, write_json  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), ``q`` in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _bomb_png(side: int) -> bytes:
    """A valid 16-bit greyscale PNG of ``side`` x ``side`` pixels, a ramp, compressed row by row
    (never held as an array): tens of KB that decode to ``2 * side**2`` bytes and more."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    comp = zlib.compressobj(9)
    row = b"\x00" + bytes(range(256)) * (2 * side // 256) + b"\x00" * (2 * side % 256)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    head = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _image_files(root: Path, limit: int) -> list[Path]:
    exts = {".png", ".jpg", ".jpeg", ".dcm"}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise SystemExit(f"no PNG/JPEG/DICOM images under {root}")
    step = max(1, len(files) // limit)
    return files[::step][:limit]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="run folder to serve")
    ap.add_argument("--images", type=Path, required=True, help="folder of images to upload")
    ap.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=400, help="timed requests in all")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    ap.add_argument("--explain", action="store_true", help="ask for the Grad-CAM overlay too")
    ap.add_argument("--max-images", type=int, default=64, help="distinct images to cycle through")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    ap.add_argument("--serve-file", type=Path, default=None, help="serve this exported file (e.g. model.int8.onnx) "
                    "instead of --run's default; --run still names the run")
    ap.add_argument("--max-batch", type=int, default=None, help="server's dynamic batching: most images per pass")
    ap.add_argument("--max-wait-ms", type=float, default=None, help="server's dynamic batching: longest wait")
    ap.add_argument("--bombs", type=int, default=0, help="send this many decompression-heavy uploads at once instead")
    ap.add_argument("--bomb-side", type=int, default=6300, help="side in pixels of the 16-bit PNG of --bombs")
    args = ap.parse_args()
    if args.clients < 1 or args.requests < 1:
        raise SystemExit("--clients and --requests must be >= 1")

    import httpx

    files = _image_files(args.images, args.max_images)
    payloads = [(p.name, p.read_bytes()) for p in files]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    target = args.serve_file if args.serve_file is not None else args.run
    cmd = [sys.executable, "-m", "medclass", "serve", str(target), "--host", "127.0.0.1", "--port", str(port),
           "--backend", args.backend, "--log-level", "warning"]
    if args.max_batch is not None:
        cmd += ["--max-batch", str(args.max_batch)]
    if args.max_wait_ms is not None:
        cmd += ["--max-wait-ms", str(args.max_wait_ms)]
    timed = [("bomb.png", _bomb_png(args.bomb_side))] if args.bombs else payloads
    log(f"starting: {' '.join(cmd)}")
    server = subprocess.Popen(cmd)
    try:
        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with status {server.returncode}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("the server did not answer /health within 120 s")
            time.sleep(0.25)
        health = httpx.get(f"{base}/health").json()
        url = f"{base}/predict" + ("?explain=true" if args.explain else "")

        with httpx.Client(timeout=args.timeout) as c:
            for i in range(args.warmup):
                name, data = payloads[i % len(payloads)]
                c.post(url, files={"file": (name, data)}).raise_for_status()

        lock = threading.Lock()
        next_index = [0]
        latencies: list[float] = []
        errors: list[dict[str, Any]] = []
        predicted: dict[str, int] = {}

        def client() -> None:
            with httpx.Client(timeout=args.timeout) as c:
                while True:
                    with lock:
                        i = next_index[0]
                        if i >= args.requests:
                            return
                        next_index[0] += 1
                    name, data = timed[i % len(timed)]
                    t0 = time.perf_counter()
                    try:
                        r = c.post(url, files={"file": (name, data)})
                        dt = time.perf_counter() - t0
                        ok = r.status_code == 200
                        detail = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                    except httpx.HTTPError as e:
                        dt, ok, detail = time.perf_counter() - t0, False, f"{type(e).__name__}: {e}"
                    with lock:
                        if ok:
                            latencies.append(dt)
                            cls = r.json()["predicted"]
                            predicted[cls] = predicted.get(cls, 0) + 1
                        else:
                            errors.append({"request": i, "file": name, "error": detail})

        if args.bombs:  # all at once, one connection each
            args.clients = args.requests = args.bombs
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t_start
        final_health = httpx.get(f"{base}/health").json()
        peak_rss = _peak_rss_mib(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    ms = [1000 * x for x in latencies]
    result = {
        **run_metadata(),
        "run": str(args.run),
        "backend": args.backend,
        "explain": args.explain,
        "model": {k: health.get(k) for k in ("model", "classes", "image_size", "channels")},
        "images": {"folder": str(args.images), "distinct": len(payloads),
                   "mean_bytes": round(statistics.mean(len(d) for _, d in payloads))},
        "clients": args.clients,
        "requests": args.requests,
        "completed": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:10],
        "wall_seconds": round(wall, 3),
        "requests_per_second": round(len(latencies) / wall, 2),
        "latency_ms": {k: round(v, 1) for k, v in {
            "p50": _percentile(ms, 50), "p90": _percentile(ms, 90), "p99": _percentile(ms, 99),
            "mean": statistics.mean(ms) if ms else float("nan"), "max": max(ms) if ms else float("nan")}.items()},
        "predicted_classes": predicted,
        "server_counters": {k: final_health.get(k) for k in ("predictions", "rejected", "busy", "timeouts", "failed")},
        "served": str(target),
        "batching": final_health.get("batching"),
        "bombs": {"n": args.bombs, "side": args.bomb_side} if args.bombs else None,
        "server_peak_rss_mib": round(peak_rss, 1) if peak_rss else None,
    }
    lat = result["latency_ms"]
    print(markdown_table(
        ["backend", "clients", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "server peak RSS MiB"],
        [[args.backend + (" + Grad-CAM" if args.explain else ""), args.clients, args.requests, len(errors),
          result["requests_per_second"], lat["p50"], lat["p90"], lat["p99"], lat["max"], result["server_peak_rss_mib"]]]))
    if args.out:
        write_json(args.out, result)
        log(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
