"""Untrusted uploads (medclass.serving.uploads): every kind of bad input is a clear UploadError
(status code, code, a message naming the file); good files decode exactly as read_image does.

Real images come from ../shared/data (chest-ct PNG/JPEG, brain MRI JPEG); DICOM files are written
here from a real chest CT PNG with tests/helpers.py's write_dicom, as tests/test_dicom.py does.
"""

import io
import struct
import sys
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile
from pydicom.uid import BasicTextSRStorage, SecondaryCaptureImageStorage

from medclass.data.dicom import DicomReadError, read_dicom
from medclass.data.io import read_image
from medclass.serving.uploads import (
    UploadError,
    UploadLimits,
    check_filename,
    decode_upload,
    read_limited,
    sniff_format,
)

from helpers import SHARED_DATA, bomb_png, encoded, need, png_bytes, stored_from_png, write_dicom

CT = SHARED_DATA / "chest-ct"
MRI = SHARED_DATA / "brain-tumor-mri-yn"


def shared(folder, pattern, mode=None, n=1):
    need(folder)
    out = []
    for p in sorted(folder.rglob(pattern)):
        if mode is None or Image.open(p).mode == mode:
            out.append(p)
            if len(out) == n:
                return out
    pytest.skip(f"no {pattern} ({mode}) in {folder}")


def ct_stored(size=64):
    return stored_from_png(shared(CT / "train", "*.png")[0], size)


def expect(data, name, status, code, **kw):
    kw.setdefault("channels", 3)
    kw.setdefault("size", 64)
    with pytest.raises(UploadError) as info:
        decode_upload(data, name, **kw)
    e = info.value
    assert (e.status_code, e.code) == (status, code), repr(e)
    assert name in e.message, e.message
    assert str(e) == e.message and e.as_dict() == {"code": code, "message": e.message}
    return e


@pytest.fixture(scope="module")
def ct_png():
    return shared(CT / "train", "*.png", mode="RGBA")[0].read_bytes()


@pytest.fixture(scope="module")
def mri_jpeg():
    return shared(MRI, "*.jpg", mode="L")[0].read_bytes()


# --- bad inputs: each kind asserts status, code and that the message names the file -------------


def test_empty():
    expect(b"", "scan.png", 400, "empty")


def test_over_max_bytes(ct_png):
    e = expect(ct_png, "scan.png", 413, "too_large", limits=UploadLimits(max_bytes=1000))
    assert "1000 bytes" in e.message
    expect(b"\x89PNG\r\n\x1a\n" + bytes(20 * 1024 * 1024), "big.png", 413, "too_large")  # the default 20 MiB


def test_plain_text():
    e = expect(b"patient 123: no findings\nsee attached\n", "notes.png", 415, "not_an_image")
    assert "plain text" in e.message and "PNG, JPEG or DICOM" in e.message


@pytest.mark.parametrize(
    "data, what",
    [
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "HTML"),
        (b'{"image": "aGVsbG8=", "id": 3}', "JSON"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "ZIP"),
    ],
    ids=["html", "json", "pdf", "zip"],
)
def test_documents_are_not_images(data, what):
    e = expect(data, "scan.jpg", 415, "not_an_image")
    assert what in e.message


