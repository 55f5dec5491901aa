"""One decoded image -> model input function (:func:`medclass.data.pixels.to_model_input`) behind every
reader: files (:func:`read_image`), DICOM (:func:`read_dicom`), MedMNIST ``.npz`` items
(:func:`load_sample`), uploads (:func:`decode_upload`) and the decode cache (:func:`decode_split`).

Each image goes through every path, for both resize rules, and must give the same uint8 array; the
``squash`` rule must stay bit-identical to medclass's former code (Pillow bilinear to the square).
"""

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from helpers import INTERCEPT, png_bytes, write_dicom
from medclass.core.config import ConfigError, DataConfig, RunConfig
from medclass.data.dataset import CACHE_VERSION, cache_key, decode_split, file_digest, load_sample
from medclass.data.dicom import read_dicom, window_to_uint8
from medclass.data.io import read_image
from medclass.data.pixels import ImageReadError, to_channels, to_model_input
from medclass.data.sources import NPZ_SEP, Sample
from medclass.serving.uploads import decode_upload

RULES = ("squash", "pad")
#: (channels, resize) of the every-path tests
CASES = [(c, r) for c in (1, 3) for r in RULES]


def former_squash(img: Image.Image, channels: int, size) -> np.ndarray:
    """medclass's code before to_model_input, written out: channels, then Pillow bilinear squash."""
    img = to_channels(img, channels)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _npz_item(tmp_path, arr: np.ndarray) -> str:
    """``arr`` as item 0 of a MedMNIST-style ``.npz`` (``train_images``), as load_sample names it."""
    path = tmp_path / f"one-{arr.dtype}-{arr.ndim}.npz"
    np.savez(path, train_images=arr[None], train_labels=np.zeros((1, 1), dtype=np.uint8))
    return f"{path}{NPZ_SEP}train{NPZ_SEP}0"


def _all_paths(tmp_path, img: Image.Image, channels: int, size: int, resize: str, upload: bool = True):
    """The same Pillow image through read_image (a PNG file), load_sample (file and npz item),
    decode_split and decode_upload; returns {path name: uint8 (H, W, C)}."""
    data = png_bytes(img)
    png = tmp_path / f"img-{img.mode.replace(';', '')}.png"
    png.write_bytes(data)
    item = _npz_item(tmp_path, np.asarray(img))
    out = {
        "to_model_input": to_model_input(img, channels, size, resize),
        "read_image": read_image(png, channels, size, resize=resize),
        "load_sample": load_sample(str(png), channels, size, resize=resize),
        "load_sample npz": load_sample(item, channels, size, resize=resize),
    }
    split = decode_split([Sample(str(png), 0), Sample(item, 0)], channels, size, progress=False,
                         cache_dir=tmp_path / "cache", resize=resize)
    out["decode_split"] = split.images[0].numpy().transpose(1, 2, 0)
    out["decode_split npz"] = split.images[1].numpy().transpose(1, 2, 0)
    if upload:
        out["decode_upload"] = decode_upload(data, png.name, channels, size, resize=resize)
    return out


def _assert_same(arrays: dict, img: Image.Image, channels: int, size: int, resize: str):
    """Every array equals the first (to_model_input's), uint8 (size, size, channels); with "squash"
    it is also what medclass's former code gave for ``img``."""
    first = next(iter(arrays.values()))
    assert first.dtype == np.uint8 and first.shape == (size, size, channels)
    for name, arr in arrays.items():
        assert arr.dtype == np.uint8 and arr.shape == first.shape, name
        assert np.array_equal(arr, first), f"{name} differs from to_model_input"
    if resize == "squash":
        assert np.array_equal(first, former_squash(img, channels, size))


