"""DICOM reading: HU rescale, windows, MONOCHROME1, RGB, refusals, folders and the decode cache.

The DICOM files are written by the tests (tests/helpers.py's write_dicom) from real chest CT images of
../shared/data/chest-ct: greyscale 0..255 is mapped to stored values 0..2040 (int16) with
RescaleSlope 1 and RescaleIntercept -1024, i.e. -1024..1016 HU.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.uid import JPEGBaseline8Bit, JPEGLosslessSV1, SecondaryCaptureImageStorage

from medclass.core.config import DataConfig, RunConfig
from medclass.data import ImageReadError, build_index, decode_split, read_dicom, read_image
from medclass.data.dataset import cache_key
from medclass.data.dicom import window_to_uint8
from medclass.data.io import IMAGE_EXTENSIONS, is_image_file

from helpers import CHEST_CT, INTERCEPT, need, stored_from_png, write_dicom

CT = CHEST_CT


def ct_pngs(n, split="train", cls="normal"):
    need(CT)
    files = sorted(p for p in (CT / split / cls).iterdir() if p.suffix.lower() == ".png")
    return files[:n]


def expected(stored, center, width):
    """PS3.3 C.11.2.1.2.1 linear window, written out independently of medclass."""
    hu = stored.astype(np.float64) + INTERCEPT
    lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = ((hu - (center - 0.5)) / (width - 1) + 0.5) * 255
    y = np.where(hu <= lo, 0, np.where(hu > hi, 255, y))
    return np.rint(y).astype(np.uint8)


def test_dicom_extensions_are_picked_up_in_folders(tmp_path):
    assert {".dcm", ".dicom"} <= IMAGE_EXTENSIONS
    for name in ("a.dcm", "b.DCM", "c.dicom"):
        (tmp_path / name).write_bytes(b"x")
        assert is_image_file(tmp_path / name)


def test_hu_rescale_and_given_window(tmp_path):
    stored = stored_from_png(ct_pngs(1)[0])
    stored[0, 0] = 424  # -600 HU: the centre of the lung window -> grey 128
    stored[0, 1] = 0  # -1024 HU (air)
    stored[0, 2] = 2040  # +1016 HU (bone), above the lung window -> 255
    f = write_dicom(tmp_path / "ct.dcm", stored)
    out = read_dicom(f, channels=1, window=(-600, 1500))
    assert out.dtype == np.uint8 and out.shape == (*stored.shape, 1)
    # ((x - (c - 0.5)) / (w - 1) + 0.5) * 255 at x = -600: 127.585 -> 128; at x = -1024: 55.46 -> 55
    assert out[0, 0, 0] == 128 and out[0, 1, 0] == 55 and out[0, 2, 0] == 255
    np.testing.assert_array_equal(out[:, :, 0], expected(stored, -600, 1500))
    # read_image goes through read_dicom for .dcm, with the window passed down, 3 channels equal
    rgb = read_image(f, 3, dicom_window=[-600, 1500])
    assert rgb.shape == (*stored.shape, 3)
    np.testing.assert_array_equal(rgb[:, :, 1], out[:, :, 0])


def test_window_from_file_first_value_vs_given_window(tmp_path):
    stored = stored_from_png(ct_pngs(2)[1])
    f = write_dicom(tmp_path / "ct.dcm", stored, window=([40, -600], [400, 1500]))  # two views: the first is used
    from_file = read_dicom(f, 1)[:, :, 0]
    given = read_dicom(f, 1, window=(-600, 1500))[:, :, 0]
    np.testing.assert_array_equal(from_file, expected(stored, 40, 400))
    np.testing.assert_array_equal(given, expected(stored, -600, 1500))
    assert (from_file != given).mean() > 0.5  # mediastinal vs lung window: most pixels differ
    # no window anywhere: the image's own min..max
    g = write_dicom(tmp_path / "nowin.dcm", stored)
    own = read_dicom(g, 1)[:, :, 0].astype(np.float64)
    hu = stored.astype(np.float64)
    np.testing.assert_array_equal(own, np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255))


def test_monochrome1_is_inverted(tmp_path):
    stored = stored_from_png(ct_pngs(1)[0])
    m2 = read_dicom(write_dicom(tmp_path / "m2.dcm", stored), 1, window=(-600, 1500))
    m1 = read_dicom(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"), 1, window=(-600, 1500))
    np.testing.assert_array_equal(m1, 255 - m2)


def test_rgb_dicom_round_trips(tmp_path):
    rgb = np.asarray(Image.open(ct_pngs(1)[0]).convert("RGB"))
    f = write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", sop=SecondaryCaptureImageStorage)
    np.testing.assert_array_equal(read_dicom(f, 3), rgb)
    np.testing.assert_array_equal(read_dicom(f, 3, window=(-600, 1500)), rgb)  # colour is never windowed
    assert read_dicom(f, 1, size=32).shape == (32, 32, 1)


def test_resize_matches_pillow_bilinear(tmp_path):
    stored = stored_from_png(ct_pngs(1)[0])
    f = write_dicom(tmp_path / "ct.dcm", stored)
    full = read_dicom(f, 1, window=(-600, 1500))[:, :, 0]
    small = read_dicom(f, 1, size=48, window=(-600, 1500))
    ref = np.asarray(Image.fromarray(full, "L").resize((48, 48), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small[:, :, 0], ref)


def test_dicom_without_extension_is_recognised_by_its_marker(tmp_path):
    stored = stored_from_png(ct_pngs(1)[0], size=64)
    f = write_dicom(tmp_path / "ct.dcm", stored)
    bare = tmp_path / "IM000001"
    shutil.copy(f, bare)
    np.testing.assert_array_equal(read_image(bare, 1, dicom_window=(40, 400)), read_dicom(f, 1, window=(40, 400)))


def test_multi_frame_is_refused(tmp_path):
    frames = np.stack([stored_from_png(p, size=64) for p in ct_pngs(3)])
    f = write_dicom(tmp_path / "volume.dcm", frames, frames=3)
    with pytest.raises(ImageReadError) as e:
        read_image(f, 1)
    msg = str(e.value)
    assert "volume.dcm" in msg and "multi-frame" in msg and "3 frames" in msg
    assert "single 2D images" in msg and "extract" in msg


def test_compressed_transfer_syntax_without_a_decoder_is_refused(tmp_path):
    stored = stored_from_png(ct_pngs(1)[0], size=64)
    f = write_dicom(tmp_path / "lossless.dcm", stored, syntax=JPEGLosslessSV1, encapsulated=[b"\xff\xd8" + b"\0" * 64])
    with pytest.raises(ImageReadError) as e:
        read_dicom(f, 1)
    msg = str(e.value)
    assert "lossless.dcm" in msg and "JPEG Lossless" in msg and str(JPEGLosslessSV1) in msg
    assert "pip install pylibjpeg" in msg


def test_undecodable_jpeg_baseline_names_the_syntax(tmp_path):
    # JPEG Baseline is decoded by Pillow through pydicom; garbage in it fails clearly
    stored = stored_from_png(ct_pngs(1)[0], size=64)
    f = write_dicom(tmp_path / "baseline.dcm", stored, syntax=JPEGBaseline8Bit, encapsulated=[b"not a jpeg" * 10])
    with pytest.raises(ImageReadError) as e:
        read_image(f, 1)
    assert "baseline.dcm" in str(e.value) and "JPEG Baseline" in str(e.value)


def test_non_dicom_and_empty_dcm_are_refused(tmp_path):
    png_bytes = ct_pngs(1)[0].read_bytes()
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(png_bytes)
    with pytest.raises(ImageReadError, match=r"fake\.dcm.*not a DICOM file"):
        read_image(fake, 1)
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.dcm.*empty"):
        read_image(tmp_path / "empty.dcm", 1)
    with pytest.raises(ImageReadError, match="no such file"):
        read_dicom(tmp_path / "missing.dcm", 1)
    with pytest.raises(ValueError, match="width"):
        read_dicom(fake, 1, window=(40, 0))


def test_window_function_edges():
    # width 1 is a threshold at c - 0.5; the range ends are exactly 0 and 255
    np.testing.assert_array_equal(window_to_uint8(np.array([39.0, 39.5, 40.0]), 40, 1), [0, 0, 255])
    np.testing.assert_array_equal(window_to_uint8(np.array([-160.5, -160.0, 239.5, 240.0]), 40, 400), [0, 0, 255, 255])


def _dicom_folder(root, size=48, per_class=6):
    """root/<class>/*.dcm from real chest CT PNGs of two classes."""
    for cls in ("normal", "adenocarcinoma"):
        folder = root / cls
        folder.mkdir(parents=True)
        src = "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib" if cls == "adenocarcinoma" else cls
        for i, p in enumerate(ct_pngs(per_class, "train", src)):
            write_dicom(folder / f"{cls}-{i}.dcm", stored_from_png(p, size=size))
    return root


def test_folder_of_dicom_files_is_indexed_and_decoded(tmp_path):
    root = _dicom_folder(tmp_path / "dcm")
    cfg = DataConfig(source=str(root), val_fraction=0.25, test_fraction=0.25, dicom_window=[-600, 1500])
    index = build_index(cfg)
    assert index.class_names == ["adenocarcinoma", "normal"]
    assert sum(len(v) for v in index.splits.values()) == 12
    samples = index.splits["train"]
    decoded = decode_split(samples, 1, 32, progress=False, dicom_window=cfg.dicom_window)
    assert decoded.images.shape == (len(samples), 1, 32, 32) and decoded.images.dtype == torch.uint8
    for k, s in enumerate(samples):
        ref = read_dicom(s.path, 1, 32, (-600, 1500))
        assert torch.equal(decoded.images[k, 0], torch.tensor(ref[:, :, 0]))


def test_cache_key_and_cache_follow_the_window(tmp_path):
    root = _dicom_folder(tmp_path / "dcm", per_class=3)
    cfg = DataConfig(source=str(root), val_fraction=0.0, test_fraction=0.0)
    samples = [s for items in build_index(cfg).splits.values() for s in items]
    keys = {cache_key(samples, 1, 32), cache_key(samples, 1, 32, [-600, 1500]), cache_key(samples, 1, 32, [40, 400])}
    assert len(keys) == 3
    assert cache_key(samples, 1, 32, [-600, 1500]) == cache_key(samples, 1, 32, (-600.0, 1500.0))
    cache = tmp_path / "cache"
    lung = decode_split(samples, 1, 32, progress=False, cache_dir=cache, dicom_window=[-600, 1500])
    soft = decode_split(samples, 1, 32, progress=False, cache_dir=cache, dicom_window=[40, 400])
    again = decode_split(samples, 1, 32, progress=False, cache_dir=cache, dicom_window=[-600, 1500])
    assert not lung.cache_hit and not soft.cache_hit and again.cache_hit
    assert not torch.equal(lung.images, soft.images) and torch.equal(lung.images, again.images)
    with pytest.raises(ValueError, match="width"):
        decode_split(samples, 1, 32, progress=False, dicom_window=[40, 0])


def test_config_accepts_a_dicom_window():
    cfg = RunConfig()
    assert cfg.data.dicom_window is None
    cfg.set("data.dicom_window", "[-600, 1500]")
    assert cfg.data.dicom_window == [-600, 1500]


def test_audit_reads_dicom_files(tmp_path):
    from medclass.data.audit import audit

    root = _dicom_folder(tmp_path / "dcm", per_class=3)
    shutil.copy(root / "normal" / "normal-0.dcm", root / "normal" / "normal-0 copy.dcm")
    (root / "normal" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    report = audit(build_index(DataConfig(source=str(root), val_fraction=0.0, test_fraction=0.0)))
    info = report["images"]["train"]
    assert info["formats"] == {"DICOM": 7} and info["modes"] == {"MONOCHROME2": 7} and info["common_sizes"] == [[[48, 48], 7]]
    assert [u["path"].endswith("broken.dcm") for u in report["unreadable"]] == [True]
    assert report["exact_duplicates"]["n_groups"] == 1


def test_dicom_files_named_as_scanners_name_them_are_found_in_folders(tmp_path):
    # PACS exports: no extension (IM000001) or a UID as the file name, a DICOMDIR index beside them
    root = _dicom_folder(tmp_path / "dcm", per_class=3)
    for cls in ("normal", "adenocarcinoma"):
        for i, f in enumerate(sorted((root / cls).glob("*.dcm"))):
            f.rename(f.with_name(f"IM{i:06d}" if i % 2 else f"1.2.840.113619.2.55.3.{i}"))
        shutil.copy(next((root / cls).iterdir()), root / cls / "DICOMDIR")  # has the marker; not an image
        (root / cls / "notes.1").write_bytes(b"not dicom" * 20)  # a numeric suffix without the marker
    index = build_index(DataConfig(source=str(root), val_fraction=0.3, test_fraction=0.3))
    names = sorted(Path(s.path).name for split in index.splits.values() for s in split)
    assert len(names) == 6 and "DICOMDIR" not in names and "notes.1" not in names
    assert {n[:2] for n in names} == {"IM", "1."}
    decoded = decode_split(index.splits["train"], 1, 32, progress=False)
    assert len(decoded) == len(index.splits["train"]) and not decoded.skipped


def test_dicom_slices_of_one_patient_stay_in_one_split(tmp_path):
    import pydicom

    stored = stored_from_png(ct_pngs(1)[0], size=32)
    root = tmp_path / "dcm"
    for c, cls in enumerate(("normal", "tumor")):
        for patient in range(6):
            (root / cls / f"P{c}{patient}").mkdir(parents=True)
            for s in range(3):  # three slices per patient
                f = write_dicom(root / cls / f"P{c}{patient}" / f"IM{s:04d}", stored + 40 * s)
                ds = pydicom.dcmread(f)
                ds.PatientID = f"P{c}{patient}"
                ds.save_as(f)
    index = build_index(DataConfig(source=str(root), val_fraction=0.2, test_fraction=0.2))
    split_of: dict[str, set] = {}
    for split, samples in index.splits.items():
        for x in samples:
            split_of.setdefault(x.group, set()).add(split)
    assert len(split_of) == 12 and all(len(s) == 1 for s in split_of.values())  # every patient on one side
    assert all(g.startswith("patient:P") for g in split_of) and index.notes == []
    # anonymised: one PatientID for all files; split image by image, with a note
    same = _dicom_folder(tmp_path / "anon", per_class=6)
    anon = build_index(DataConfig(source=str(same), val_fraction=0.25, test_fraction=0.25))
    assert all(x.group is None for v in anon.splits.values() for x in v)
    assert len(anon.notes) == 1 and "1 distinct PatientID" in anon.notes[0]
