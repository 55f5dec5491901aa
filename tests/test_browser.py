"""The headless-Chromium check used for HTML reports (tests/browser.py): a page with images
renders to a non-blank screenshot with every image loaded, and a broken image is reported."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from browser import is_blank, render, screenshot_stats  # noqa: E402

# the `chromium` fixture (tests/conftest.py) skips without Chromium and marks its tests `browser`


def _figure_png(seed: int) -> bytes:
    """A small matplotlib line plot as PNG bytes."""
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(np.cumsum(rng.normal(size=50)), color="tab:blue")
    ax.set_title(f"figure {seed}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _page(title: str, *srcs: str) -> str:
    imgs = "\n".join(f'<p><img alt="figure {i}" src="{s}"></p>' for i, s in enumerate(srcs))
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title></head>\n"
            f"<body style='font-family: sans-serif'><h1>{title}</h1>\n{imgs}\n</body></html>\n")


def test_blank_check_without_browser(tmp_path: Path):
    white = tmp_path / "white.png"
    Image.new("RGB", (300, 200), "white").save(white)
    figure = tmp_path / "figure.png"
    figure.write_bytes(_figure_png(0))
    assert is_blank(white)
    assert screenshot_stats(white)["colours"] == 1
    assert not is_blank(figure)


def test_self_contained_page_renders_with_all_images(tmp_path: Path, chromium: str):
    page = tmp_path / "report.html"
    page.write_text(_page("Report", _data_uri(_figure_png(1)), _data_uri(_figure_png(2))), encoding="utf-8")
    out = render(page, tmp_path / "shot.png", width=1000, height=1200)
    assert (out["loaded"], out["total"]) == (2, 2)
    assert out["all_images_loaded"] and out["broken"] == []
    assert not out["blank"], out
    assert (out["width"], out["height"]) == (1000, 1200)
    assert out["colours"] > 50 and out["non_white_fraction"] > 0.003


def test_broken_image_is_reported(tmp_path: Path, chromium: str):
    bad = "data:image/png;base64," + base64.b64encode(b"this is not a PNG file").decode("ascii")
    page = tmp_path / "broken.html"
    page.write_text(_page("Broken", _data_uri(_figure_png(3)), bad), encoding="utf-8")
    out = render(page, tmp_path / "shot.png", width=1000, height=1200)
    assert (out["loaded"], out["total"]) == (1, 2)
    assert not out["all_images_loaded"]
    assert out["broken"] == [bad[:120]]


def test_relative_image_paths_resolve_from_the_page_folder(tmp_path: Path, chromium: str):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "roc.png").write_bytes(_figure_png(4))
    page = tmp_path / "report.html"
    page.write_text(_page("Relative", "figures/roc.png", "figures/missing.png"), encoding="utf-8")
    out = render(page, tmp_path / "shots" / "shot.png", width=800, height=900)
    assert (out["loaded"], out["total"]) == (1, 2)
    assert out["broken"] == ["figures/missing.png"]
    assert not out["blank"]


def test_empty_page_is_blank(tmp_path: Path, chromium: str):
    page = tmp_path / "empty.html"
    page.write_text("<!DOCTYPE html><html><head><title>empty</title></head><body></body></html>", encoding="utf-8")
    out = render(page, tmp_path / "shot.png", width=600, height=400)
    assert out["blank"] and (out["loaded"], out["total"]) == (0, 0) and out["all_images_loaded"]
