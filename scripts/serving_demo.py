#!/usr/bin/env python
"""Screenshots of the served web page and model card for a real run (results/serving/).

Starts ``medclass serve RUN`` on a free loopback port, uploads IMAGE in headless Chromium
(Playwright driving the system's chromium), saves ``page.png`` (prediction, probabilities,
Grad-CAM overlay) and ``model-card.png``, and writes the API's JSON answer for the same file to
``predict.json`` (without the overlay's base64).

    python scripts/serving_demo.py runs/chest-ct-64 ../shared/data/chest-ct/test/adenocarcinoma/000108.png results/serving
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright


def main(run: str, image: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "medclass", "serve", run, "--port", str(port), "--log-level", "warning"])
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        path = Path(image)
        answer = httpx.post(base + "/predict", files={"file": (path.name, path.read_bytes())}).json()
        (out_dir / "predict.json").write_text(json.dumps(answer, indent=1) + "\n")
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(base + "/")
            page.set_input_files("#file", str(path))
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
            print("page shows:", page.inner_text("#predicted"), "| API:", answer["predicted"])
            page.screenshot(path=str(out_dir / "page.png"), full_page=True)
            page.goto(base + "/model-card")
            page.screenshot(path=str(out_dir / "model-card.png"), full_page=True)
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)


if __name__ == "__main__":
    main(*sys.argv[1:4])
