"""``data.intensity: auto`` (opt-in): per_image for greyscale images, fixed for colour ones,
chosen from the training images when training starts and recorded in the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import tiny_config
from medclass.core.config import ConfigError, DataConfig, RunConfig
from medclass.data import build_index, greyscale_content
from medclass.data.sources import Sample
from medclass.engine.intensity import resolve_intensity
from medclass.core.spec import read_spec


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(root, colour: bool, n: int = 8, mode: str = "RGB", ext: str = "png"):
    """Two classes of 24 x 24 images; grey content stored as RGB(A) unless ``colour``."""
    rng = np.random.default_rng(0)
    for cls, level in (("a", 70), ("b", 170)):
        for i in range(n):
            if colour:
                arr = np.clip(rng.normal(level, 30, (24, 24, 3)), 0, 255).astype(np.uint8)
                arr[..., 0] = np.clip(arr[..., 0].astype(int) + 60, 0, 255)  # reddish, like dermoscopy
            else:
                grey = np.clip(rng.normal(level, 30, (24, 24)), 0, 255).astype(np.uint8)
                arr = np.stack([grey] * (4 if mode == "RGBA" else 3), -1)
                if mode == "RGBA":
                    arr[..., 3] = 255
            _write(root / cls / f"{i}.{ext}", arr)
    return root


def _samples(root):
    return build_index(DataConfig(source=str(root))).splits["train"]


def test_greyscale_content_tells_grey_rgb_rgba_and_jpeg_from_colour(tmp_path):
    assert greyscale_content(_samples(_folder(tmp_path / "rgb", colour=False)), 3) is True
    assert greyscale_content(_samples(_folder(tmp_path / "rgba", colour=False, mode="RGBA")), 3) is True
    assert greyscale_content(_samples(_folder(tmp_path / "jpeg", colour=False, ext="jpg")), 3) is True  # chroma noise
    assert greyscale_content(_samples(_folder(tmp_path / "colour", colour=True)), 3) is False
    assert greyscale_content(_samples(_folder(tmp_path / "colour1", colour=True)), 1) is True  # the model sees grey
    broken = [Sample(str(tmp_path / "missing.png"), 0)]
    assert greyscale_content(broken, 3) is None


def test_resolve_intensity_picks_the_rule_and_says_why(tmp_path):
    grey, colour = _samples(_folder(tmp_path / "g", colour=False)), _samples(_folder(tmp_path / "c", colour=True))
    def auto():
        cfg = RunConfig()
        cfg.data.intensity = "auto"
        return cfg

    assert RunConfig().data.intensity == "fixed"  # the default: auto lost on two test splits (README)
    cfg = auto()
    logged = []
    assert "greyscale" in resolve_intensity(cfg, grey, logged.append) and cfg.data.intensity == "per_image"
    assert logged and "per_image" in logged[0]
    cfg = auto()
    assert "colour" in resolve_intensity(cfg, colour) and cfg.data.intensity == "fixed"
    cfg = auto()
    cfg.data.normalize = True  # a fixed mean/std given: kept
    assert "normalize" in resolve_intensity(cfg, grey) and cfg.data.intensity == "fixed"
    cfg = auto()
    cfg.model.pretrained = "imagenet"  # ImageNet weights expect ImageNet's normalisation
    assert "pretrained" in resolve_intensity(cfg, grey) and cfg.data.intensity == "fixed"
    cfg = RunConfig()
    cfg.data.intensity = "fixed"  # named in the config: kept, no reason
    assert resolve_intensity(cfg, grey) == "" and cfg.data.intensity == "fixed"
    cfg = auto()
    assert "could be read" in resolve_intensity(cfg, [Sample(str(tmp_path / "nope.png"), 0)])
    assert cfg.data.intensity == "fixed"


def test_auto_is_accepted_in_config_and_overrides(tmp_path):
    cfg = RunConfig()
    cfg.set("data.intensity", "per_image")
    cfg.set("data.intensity", "auto")
    assert cfg.data.intensity == "auto"
    with pytest.raises(ConfigError, match="auto | fixed | per_image"):
        cfg.set("data.intensity", "zscore")


def test_a_run_on_grey_images_records_the_rule_chosen(tmp_path):
    from medclass.engine import load_run, train

    data = _folder(tmp_path / "data", colour=False, n=8)
    cfg = tiny_config(data, epochs=1, max_steps_per_epoch=1)
    cfg.model.arch, cfg.model.cnn_widths = "custom_cnn", [8, 16]
    cfg.data.intensity = "auto"
    train(cfg, tmp_path / "run")
    assert RunConfig.load(tmp_path / "run" / "config.yaml").data.intensity == "per_image"
    assert read_spec(tmp_path / "run").intensity == "per_image"
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["intensity"] == "per_image" and "greyscale" in summary["intensity_reason"]
    assert load_run(tmp_path / "run").preprocess.intensity == "per_image"
    assert cfg.data.intensity == "auto"  # the caller's config is not changed