@pytest.mark.parametrize("channels, resize", CASES)
def test_real_chest_ct_png_is_the_same_on_every_path(tmp_path, chest_ct, channels, resize):
    png = sorted((chest_ct / "test" / "adenocarcinoma").glob("*.png"))[0]
    with Image.open(png) as img:
        img.load()
    assert img.mode == "RGBA" and img.width != img.height  # the set's usual (opaque) RGBA, not square
    arrays = _all_paths(tmp_path, img, channels, 64, resize)
    arrays["the file itself"] = read_image(png, channels, 64, resize=resize)
    _assert_same(arrays, img, channels, 64, resize)


@pytest.mark.parametrize("channels, resize", CASES)
def test_rgba_and_16_bit_images_are_the_same_on_every_path(tmp_path, channels, resize):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (30, 50, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(50) < 25, 255, 90)  # half translucent: composited over black
    deep = (rng.integers(0, 4096, (45, 27)) * 13).astype(np.uint16)  # 16-bit, min..max rescaled
    assert Image.fromarray(deep).mode == "I;16"
    for img, upload in ((Image.fromarray(rgba, "RGBA"), False), (Image.fromarray(deep), True)):
        # decode_upload refuses translucent pixels (422 transparency): that path is checked on the 16-bit image
        sub = tmp_path / img.mode.replace(";", "")
        sub.mkdir()
        _assert_same(_all_paths(sub, img, channels, 32, resize, upload=upload), img, channels, 32, resize)


@pytest.mark.parametrize("channels, resize", CASES)
def test_dicom_is_the_same_on_every_path(tmp_path, channels, resize):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 2000, (40, 24)).astype(np.int16)
    dcm = write_dicom(tmp_path / "ct.dcm", stored)
    window = (40.0, 400.0)
    grey = window_to_uint8(stored.astype(np.float64) + INTERCEPT, *window)
    windowed = Image.fromarray(grey, "L")
    bare = tmp_path / "IM000001"  # no extension: found by the DICM marker
    bare.write_bytes(dcm.read_bytes())
    split = decode_split([Sample(str(dcm), 0)], channels, 32, progress=False, cache_dir=tmp_path / "c",
                         dicom_window=window, resize=resize)
    arrays = {
        "to_model_input": to_model_input(windowed, channels, 32, resize),
        "read_dicom": read_dicom(dcm, channels, 32, window, resize=resize),
        "read_dicom bytes": read_dicom(dcm.read_bytes(), channels, 32, window, resize=resize),
        "read_image": read_image(dcm, channels, 32, window, resize=resize),
        "read_image no extension": read_image(bare, channels, 32, window, resize=resize),
        "load_sample": load_sample(str(dcm), channels, 32, window, resize=resize),
        "decode_split": split.images[0].numpy().transpose(1, 2, 0),
        "decode_upload": decode_upload(dcm.read_bytes(), "ct.dcm", channels, 32, window, resize=resize),
    }
    _assert_same(arrays, windowed, channels, 32, resize)


def test_pad_keeps_the_aspect_ratio_and_pads_with_black():
    wide = Image.new("L", (40, 20), 255)  # 2:1 -> 20 x 10 in the middle rows of a 20 x 20 square
    out = to_model_input(wide, 1, 20, "pad")[:, :, 0]
    assert out.shape == (20, 20)
    assert (out[5:15] == 255).all() and (out[:5] == 0).all() and (out[15:] == 0).all()
    tall = to_model_input(Image.new("RGB", (20, 40), (255, 255, 255)), 3, 20, "pad")
    assert (tall[:, 5:15] == 255).all() and (tall[:, :5] == 0).all() and (tall[:, 15:] == 0).all()
    # squash fills the square instead
    assert (to_model_input(wide, 1, 20, "squash") == 255).all()
    # odd padding: 30 x 20 -> 16 x 11 (round(20 * 16 / 30) = 11): 2 black rows on top, 3 below
    odd = to_model_input(Image.new("L", (30, 20), 255), 1, 16, "pad")[:, :, 0]
    assert (odd[2:13] == 255).all() and (odd[:2] == 0).all() and (odd[13:] == 0).all()
    # a square image, or no size, is only converted: both rules agree
    sq = Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 24), dtype=np.uint8))
    assert np.array_equal(to_model_input(sq, 1, 12, "pad"), to_model_input(sq, 1, 12, "squash"))
    assert np.array_equal(to_model_input(wide, 3, None, "pad"), np.asarray(wide.convert("RGB")))
    # a 1-pixel sliver keeps at least one row
    sliver = to_model_input(Image.new("L", (200, 1), 255), 1, 16, "pad")[:, :, 0]
    assert (sliver[7] == 255).all() and sliver.sum() == 16 * 255