@pytest.mark.parametrize("fmt, what", [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF"), ("WEBP", "WebP")])
def test_other_image_formats(fmt, what):
    data = encoded(Image.new("RGB", (32, 32), (10, 20, 30)), fmt)
    e = expect(data, "scan.png", 415, "unsupported_format")
    assert what in e.message and "convert" in e.message


def test_unknown_binary():
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    expect(data, "scan.png", 415, "not_an_image")


def test_truncated_png(ct_png):
    e = expect(ct_png[: len(ct_png) // 2], "cut.png", 400, "truncated")
    assert "complete file" in e.message
    expect(ct_png[:-12], "no-iend.png", 400, "truncated")  # the pixels are all there, the IEND chunk is not
    expect(ct_png[:40], "header-only.png", 400, "corrupt")  # cut inside the IHDR chunk's CRC


def test_truncated_jpeg(mri_jpeg):
    expect(mri_jpeg[: len(mri_jpeg) // 2], "cut.jpg", 400, "truncated")
    expect(mri_jpeg[:-2], "no-eoi.jpg", 400, "truncated")


def test_png_bad_crc_and_damaged_idat(ct_png):
    i = ct_png.find(b"IDAT")
    length = struct.unpack(">I", ct_png[i - 4 : i])[0]
    bad_crc = bytearray(ct_png)
    bad_crc[i + 4 + length] ^= 0xFF  # only the checksum: Pillow's load() alone would accept it
    e = expect(bytes(bad_crc), "crc.png", 400, "corrupt")
    assert "checksum" in e.message
    damaged = bytearray(ct_png)
    damaged[i + 200] ^= 0xFF
    expect(bytes(damaged), "idat.png", 400, "corrupt")


def test_decompression_bomb_is_refused_from_the_header():
    t0 = time.perf_counter()
    data = bomb_png(20_000, 20_000)  # 400 megapixels (a 400 MB L image) in ~50 KB
    assert len(data) < 500_000
    e = expect(data, "bomb.png", 413, "too_many_pixels")
    assert "20000 x 20000" in e.message
    # between our 40 MP and Pillow's own limit: still ours that decides
    expect(bomb_png(7_000, 7_000), "bomb2.png", 413, "too_many_pixels")
    assert time.perf_counter() - t0 < 3.0


def test_huge_side_and_too_small():
    expect(png_bytes(Image.new("L", (50_000, 1))), "strip.png", 413, "side_too_large")
    expect(png_bytes(Image.new("L", (2, 2))), "tiny.png", 422, "too_small")
    expect(png_bytes(Image.new("L", (64, 64))), "limits.png", 413, "too_many_pixels",
           limits=UploadLimits(max_pixels=1000))


def test_animated_png():
    frames = [Image.new("L", (32, 32), v) for v in (0, 128, 255)]
    data = png_bytes(frames[0], save_all=True, append_images=frames[1:])
    e = expect(data, "cine.png", 422, "multi_frame")
    assert "3 frames" in e.message


def test_transparency():
    rgba = Image.new("RGBA", (32, 32), (200, 10, 10, 255))
    rgba.putpixel((3, 3), (200, 10, 10, 0))
    e = expect(png_bytes(rgba), "rgba.png", 422, "transparency")
    assert "flatten" in e.message
    la = Image.new("LA", (32, 32), (120, 128))  # a 2-channel grey + alpha image, half transparent
    expect(png_bytes(la), "la.png", 422, "transparency")
    p = Image.new("P", (32, 32), 1)
    p.putpixel((0, 0), 0)
    expect(png_bytes(p, transparency=0), "palette.png", 422, "transparency")


def test_cmyk_jpeg():
    data = encoded(Image.new("CMYK", (32, 32), (0, 50, 100, 0)), "JPEG")
    e = expect(data, "print.jpg", 422, "unsupported_channels")
    assert "CMYK" in e.message


def test_dicom_without_pixel_data(tmp_path):
    f = write_dicom(tmp_path / "sr.dcm", None, sop=BasicTextSRStorage)  # a report: not an image
    e = expect(f.read_bytes(), "report.dcm", 422, "no_pixel_data")
    assert "no pixel data" in e.message


def test_multi_frame_dicom(tmp_path):
    stored = np.stack([ct_stored(32)] * 3)
    f = write_dicom(tmp_path / "vol.dcm", stored, frames=3)
    e = expect(f.read_bytes(), "volume.dcm", 422, "multi_frame")
    assert "3 frames" in e.message


def test_truncated_dicom(tmp_path):
    data = write_dicom(tmp_path / "ct.dcm", ct_stored(64)).read_bytes()
    e = expect(data[: len(data) // 2], "half.dcm", 400, "truncated")
    assert "truncated" in e.message
    for cut in (400, 300, 200):  # cut before the pixel data (inside an element, or between two)
        expect(data[:cut], "header.dcm", 400, "truncated")


def test_dicom_four_samples(tmp_path):
    f = write_dicom(tmp_path / "argb.dcm", np.zeros((16, 16, 4), np.uint8), photometric="ARGB", samples=4,
                    sop=SecondaryCaptureImageStorage)
    e = expect(f.read_bytes(), "argb.dcm", 422, "unsupported_channels")
    assert "SamplesPerPixel" in e.message


def test_dicom_too_many_pixels_before_decoding(tmp_path, monkeypatch):
    data = write_dicom(tmp_path / "ct.dcm", ct_stored(64)).read_bytes()
    from pydicom.dataset import Dataset

    def boom(self):
        raise AssertionError("pixel_array decoded despite the limit")

    monkeypatch.setattr(Dataset, "pixel_array", property(boom))
    expect(data, "big.dcm", 413, "too_many_pixels", limits=UploadLimits(max_pixels=1000))


def test_dicom_without_part10_header(tmp_path):
    data = write_dicom(tmp_path / "ct.dcm", ct_stored(16)).read_bytes()
    e = expect(data[132:], "raw.dcm", 415, "unsupported_format")  # starts with (0002,0000) UL
    assert "Part 10" in e.message


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd.png", "/abs/x.png", "a/b.png", "a\\b.png", "C:\\x\\y.png", "..\\x.png", "C:x.png", "..",
     "x\x00.png", "scan\n.png", "gnp.\u202eexe", "   ", "x" * 300 + ".png"],
    ids=["dotdot", "absolute", "subdir", "backslash", "windows", "dotdot-backslash", "drive", "parent", "nul",
         "newline", "bidi", "blank", "300-chars"],
)
def test_bad_filenames(name, ct_png):
    shown = repr(name if len(name) <= 60 else name[:60] + "...")
    with pytest.raises(UploadError) as info:
        decode_upload(ct_png, name, 3, 64)
    e = info.value
    assert (e.status_code, e.code) == (400, "bad_filename")
    assert shown in e.message, e.message
    with pytest.raises(UploadError):
        check_filename(name)


def test_check_filename_accepts_plain_names():
    assert check_filename(None) == "upload" and check_filename("") == "upload"
    for name in ("scan 01 (copy).png", "ñandú.JPG", "IM000001", "a.b.c.dcm", "x" * 255):
        assert check_filename(name) == name
    for limit in (10, UploadLimits(max_filename_chars=10)):
        with pytest.raises(UploadError):
            check_filename("x" * 20, limit)
    assert check_filename("x" * 10, UploadLimits(max_filename_chars=10)) == "x" * 10


def test_read_limited():
    class Counting(io.BytesIO):
        read_total = 0

        def read(self, n=-1):
            out = super().read(n)
            self.read_total += len(out)
            return out

    assert read_limited(io.BytesIO(b"x" * 1000), 1000) == b"x" * 1000
    stream = Counting(b"x" * (5 * 1024 * 1024))
    with pytest.raises(UploadError) as info:
        read_limited(stream, 100_000, name="huge.png", chunk_size=64 * 1024)
    assert (info.value.status_code, info.value.code) == (413, "too_large") and "huge.png" in info.value.message
    assert stream.read_total <= 100_001  # stopped at the limit, never read the rest
    assert read_limited(io.BytesIO(b""), 10) == b""


def test_limits_defaults_and_env():
    d = UploadLimits()
    assert (d.max_bytes, d.max_pixels, d.max_side, d.min_side, d.max_filename_chars) == (
        20 * 1024 * 1024, 40_000_000, 10_000, 8, 255)
    env = {"MEDCLASS_MAX_UPLOAD_BYTES": "1_000_000", "MEDCLASS_MAX_UPLOAD_PIXELS": "", "MEDCLASS_MIN_UPLOAD_SIDE": "16"}
    lim = UploadLimits.from_env(env, max_side=4000)
    assert (lim.max_bytes, lim.max_pixels, lim.max_side, lim.min_side) == (1_000_000, 40_000_000, 4000, 16)
    with pytest.raises(ValueError, match="MEDCLASS_MAX_UPLOAD_SIDE"):
        UploadLimits.from_env({"MEDCLASS_MAX_UPLOAD_SIDE": "big"})
    with pytest.raises(ValueError):
        UploadLimits(min_side=0)


def test_caller_mistakes_are_value_errors(ct_png):
    with pytest.raises(ValueError):
        decode_upload(ct_png, "x.png", 2, 64)
    with pytest.raises(ValueError):
        decode_upload(ct_png, "x.png", 3, 64, dicom_window=(40, 0))


def test_unexpected_errors_become_upload_errors(ct_png, monkeypatch):
    import medclass.serving.uploads as uploads

    def explode(img, channels, size, resize):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(uploads, "to_model_input", explode)
    expect(ct_png, "x.png", 422, "undecodable")

    def no_memory(img, channels, size, resize):
        raise MemoryError

    monkeypatch.setattr(uploads, "to_model_input", no_memory)
    expect(ct_png, "x.png", 413, "out_of_memory")


def test_truncated_files_refused_even_with_load_truncated_images_on(ct_png, mri_jpeg, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    expect(ct_png[: len(ct_png) // 2], "cut.png", 400, "truncated")
    expect(mri_jpeg[: len(mri_jpeg) // 2], "cut.jpg", 400, "truncated")


def test_global_pillow_and_warning_state_untouched(ct_png):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    for data in (bomb_png(20_000, 20_000), ct_png[:5000], ct_png):
        try:
            decode_upload(data, "x.png", 3, 32)
        except UploadError:
            pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == before


def test_mutated_files_never_escape_as_other_errors(tmp_path, ct_png, mri_jpeg):
    """Random byte flips, cuts and insertions in real files: a result or an UploadError, never
    anything else (which the service would turn into a 500)."""
    import random

    dcm = write_dicom(tmp_path / "ct.dcm", ct_stored(32)).read_bytes()
    rng = random.Random(6)
    outcomes = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values it meets
        for i in range(300):
            seed = bytearray(rng.choice([ct_png, mri_jpeg, dcm]))
            for _ in range(rng.randint(1, 6)):
                j = rng.randrange(len(seed))
                op = rng.random()
                if op < 0.6:
                    seed[j] = rng.randrange(256)
                elif op < 0.8:
                    del seed[j : j + rng.randint(1, 40)]
                else:
                    seed[j:j] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            try:
                out = decode_upload(bytes(seed), f"m{i}.bin", 3, 16)
                assert out.shape == (16, 16, 3)
                outcomes.add("ok")
            except UploadError as e:
                assert 400 <= e.status_code < 500 and f"m{i}.bin" in e.message
                outcomes.add(e.code)
    assert {"ok", "corrupt", "truncated"} <= outcomes


# --- good inputs: exactly read_image's array ------------------------------------------------------


def real_files():
    files = []
    for folder, pattern, mode in [(CT, "*.png", "RGBA"), (CT, "*.png", "RGB"), (CT, "*.png", "L"),
                                  (CT, "*.jpg", None), (MRI, "*.jpg", "L"), (MRI, "*.JPG", None)]:
        try:
            files += shared(folder, pattern, mode)
        except pytest.skip.Exception:
            pass
    if not files:
        pytest.skip("no shared data")
    return files


@pytest.mark.parametrize("channels, size", [(3, 224), (1, 64), (3, None)])
def test_real_images_decode_exactly_as_read_image(channels, size):
    for path in real_files():
        got = decode_upload(path.read_bytes(), path.name, channels, size)
        want = read_image(path, channels, size)
        assert got.dtype == np.uint8 and got.shape == want.shape, path
        np.testing.assert_array_equal(got, want, err_msg=str(path))
        if size is not None:
            assert got.shape == (size, size, channels)


def test_real_dicom_decodes_exactly_as_read_image(tmp_path):
    f = write_dicom(tmp_path / "ct.dcm", ct_stored(128))
    data = f.read_bytes()
    for window in (None, (-600, 1500)):
        got = decode_upload(data, "IM000001", 3, 96, dicom_window=window)
        np.testing.assert_array_equal(got, read_image(f, 3, 96, dicom_window=window))
    assert sniff_format(data) == "DICOM"


def test_read_dicom_reads_bytes_and_file_likes(tmp_path):
    f = write_dicom(tmp_path / "ct.dcm", ct_stored(32))
    want = read_dicom(f, 1)
    np.testing.assert_array_equal(read_dicom(f.read_bytes(), 1), want)
    with open(f, "rb") as fh:
        np.testing.assert_array_equal(read_dicom(fh, 1), want)
    with pytest.raises(DicomReadError) as info:
        read_dicom(b"", name="blank.dcm")
    assert info.value.kind == "empty" and "blank.dcm" in str(info.value)
    with pytest.raises(DicomReadError) as info:
        read_dicom(b"not dicom at all" * 20, name="x.dcm")
    assert info.value.kind == "not_dicom"


def test_sixteen_bit_png(tmp_path):
    base = np.asarray(Image.open(shared(CT / "train", "*.png")[0]).convert("L"), dtype=np.uint16)
    arr16 = base * 200 + 300  # 300..51300: a genuinely 16-bit range
    img = Image.fromarray(arr16)
    assert img.mode == "I;16"
    f = tmp_path / "grey16.png"
    img.save(f)
    assert Image.open(f).mode == "I;16"
    for size in (64, None):
        got = decode_upload(f.read_bytes(), f.name, 1, size)
        np.testing.assert_array_equal(got, read_image(f, 1, size))
    assert got.min() == 0 and got.max() == 255  # rescaled min..max


def test_opaque_alpha_and_misnamed_png_accepted(tmp_path, ct_png):
    la = Image.new("LA", (32, 32), (90, 255))
    f = tmp_path / "la.png"
    la.save(f)
    np.testing.assert_array_equal(decode_upload(f.read_bytes(), f.name, 3, 16), read_image(f, 3, 16))
    src = shared(CT / "train", "*.png", mode="RGBA")[0]  # RGBA, fully opaque, as 867 chest-ct files are
    got = decode_upload(ct_png, "scan.jpg", 3, 64)  # a PNG named .jpg: the bytes decide
    np.testing.assert_array_equal(got, read_image(src, 3, 64))
    good = decode_upload(ct_png, None, 1, None)  # no file name at all
    assert good.shape[2] == 1


def test_module_is_torch_free():
    import subprocess

    code = ("import sys; sys.modules['torch'] = None\n"
            "import medclass.serving.uploads, medclass.data.dicom\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    subprocess.run([sys.executable, "-c", code], check=True)
