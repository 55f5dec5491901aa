"""Headless Chromium for tests: screenshot an HTML file and check that every image loaded.

No Playwright or Selenium: Chromium's own command line (``--headless``, ``--screenshot``,
``--dump-dom``; https://developer.chrome.com/docs/chromium/headless) is run twice:

1. ``--screenshot`` of the HTML file as it is;
2. ``--dump-dom`` of a temporary copy with a small script injected (and a ``<base href>`` to the
   original folder, so relative image paths resolve as in the original). On the window ``load``
   event (after waiting for any image still pending) the script writes into a hidden
   ``<div id="img-check">`` the number of ``<img>`` elements with ``complete && naturalWidth > 0``
   (decoded: a broken or missing image has ``naturalWidth == 0``), the total, and the sources of
   the broken ones; the dumped DOM is parsed for it. ``--virtual-time-budget`` lets the page's
   scripts run before the dump (virtual time does not advance while fetches are pending).

A screenshot is "blank" when it has too few distinct colours or too few non-white pixels
(:func:`screenshot_stats`, Pillow).

Chromium on Debian: ``apt-get install --no-install-recommends chromium``. Override the binary
with the environment variable ``CHROMIUM``.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Union

__all__ = ["BrowserError", "find_chromium", "render", "screenshot_stats", "is_blank"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
               "chrome-headless-shell", "headless_shell")

_CHECK_SCRIPT = """<script>
(function () {
  function report() {
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
    var d = document.createElement("div");
    d.id = "img-check";
    d.style.display = "none";
    d.textContent = JSON.stringify({
      loaded: imgs.length - broken.length,
      total: imgs.length,
      broken: broken.map(function (i) { return (i.getAttribute("src") || "").slice(0, 120); })
    });
    (document.body || document.documentElement).appendChild(d);
  }
  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.images, function (i) { i.loading = "eager"; });
  });
  window.addEventListener("load", function () {
    var pending = Array.prototype.filter.call(document.images, function (i) { return !i.complete; });
    Promise.all(pending.map(function (i) {
      return new Promise(function (done) {
        i.addEventListener("load", done); i.addEventListener("error", done);
      });
    })).then(report);
  });
})();
</script>"""


class BrowserError(RuntimeError):
    """Chromium failed: non-zero exit, timeout, no screenshot, or no image report in the DOM."""


@functools.lru_cache(maxsize=None)
def find_chromium() -> Optional[str]:
    """Path of a Chromium/Chrome binary that runs (``--version`` succeeds), or None.

    ``$CHROMIUM`` first, then ``chromium``, ``chromium-browser``, ``google-chrome``, ... on PATH.
    (Ubuntu's ``chromium-browser`` may be a stub asking for snap; it fails ``--version``.)
    """
    names = ([os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else []) + list(_CANDIDATES)
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0 and re.search(r"\d+\.\d+", r.stdout):
            return path
    return None


def _chromium_command(binary: str, profile: str, width: int, height: int) -> list[str]:
    return [
        binary,
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",  # small /dev/shm in containers
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--hide-scrollbars",
        "--mute-audio",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--virtual-time-budget=10000",
        "--run-all-compositor-stages-before-draw",
    ]


def _run(cmd: list[str], timeout: float, attempts: int = 2) -> subprocess.CompletedProcess:
    """Run headless Chromium; a run that hangs (headless ``--screenshot`` with a virtual time budget
    now and then never exits: a fresh-clone CI run of this project hit it once) is killed
    after ``timeout`` seconds and started again, ``attempts`` times in all; then BrowserError."""
    for attempt in range(1, attempts + 1):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            break
        except subprocess.TimeoutExpired as e:
            if attempt == attempts:
                raise BrowserError(f"chromium timed out after {timeout} s, {attempts} times: {' '.join(cmd)}") from e
    if r.returncode != 0:
        raise BrowserError(f"chromium exited with {r.returncode}: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r


def _with_check_script(source: str, base_dir: Path) -> str:
    """The HTML with ``<base href=base_dir/>`` and the image-check script at the start of
    ``<head>`` (or of ``<html>``, or after the doctype, or at the very start)."""
    inject = f'<base href="{html.escape(base_dir.as_uri() + "/")}">' + _CHECK_SCRIPT
    for pattern in (r"<head\b[^>]*>", r"<html\b[^>]*>", r"<!doctype[^>]*>"):
        m = re.search(pattern, source, flags=re.IGNORECASE)
        if m:
            return source[: m.end()] + inject + source[m.end():]
    return inject + source


def screenshot_stats(png_path: Union[str, Path]) -> dict:
    """``{"width", "height", "colours": distinct RGB colours, "non_white_fraction": share of
    pixels with some channel below 245}`` of a PNG (Pillow)."""
    import numpy as np
    from PIL import Image

    with Image.open(png_path) as im:
        rgb = im.convert("RGB")
    colours = rgb.getcolors(maxcolors=1 << 24)
    arr = np.asarray(rgb)
    return {
        "width": rgb.width,
        "height": rgb.height,
        "colours": len(colours) if colours is not None else 1 << 24,
        "non_white_fraction": float((arr.min(axis=2) < 245).mean()) if arr.size else 0.0,
    }


def is_blank(png_path: Union[str, Path], min_colours: int = 16, min_non_white: float = 0.001) -> bool:
    """True when the screenshot has fewer than ``min_colours`` distinct colours or less than
    ``min_non_white`` of its pixels not (near) white: an empty, failed or unstyled render."""
    s = screenshot_stats(png_path)
    return s["colours"] < min_colours or s["non_white_fraction"] < min_non_white


def render(
    html_path: Union[str, Path],
    screenshot_path: Union[str, Path],
    width: int = 1280,
    height: int = 2000,
    timeout: float = 60,
) -> dict:
    """Screenshot ``html_path`` in headless Chromium and check its images.

    Returns:
        ``{"screenshot": Path, "loaded": int, "total": int, "all_images_loaded": bool,
        "broken": [src (first 120 chars), ...], "blank": bool, **screenshot_stats}``.

    Raises:
        FileNotFoundError: no Chromium (see :func:`find_chromium`) or no such HTML file.
        BrowserError: Chromium failed or timed out, wrote no screenshot, or the image report is
            missing from the dumped DOM (e.g. the page's scripts did not run).
    """
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary found (Debian: apt-get install chromium; or set $CHROMIUM)")
    page = Path(html_path).resolve()
    if not page.is_file():
        raise FileNotFoundError(page)
    shot = Path(screenshot_path).resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="medclass-chromium-") as tmp:
        tmp_dir = Path(tmp)
        _run(_chromium_command(binary, str(tmp_dir / "profile-shot"), width, height)
             + [f"--screenshot={shot}", page.as_uri()], timeout)
        if not shot.is_file() or shot.stat().st_size == 0:
            raise BrowserError(f"chromium wrote no screenshot to {shot}")
        probe = tmp_dir / "probe.html"
        probe.write_text(_with_check_script(page.read_text(encoding="utf-8"), page.parent), encoding="utf-8")
        dom = _run(_chromium_command(binary, str(tmp_dir / "profile-dom"), width, height)
                   + ["--dump-dom", probe.as_uri()], timeout).stdout
    m = re.search(r'<div id="img-check"[^>]*>(.*?)</div>', dom, flags=re.DOTALL)
    if m is None:
        raise BrowserError(f"no image report in the dumped DOM of {page} (did the page's scripts run?)")
    report = json.loads(html.unescape(m.group(1)))
    stats = screenshot_stats(shot)
    return {
        "screenshot": shot,
        "loaded": int(report["loaded"]),
        "total": int(report["total"]),
        "all_images_loaded": report["loaded"] == report["total"],
        "broken": list(report["broken"]),
        "blank": is_blank(shot),
        **stats,
    }