def test_an_unknown_resize_rule_is_refused():
    with pytest.raises(ConfigError, match=r"data\.resize must be one of squash \| pad, got 'crop'"):
        DataConfig(resize="crop")
    cfg = RunConfig()
    with pytest.raises(ConfigError, match=r"data\.resize"):
        cfg.set("data.resize", "letterbox")
    with pytest.raises(ConfigError, match=r"data\.resize"):
        RunConfig.from_dict({"data": {"resize": "Pad"}})
    assert cfg.data.resize == "squash"
    cfg.set("data.resize", "pad")
    assert cfg.data.resize == "pad" and RunConfig.from_dict(cfg.to_dict()).data.resize == "pad"
    # the functions: the caller's mistake is a ValueError, not an unreadable image
    img = Image.new("L", (4, 4))
    with pytest.raises(ValueError, match="resize must be one of squash | pad"):
        to_model_input(img, 1, 2, "crop")
    with pytest.raises(ValueError, match="resize") as e:
        read_image("/no/such/file.png", 1, 2, resize="crop")
    assert not isinstance(e.value, ImageReadError)
    with pytest.raises(ValueError, match="resize"):
        decode_upload(png_bytes(img), "a.png", 1, 2, resize="crop")
    with pytest.raises(ValueError, match="resize"):
        decode_split([], 1, 2, progress=False, resize="crop")


def test_cache_key_follows_the_resize_rule(tmp_path):
    files = []
    for i in range(2):
        p = tmp_path / f"{i}.png"
        Image.new("L", (30, 20), 60 * i).save(p)
        files.append(Sample(str(p), i))
    squash = cache_key(files, 1, 16)
    assert cache_key(files, 1, 16, resize="squash") == squash
    assert cache_key(files, 1, 16, resize="pad") != squash
    # the squash key is the one of earlier medclass versions: existing cache entries stay valid
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps({"version": CACHE_VERSION, "channels": 1, "size": 16,
                         "resize": "pillow-bilinear-squash"}).encode())
    for s in files:
        h.update(file_digest(s.path).encode() + b"\n")
    assert squash == h.hexdigest()
    # a pad run does not reuse the squash entry
    cache = tmp_path / "cache"
    a = decode_split(files, 1, 16, progress=False, cache_dir=cache)
    b = decode_split(files, 1, 16, progress=False, cache_dir=cache, resize="pad")
    again = decode_split(files, 1, 16, progress=False, cache_dir=cache, resize="pad")
    assert not a.cache_hit and not b.cache_hit and again.cache_hit
    assert a.cache_path != b.cache_path == again.cache_path
    assert json.loads(b.cache_path.with_suffix(".json").read_text())["resize"] == "pad"
    assert (a.images[1] == 60).all()
    assert (b.images[1, 0, :2] == 0).all() and (b.images[1, 0, 2:13] == 60).all()
    assert np.array_equal(b.images.numpy(), again.images.numpy())


def test_decode_upload_png_and_jpeg_follow_the_rule():
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 36, 3), dtype=np.uint8))
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        decoded = Image.open(io.BytesIO(buf.getvalue()))
        decoded.load()
        for resize in RULES:
            got = decode_upload(buf.getvalue(), f"x.{fmt.lower()}", 3, 24, resize=resize)
            assert np.array_equal(got, to_model_input(decoded, 3, 24, resize)), (fmt, resize)
