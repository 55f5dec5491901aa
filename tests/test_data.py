"""Tests of the data package: indexing folders / CSV / npz, splits, manifests, image decoding.

Real data sets are read from ``../shared/data`` (relative to the repository root) and skipped
when absent; everything else is made in ``tmp_path`` with tiny images. Nothing here trains.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medclass.core.config import DataConfig
from medclass.data import (
    SPLITS,
    DataError,
    DataIndex,
    ImageReadError,
    Preprocess,
    Sample,
    build_index,
    bundled_breastmnist,
    decode_split,
    index_npz,
    load_sample,
    match_class_names,
    read_image,
    read_manifest,
    write_manifest,
)

from helpers import CHEST_CLASSES, CHEST_CT, SHARED_DATA, need

HAM_CSV = SHARED_DATA / "ham10000-subset" / "HAM10000_metadata.csv"


# --------------------------------------------------------------------------- helpers


def _png(path: Path, value: int = 128, size: tuple[int, int] = (8, 8), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)
    return path


def _make_class_folders(root: Path, counts: dict[str, int]) -> dict[str, list[Path]]:
    """``root/<class>/<i>.png`` with a distinct grey value per image; returns the files per class."""
    files: dict[str, list[Path]] = {}
    for c, n in counts.items():
        files[c] = [_png(root / c / f"{c}_{i}.png", value=i) for i in range(n)]
    return files


def _paths(index: DataIndex) -> dict[str, list[str]]:
    return {s: [x.path for x in index.splits[s]] for s in SPLITS}


def _files_in(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- 1. class matching


def test_chest_ct_classes_and_split_sizes():
    need(CHEST_CT)
    index = build_index(DataConfig(source=str(CHEST_CT)))
    assert index.class_names == CHEST_CLASSES
    assert index.given_splits
    assert {s: len(v) for s, v in index.splits.items()} == {"train": 613, "valid": 72, "test": 259}
    # every image lands in the class whose (short) name starts its folder name
    for split in SPLITS:
        for s in index.splits[split]:
            folder = Path(s.path).parent.name
            assert folder.startswith(index.class_names[s.label])
            assert Path(s.path).is_relative_to(CHEST_CT / split)
    # per-class counts equal the files in the folders of that class (counted independently)
    counts = index.counts()
    for split in SPLITS:
        for d in (CHEST_CT / split).iterdir():
            short = next(c for c in CHEST_CLASSES if d.name == c or d.name.startswith(c + "_"))
            assert counts[split][short] == _files_in(d)


def test_chest_ct_class_map_overrides_matching():
    """Merging the three carcinomas (long and short folder names) into one class."""
    need(CHEST_CT)
    folders = {d.name for s in SPLITS for d in (CHEST_CT / s).iterdir() if d.is_dir()}
    class_map = {f: "cancer" for f in folders if not f.startswith("normal")}
    assert len(class_map) == 6  # 3 long names (train/valid) + 3 short ones (test)
    index = build_index(DataConfig(source=str(CHEST_CT), class_map=class_map))
    assert index.class_names == ["cancer", "normal"]
    for split in SPLITS:
        normal = _files_in(CHEST_CT / split / "normal")
        total = _files_in(CHEST_CT / split)
        assert index.counts()[split] == {"cancer": total - normal, "normal": normal}


@pytest.mark.parametrize(
    "names, expected",
    [
        # the chest-ct case: long folder names start with the short class name and a separator
        (
            ["adenocarcinoma", "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib", "normal"],
            {"adenocarcinoma": "adenocarcinoma", "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib": "adenocarcinoma", "normal": "normal"},
        ),
        # every documented separator
        (
            ["tumor", "tumor_a", "tumor-b", "tumor.c", "tumor d", "tumor(e)"],
            {n: "tumor" for n in ["tumor", "tumor_a", "tumor-b", "tumor.c", "tumor d", "tumor(e)"]},
        ),
        # a prefix without a separator is another class
        (["normal", "normality"], {"normal": "normal", "normality": "normality"}),
        # a chain resolves to the shortest root
        (["a", "a_b", "a_b_c"], {"a": "a", "a_b": "a", "a_b_c": "a"}),
        # a long name with no short counterpart stays as it is
        (["glioma_grade2", "meningioma"], {"glioma_grade2": "glioma_grade2", "meningioma": "meningioma"}),
        # duplicates (the same folder name in several splits) are one entry
        (["yes", "no", "yes", "no"], {"yes": "yes", "no": "no"}),
    ],
)
def test_match_class_names(names, expected):
    assert match_class_names(names) == expected


def test_match_class_names_class_map_overrides():
    names = ["normal", "normal_extra", "tumor"]
    assert match_class_names(names)["normal_extra"] == "normal"
    out = match_class_names(names, {"normal_extra": "other", "tumor": "cancer"})
    assert out == {"normal": "normal", "normal_extra": "other", "tumor": "cancer"}


def test_unmatched_class_across_splits_is_an_error(tmp_path):
    for split, classes in {"train": ["benign", "malignant"], "test": ["benign", "malignant", "pneumothorax"]}.items():
        _make_class_folders(tmp_path / split, {c: 10 if split == "train" else 2 for c in classes})
    with pytest.raises(DataError) as e:
        build_index(DataConfig(source=str(tmp_path)))
    msg = str(e.value)
    assert "pneumothorax" in msg and "train/" in msg and "class_map" in msg
    # mapping the extra folder onto a class of train/ resolves it
    index = build_index(DataConfig(source=str(tmp_path), class_map={"pneumothorax": "malignant"}))
    assert index.class_names == ["benign", "malignant"]
    assert index.counts()["test"] == {"benign": 2, "malignant": 4}


def test_valid_split_made_from_train_when_missing(tmp_path):
    _make_class_folders(tmp_path / "train", {"a": 20, "b": 20})
    test_files = _make_class_folders(tmp_path / "test", {"a": 3, "b": 3})
    index = build_index(DataConfig(source=str(tmp_path), val_fraction=0.25))
    assert not index.given_splits
    assert sorted(_paths(index)["test"]) == sorted(str(p) for f in test_files.values() for p in f)
    assert len(index.splits["valid"]) == 10  # 25 % of the 40 training images
    assert len(index.splits["train"]) == 30
    assert index.counts()["valid"] == {"a": 5, "b": 5}


def test_class_folder_without_images_is_an_error(tmp_path):
    _make_class_folders(tmp_path, {"b": 10, "c": 10})
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="a; add images"):
        build_index(DataConfig(source=str(tmp_path)))


# --------------------------------------------------------------------------- 2. HAM10000 (CSV, groups)


def _ham_rows() -> list[dict[str, str]]:
    with open(HAM_CSV, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ham_index() -> DataIndex:
    need(HAM_CSV)
    return build_index(DataConfig(source=str(HAM_CSV), skip_corrupt=True))


def test_ham_missing_image_is_an_error_naming_the_id():
    need(HAM_CSV)
    have = {p.stem for p in (HAM_CSV.parent / "images").iterdir()}
    missing = [r["image_id"] for r in _ham_rows() if r["image_id"] not in have]
    assert missing, "the shared HAM10000 subset is expected to lack one listed image"
    with pytest.raises(DataError) as e:
        build_index(DataConfig(source=str(HAM_CSV)))
    for image_id in missing:
        assert image_id in str(e.value)
    assert "skip_corrupt" in str(e.value)


def test_ham_split_keeps_lesions_together(ham_index):
    rows = _ham_rows()
    lesion_of = {r["image_id"]: r["lesion_id"] for r in rows}
    assert not ham_index.given_splits
    # every row is in exactly one split
    all_paths = [p for ps in _paths(ham_index).values() for p in ps]
    assert len(all_paths) == len(set(all_paths)) == len(rows)
    assert {Path(p).stem for p in all_paths} == set(lesion_of)
    split_of_lesion: dict[str, set[str]] = {}
    for split, items in ham_index.splits.items():
        for s in items:
            assert s.group == lesion_of[Path(s.path).stem]
            split_of_lesion.setdefault(s.group, set()).add(split)
    straddling = {g: s for g, s in split_of_lesion.items() if len(s) > 1}
    assert not straddling
    # labels: dx, every class in train, roughly the configured fractions (groups make it approximate)
    assert ham_index.class_names == sorted({r["dx"] for r in rows})
    dx_of = {r["image_id"]: r["dx"] for r in rows}
    for items in ham_index.splits.values():
        for s in items:
            assert ham_index.class_names[s.label] == dx_of[Path(s.path).stem]
    assert all(n > 0 for n in ham_index.counts()["train"].values())
    for split in ("valid", "test"):
        assert 0.10 < len(ham_index.splits[split]) / len(rows) < 0.20


def test_ham_split_reproducible_and_seed_dependent(ham_index):
    again = build_index(DataConfig(source=str(HAM_CSV), skip_corrupt=True, split_seed=0))
    other = build_index(DataConfig(source=str(HAM_CSV), skip_corrupt=True, split_seed=1))
    assert _paths(again) == _paths(ham_index)
    assert set(_paths(other)["test"]) != set(_paths(ham_index)["test"])


def test_ham_missing_image_is_skipped_when_decoded(ham_index):
    samples = [s for items in ham_index.splits.values() for s in items]
    missing = [s for s in samples if not Path(s.path).exists()]
    assert len(missing) == 1
    present = [s for s in samples if Path(s.path).exists()][:2]
    out = decode_split(present + missing, channels=3, size=16, skip_corrupt=True, progress=False, threads=1)
    assert len(out) == 2 and out.images.shape == (2, 3, 16, 16)
    assert [p for p, _ in out.skipped] == [missing[0].path]
    with pytest.raises(ImageReadError, match="ISIC_"):
        decode_split(missing, channels=3, size=16, progress=False, threads=1)


# --------------------------------------------------------------------------- 3. MedMNIST npz


def _write_npz(path: Path, labels: dict[str, np.ndarray], n_pixels: int = 6) -> None:
    arrays = {}
    for prefix, y in labels.items():
        n = len(y)
        # image i of a split is filled with the value 10 * i + offset, to check indexing
        offset = {"train": 0, "val": 1, "test": 2}[prefix]
        imgs = np.stack([np.full((n_pixels, n_pixels), 10 * i + offset, dtype=np.uint8) for i in range(n)])
        arrays[f"{prefix}_images"] = imgs
        arrays[f"{prefix}_labels"] = y
    np.savez(path, **arrays)


def test_npz_labels_flat_and_column_are_the_same(tmp_path):
    rng = np.random.default_rng(0)
    labels = {p: rng.integers(0, 3, size=n).astype(np.uint8) for p, n in (("train", 12), ("val", 5), ("test", 7))}
    labels["train"][:3] = [0, 1, 2]  # all three classes present
    _write_npz(tmp_path / "flat.npz", labels)
    _write_npz(tmp_path / "column.npz", {p: y[:, None] for p, y in labels.items()})
    flat = index_npz(tmp_path / "flat.npz")
    column = build_index(DataConfig(source=str(tmp_path / "column.npz")))
    for index in (flat, column):
        assert index.class_names == ["0", "1", "2"]
        for split, prefix in (("train", "train"), ("valid", "val"), ("test", "test")):
            assert [s.label for s in index.splits[split]] == labels[prefix].tolist()
    # a sample path names its image: value 10 * i + offset of its split
    s = column.splits["valid"][3]
    img = load_sample(s.path, channels=1, size=6)
    assert img.shape == (6, 6, 1) and img.dtype == np.uint8
    assert (img == 10 * 3 + 1).all()


def test_npz_multilabel_is_refused(tmp_path):
    y = np.zeros((4, 3), dtype=np.uint8)
    _write_npz(tmp_path / "multi.npz", {"train": y, "val": y, "test": y})
    with pytest.raises(DataError, match=r"\(4, 3\)"):
        index_npz(tmp_path / "multi.npz")


def test_npz_missing_array_is_an_error(tmp_path):
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros(2))
    with pytest.raises(DataError, match="val_images"):
        index_npz(tmp_path / "bad.npz")


def test_bundled_breastmnist():
    path = bundled_breastmnist()
    assert path.is_file()
    index = build_index(DataConfig())  # no source: the bundled set
    assert index.class_names == ["malignant", "normal, benign"]
    assert {s: len(v) for s, v in index.splits.items()} == {"train": 546, "valid": 78, "test": 156}
    assert {s.label for items in index.splits.values() for s in items} == {0, 1}
    img = load_sample(index.splits["test"][0].path, channels=3, size=32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    # a greyscale image made RGB has equal channels
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


# --------------------------------------------------------------------------- 4. folder without splits, manifests


@pytest.fixture
def unsplit_folder(tmp_path) -> tuple[Path, dict[str, list[Path]]]:
    root = tmp_path / "unsplit"
    files = _make_class_folders(root, {"benign": 8, "early": 12, "pro": 20})
    # an upper-case extension is an image; other files are not
    jpg = root / "early" / "extra.JPG"
    Image.new("RGB", (8, 8), (40, 40, 40)).save(jpg, format="JPEG")
    files["early"].append(jpg)
    (root / "pro" / "notes.txt").write_text("not an image")
    (root / "pro" / ".hidden.png").write_bytes((root / "pro" / "pro_0.png").read_bytes())
    return root, files


def test_unsplit_folder_gets_a_stratified_split(unsplit_folder):
    root, files = unsplit_folder
    cfg = DataConfig(source=str(root), val_fraction=0.15, test_fraction=0.15, split_seed=0)
    index = build_index(cfg)
    assert not index.given_splits
    assert index.class_names == ["benign", "early", "pro"]
    all_paths = [p for ps in _paths(index).values() for p in ps]
    expected = sorted(str(p) for fs in files.values() for p in fs)
    assert sorted(all_paths) == expected  # every image once; .txt and hidden files left out
    n = len(expected)  # 41
    for split, frac in (("valid", 0.15), ("test", 0.15)):
        assert abs(len(index.splits[split]) - frac * n) <= 1.5
    for split in SPLITS:
        assert all(c > 0 for c in index.counts()[split].values()), split
    # labels follow the folders
    for items in index.splits.values():
        for s in items:
            assert Path(s.path).parent.name == index.class_names[s.label]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_unsplit_folder_split_is_reproducible(unsplit_folder, seed):
    root, _ = unsplit_folder
    a = build_index(DataConfig(source=str(root), split_seed=seed))
    b = build_index(DataConfig(source=str(root), split_seed=seed))
    other = build_index(DataConfig(source=str(root), split_seed=seed + 100))
    assert _paths(a) == _paths(b)
    assert _paths(a) != _paths(other)
    for split in SPLITS:
        assert all(c > 0 for c in a.counts()[split].values())


def test_manifest_round_trip(unsplit_folder, tmp_path):
    root, _ = unsplit_folder
    index = build_index(DataConfig(source=str(root), split_seed=3))
    path = tmp_path / "split.csv"
    write_manifest(index, path)
    back = read_manifest(path)
    assert back.class_names == index.class_names
    assert back.splits == index.splits  # Sample is a frozen dataclass: path, label, group
    # and as the manifest of a run
    again = build_index(DataConfig(source="/does/not/matter", manifest=str(path)))
    assert again.splits == index.splits
    assert not list(tmp_path.glob("*.tmp*"))  # atomic_write's temporary files: .<stem>.<random>.tmp<suffix>


def test_manifest_round_trip_with_groups_and_odd_paths(tmp_path):
    index = DataIndex(
        ["a, with comma", "b"],
        {
            "train": [Sample("/x/one, two.png", 0, "p1"), Sample('/x/"quoted".png', 1, None)],
            "valid": [Sample("/x/v.png", 1, "p2")],
            "test": [],
        },
    )
    write_manifest(index, tmp_path / "m.csv")
    back = read_manifest(tmp_path / "m.csv")
    assert back.class_names == index.class_names
    assert back.splits == index.splits


def test_manifest_inconsistent_or_incomplete_is_an_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("split,path,label,class_name,group\ntrain,a.png,0,x,\ntrain,b.png,0,y,\n")
    with pytest.raises(DataError, match="label 0"):
        read_manifest(bad)
    gap = tmp_path / "gap.csv"
    gap.write_text("split,path,label,class_name,group\ntrain,a.png,1,x,\n")
    with pytest.raises(DataError, match=r"\[0\]"):
        read_manifest(gap)
    cols = tmp_path / "cols.csv"
    cols.write_text("split,path,label\ntrain,a.png,0\n")
    with pytest.raises(DataError, match="class_name"):
        read_manifest(cols)


# --------------------------------------------------------------------------- 5. reading images


def _write_mode(path: Path, kind: str) -> np.ndarray:
    """Write a 10x6 image of ``kind``; returns its content as RGB uint8 (what channels=3 reads)."""
    h, w = 6, 10
    if kind == "RGBA":
        arr = np.zeros((h, w, 4), np.uint8)
        arr[..., :3] = (200, 100, 50)
        arr[..., 3] = 255
        arr[:, : w // 2, 3] = 0  # left half transparent: composited over black
        Image.fromarray(arr, "RGBA").save(path)
        rgb = arr[..., :3].copy()
        rgb[:, : w // 2] = 0
        return rgb
    if kind == "RGB":
        arr = np.zeros((h, w, 3), np.uint8)
        arr[...] = (10, 20, 30)
        arr[:, w // 2 :] = (250, 240, 230)
        Image.fromarray(arr, "RGB").save(path)
        return arr
    if kind == "L":
        arr = np.tile(np.linspace(0, 250, w).astype(np.uint8), (h, 1))
        Image.fromarray(arr, "L").save(path)
        return np.repeat(arr[..., None], 3, axis=2)
    if kind == "I;16":
        arr = np.tile(np.linspace(0, 65535, w).astype(np.uint16), (h, 1))
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
        img.save(path)
        grey = np.round(arr / 65535 * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if kind == "JPEG":
        arr = np.full((h, w, 3), (90, 160, 220), np.uint8)
        Image.fromarray(arr, "RGB").save(path, format="JPEG", quality=95)
        return arr
    raise AssertionError(kind)


KINDS = {"RGBA": "rgba.png", "RGB": "rgb.png", "L": "grey.png", "I;16": "deep.png", "JPEG": "photo.JPG"}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("channels", [1, 3])
def test_read_image_modes(tmp_path, kind, channels):
    path = tmp_path / KINDS[kind]
    rgb = _write_mode(path, kind)
    for size in (5, 16):
        out = read_image(path, channels=channels, size=size)
        assert out.shape == (size, size, channels) and out.dtype == np.uint8
    native = read_image(path, channels=channels)  # no resize: exact content
    assert native.shape == rgb.shape[:2] + (channels,)
    tol = 3 if kind == "JPEG" else 0
    if channels == 3:
        expected = rgb.astype(int)
    else:  # ITU-R 601 luma, as Pillow's convert("L")
        expected = np.round(rgb @ np.array([0.299, 0.587, 0.114]))[..., None]
        tol += 1
    assert np.abs(native.astype(int) - expected).max() <= tol


def test_read_image_16_bit_full_range(tmp_path):
    arr = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(2, axis=0)
    Image.fromarray(arr).save(tmp_path / "ct.png")
    out = read_image(tmp_path / "ct.png", channels=1)[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert out[0].tolist() == np.round(arr[0] / 65535 * 255).astype(int).tolist()
    # a 12-bit image (0..4095) is windowed to its own min..max, not left dark
    Image.fromarray((arr // 16).astype(np.uint16)).save(tmp_path / "ct12.png")
    out12 = read_image(tmp_path / "ct12.png", channels=1)[..., 0]
    assert out12.min() == 0 and out12.max() == 255
    # a constant 16-bit image does not divide by zero
    Image.fromarray(np.full((3, 3), 1000, np.uint16)).save(tmp_path / "flat.png")
    assert (read_image(tmp_path / "flat.png", channels=1) == 0).all()


def test_read_real_chest_ct_modes():
    """One real chest-ct file of each mode/format (RGBA, RGB, L PNG; JPEG, also named .png)."""
    need(CHEST_CT)
    first: dict[tuple[str, str, str], Path] = {}
    for p in sorted(CHEST_CT.rglob("*")):
        if p.is_file():
            with Image.open(p) as im:
                first.setdefault((p.suffix.lower(), im.mode, im.format), p)
    modes = {m for _, m, _ in first}
    assert {"RGBA", "RGB", "L"} <= modes
    for p in first.values():
        for channels in (1, 3):
            out = read_image(p, channels=channels, size=24)
            assert out.shape == (24, 24, channels) and out.dtype == np.uint8
            assert out.max() > 0  # a CT slice is not all black


def _corrupt_files(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    good = folder / "noise.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    truncated = folder / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    header_only = folder / "header.png"
    header_only.write_bytes(data[:20])
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "text.png"
    text.write_text("this is not a PNG\n")
    return {"truncated": truncated, "header": header_only, "empty": empty, "text": text}


@pytest.mark.parametrize("which", ["truncated", "header", "empty", "text", "missing"])
def test_read_image_corrupt_names_the_file(tmp_path, which):
    bad = _corrupt_files(tmp_path)
    path = bad.get(which, tmp_path / "missing.png")
    with pytest.raises(ImageReadError) as e:
        read_image(path, channels=3, size=8)
    assert str(path) in str(e.value)
    assert e.value.path == str(path)
    assert isinstance(e.value, OSError)


def test_decode_split_skip_corrupt(tmp_path):
    good = [_png(tmp_path / f"g{i}.png", value=50 * i, size=(12, 7)) for i in range(4)]
    (tmp_path / "bad").mkdir()
    bad = _corrupt_files(tmp_path / "bad")
    samples = [
        Sample(str(good[0]), 0),
        Sample(str(bad["truncated"]), 1),
        Sample(str(good[1]), 1),
        Sample(str(good[2]), 0),
        Sample(str(bad["text"]), 0),
        Sample(str(good[3]), 1),
    ]
    with pytest.raises(ImageReadError):
        decode_split(samples, channels=1, size=8, progress=False, threads=2)
    out = decode_split(samples, channels=1, size=8, skip_corrupt=True, progress=False, threads=2)
    assert len(out) == 4
    assert [s.path for s in out.samples] == [str(p) for p in good]
    assert out.labels.tolist() == [0, 1, 0, 1] and out.labels.dtype == torch.int64
    assert out.images.shape == (4, 1, 8, 8) and out.images.dtype == torch.uint8
    # constant images keep their value through the resize, in sample order
    assert [int(out.images[i].unique().item()) for i in range(4)] == [0, 50, 100, 150]
    assert sorted(p for p, _ in out.skipped) == sorted([str(bad["truncated"]), str(bad["text"])])
    assert all(reason for _, reason in out.skipped)


def test_decode_split_all_bad_gives_empty_tensor(tmp_path):
    bad = _corrupt_files(tmp_path)
    out = decode_split([Sample(str(bad["empty"]), 0)], channels=3, size=8, skip_corrupt=True, progress=False)
    assert len(out) == 0 and out.images.shape == (0, 3, 8, 8) and out.labels.shape == (0,)
    assert out.skipped[0][0] == str(bad["empty"])


# --------------------------------------------------------------------------- 6. CSV manifests


def test_csv_paths_relative_to_csv_and_groups(tmp_path, monkeypatch):
    base = tmp_path / "study"
    rows = []
    for patient in range(30):
        label = ["effusion", "normal", "nodule"][patient % 3]
        for k in range(1 + patient % 3):  # 1 to 3 images per patient
            rel = f"imgs/p{patient}_{k}.png"
            _png(base / rel, value=patient)
            rows.append({"Path": rel, "finding": label, "patient_id": f"P{patient:03d}", "age": "50"})
    csv_path = base / "meta.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["Path", "finding", "patient_id", "age"])
        w.writeheader()
        w.writerows(rows)
    monkeypatch.chdir(tmp_path)  # paths must resolve against the CSV, not the working directory

    # no recognisable label column: the error names the columns
    with pytest.raises(DataError) as e:
        build_index(DataConfig(source=str(csv_path)))
    for col in ("Path", "finding", "patient_id", "age"):
        assert col in str(e.value)
    assert "label_column" in str(e.value)

    index = build_index(DataConfig(source=str(csv_path), label_column="finding", split_seed=5))
    assert index.class_names == ["effusion", "nodule", "normal"]
    assert not index.given_splits
    group_of = {str(base / r["Path"]): r["patient_id"] for r in rows}
    label_of = {str(base / r["Path"]): r["finding"] for r in rows}
    seen = []
    split_of_group: dict[str, set[str]] = {}
    for split, items in index.splits.items():
        assert items, split
        for s in items:
            assert Path(s.path).is_file()
            assert s.group == group_of[s.path]
            assert index.class_names[s.label] == label_of[s.path]
            split_of_group.setdefault(s.group, set()).add(split)
            seen.append(s.path)
    assert sorted(seen) == sorted(group_of)
    assert all(len(v) == 1 for v in split_of_group.values())
    assert all(c > 0 for c in index.counts()["train"].values())
    # decodes from anywhere
    out = decode_split(index.splits["test"], channels=1, size=4, progress=False, threads=1)
    assert len(out) == len(index.splits["test"])


def test_csv_split_column_and_label_aliases(tmp_path):
    for i in range(6):
        _png(tmp_path / f"{i}.png", value=i)
    (tmp_path / "m.csv").write_text(
        "\ufefffile,Label,split\n"
        "0.png,cat,train\n1.png,dog,train\n2.png,cat,val\n3.png,dog,validation\n4.png,cat,test\n5.png,dog,TEST\n"
    )
    index = build_index(DataConfig(source=str(tmp_path / "m.csv")))
    assert index.given_splits
    assert index.class_names == ["cat", "dog"]
    assert {s: [Path(x.path).name for x in v] for s, v in index.splits.items()} == {
        "train": ["0.png", "1.png"],
        "valid": ["2.png", "3.png"],
        "test": ["4.png", "5.png"],
    }
    (tmp_path / "bad.csv").write_text("file,label,split\n0.png,cat,holdout\n")
    with pytest.raises(DataError, match="holdout"):
        build_index(DataConfig(source=str(tmp_path / "bad.csv")))


def test_csv_group_missing_on_some_rows_is_an_error(tmp_path):
    lines = ["path,label,group"] + [f"{i}.png,{i % 2},{'g%d' % i if i else ''}" for i in range(20)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="group"):
        build_index(DataConfig(source=str(tmp_path / "m.csv")))


def test_unknown_source_kinds(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_index(DataConfig(source=str(tmp_path / "nope")))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="expected a folder"):
        build_index(DataConfig(source=str(tmp_path / "x.txt")))


# --------------------------------------------------------------------------- preprocessing


def test_preprocess_scales_and_normalises():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    assert torch.allclose(Preprocess()(x), torch.tensor([0.0, 0.2, 1.0]).view(1, 1, 1, 3))
    y = Preprocess.from_config(DataConfig(normalize=True, mean=[0.5], std=[0.25]))(x)
    assert torch.allclose(y, torch.tensor([-2.0, -1.2, 2.0]).view(1, 1, 1, 3))
    assert Preprocess.from_config(DataConfig(normalize=False)).normalize is False


def test_class_map_on_a_short_name_also_maps_its_long_spellings():
    out = match_class_names(["adenocarcinoma", "adenocarcinoma_left.lower.lobe_T2", "normal"], {"adenocarcinoma": "ACA"})
    assert out == {"adenocarcinoma": "ACA", "adenocarcinoma_left.lower.lobe_T2": "ACA", "normal": "normal"}


def test_names_side_by_side_in_one_split_are_never_merged():
    names = ["pneumonia", "pneumonia_viral", "normal"]
    assert match_class_names(names, together=[names])["pneumonia_viral"] == "pneumonia_viral"
    assert match_class_names(names)["pneumonia_viral"] == "pneumonia"
