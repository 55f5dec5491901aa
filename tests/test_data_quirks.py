"""Quirks of real folders that a user's first run meets: the system folders a zip from a Mac or a
NAS leaves beside the images, an unreadable test image, small test splits whose bootstrap
resamples miss classes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import make_folder_dataset, tiny_config
from medclass.cli.app import app
from medclass.core.config import DataConfig
from medclass.data import ImageReadError, Sample, decode_split, expand_image_paths
from medclass.data.sources import DataError, index_folder
from medclass.engine import train
from medclass.evaluation import evaluate_run
from medclass.core.scoring import balanced_accuracy
from medclass.evaluation.metrics import bootstrap_ci, classification_metrics


def _png(path: Path, value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)
    return path


def test_system_and_hidden_folders_are_neither_classes_nor_images(tmp_path):
    root = make_folder_dataset(tmp_path / "data", per_class=6)
    (root / "__MACOSX" / "dark").mkdir(parents=True)  # a macOS zip: AppleDouble files, no images
    (root / "__MACOSX" / "dark" / "._dark_0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    thumbs = [_png(root / "dark" / "@eaDir" / "dark_0.png" / "SYNOPHOTO_THUMB_S.jpg"),  # Synology thumbnails
              _png(root / "bright" / ".thumbnails" / "bright_1.png"), _png(root / "@eaDir" / "x" / "y.png")]
    index = index_folder(root, DataConfig(source=str(root)))
    assert index.class_names == ["bright", "dark"]
    paths = [Path(s.path) for split in index.splits.values() for s in split]
    assert len(paths) == 12 and not set(paths) & set(thumbs)
    assert not any("__MACOSX" in p.parts or "@eaDir" in p.parts for p in paths)
    # predict on a folder skips them too
    found = expand_image_paths([root])
    assert len(found) == 12 and not set(found) & set(thumbs)


def test_an_unreadable_image_says_how_to_go_on(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ImageReadError) as e:
        decode_split([Sample(str(_png(tmp_path / "good.png")), 0), Sample(str(bad), 1)], channels=3, size=8,
                     progress=False)
    assert e.value.path == str(bad) and str(bad) in str(e.value)
    assert "data.skip_corrupt=true" in str(e.value) and "--skip-corrupt" in str(e.value)


def _split_data(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "data", splits={"train": 6, "valid": 3, "test": 3})


def test_an_unreadable_test_image_stops_the_run_before_any_epoch(tmp_path):
    root = _split_data(tmp_path)
    broken = root / "test" / "dark" / "dark_broken.png"
    broken.write_bytes((root / "test" / "dark" / "dark_0.png").read_bytes()[:60])  # truncated
    cfg = tiny_config(root, epochs=2)
    assert cfg.data.cache  # the default: the test split is decoded into the cache before training
    with pytest.raises(ImageReadError) as e:
        train(cfg, tmp_path / "run")
    assert e.value.path == str(broken)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_evaluate_skip_corrupt_leaves_unreadable_images_out_and_lists_them(tmp_path):
    root = _split_data(tmp_path)
    run = tmp_path / "run"
    train(tiny_config(root, epochs=1), run)
    broken = root / "test" / "bright" / "bright_0.png"
    broken.write_bytes(b"not an image")  # damaged after training
    with pytest.raises(ImageReadError):
        evaluate_run(run, progress=False, n_bootstrap=20)
    m = evaluate_run(run, progress=False, n_bootstrap=20, skip_corrupt=True)
    assert m["n"] == 5 and [f["path"] for f in m["skipped_files"]] == [str(broken)]
    r = CliRunner().invoke(app, ["evaluate", str(run), "--skip-corrupt", "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval-test" / "metrics.json").read_text())["n"] == 5
    assert "skip_corrupt: false" in (run / "config.yaml").read_text()  # the run's own config is unchanged


def test_train_without_the_cache_says_the_model_is_saved_when_the_test_evaluation_meets_a_bad_image(tmp_path):
    root = _split_data(tmp_path)
    broken = root / "test" / "dark" / "dark_1.png"
    broken.write_bytes(b"")
    r = CliRunner().invoke(app, ["train", str(root), "--runs-dir", str(tmp_path / "runs"), "--name", "r",
                                 "--epochs", "1", "--image-size", "16", "--batch-size", "4",
                                 "--set", "data.cache=false", "--set", "model.stem=small", "--set", "train.progress=false"])
    assert r.exit_code == 2
    out = " ".join(r.output.split())
    assert str(broken) in out and "the model is trained and saved" in out and "--skip-corrupt" in out
    assert (tmp_path / "runs" / "r" / "checkpoints" / "best.pt").is_file()


def test_small_test_splits_do_not_flood_the_log_with_balanced_accuracy_warnings():
    # 6 images of 2 classes; the model also predicts a third class: sklearn warns for every resample
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[.8, .1, .1], [.1, .1, .8], [.7, .2, .1], [.1, .8, .1], [.2, .2, .6], [.1, .7, .2]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = classification_metrics(y, probs, ["a", "b", "c"])
        ci = bootstrap_ci(y, probs, 50, seed=0)
        balanced_accuracy(np.array([1, 1]), np.array([1, 1]))  # one class on both sides (a patient's images)
    assert [str(w.message) for w in caught] == []
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # mean recall over the classes present
    assert ci["metrics"]["balanced_accuracy"]["low"] <= m["balanced_accuracy"] <= ci["metrics"]["balanced_accuracy"]["high"]


@pytest.mark.parametrize("inner", [{"train": 4, "test": 2}, None])
def test_a_wrapper_folder_is_named_with_the_folder_to_give_instead(tmp_path, inner):
    # a zip's top folder around the splits (or the class folders): one "class" that holds folders
    make_folder_dataset(tmp_path / "data" / "chest_xray", per_class=4, splits=inner)
    with pytest.raises(DataError) as e:
        index_folder(tmp_path / "data", DataConfig(source=str(tmp_path / "data")))
    msg = str(e.value)
    assert f"give {tmp_path / 'data' / 'chest_xray'} as the data" in msg
    assert ("train/" in msg) if inner else ("bright/" in msg and "dark/" in msg)


@pytest.mark.parametrize("header, value", [
    ("image_name,target,patient_id", "{stem}"),         # ISIC 2020's train.csv: ids without extension
    ("image_id,dx,lesion_id", "{stem}.png"),            # ids that carry the extension
    ("image,label,patient", "images/{stem}.png"),       # an "image" column that holds relative paths
    ("fname,class,subject", "images/{stem}.png"),       # a path column under another common name
])
def test_csv_image_columns_as_real_data_sets_write_them(tmp_path, header, value):
    for i in range(6):
        _png(tmp_path / "images" / f"im_{i}.png", value=20 * i)
    (tmp_path / "images" / "._im_0.png").write_bytes(b"AppleDouble")  # never matched to an id
    rows = [f"{value.format(stem=f'im_{i}')},{'ab'[i % 2]},p{i // 2}" for i in range(6)]
    (tmp_path / "m.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    from medclass.data import build_index

    index = build_index(DataConfig(source=str(tmp_path / "m.csv"), val_fraction=0.3, test_fraction=0.3))
    paths = sorted(Path(s.path).resolve() for split in index.splits.values() for s in split)
    assert paths == sorted((tmp_path / "images" / f"im_{i}.png").resolve() for i in range(6))
    assert index.class_names == ["a", "b"]


def test_tiny_data_sets_split_with_each_class_held_out_and_singletons_kept_for_training():
    from medclass.data.splits import stratified_split

    # 10 images of 3 classes: a 15 % holdout is 2 images, fewer than the classes (sklearn refuses)
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    out = stratified_split(labels, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert sorted(labels[out == "test"].tolist()) == [0, 1, 2]
    assert set(labels[out == "train"].tolist()) == {0, 1, 2}
    assert sorted(labels[out == "valid"].tolist()) == [0, 1]  # class 2's last image stays in training
    # the only image of a class is never held out
    single = np.array([0] * 6 + [1] * 6 + [2])
    for seed in range(5):
        assert stratified_split(single, seed=seed)[-1] == "train"


def test_the_split_of_a_normal_data_set_is_sklearns_as_before():
    from sklearn.model_selection import train_test_split

    from medclass.data.splits import stratified_split

    labels = np.random.default_rng(0).integers(0, 4, 500)
    out = stratified_split(labels, val_fraction=0.15, test_fraction=0.15, seed=3)
    _, test = train_test_split(np.arange(500), test_size=0.15, random_state=3, stratify=labels)
    assert sorted(np.flatnonzero(out == "test").tolist()) == sorted(test.tolist())
    rest = np.flatnonzero(out != "test")
    _, valid = train_test_split(rest, test_size=0.15 / 0.85, random_state=4, stratify=labels[rest])
    assert sorted(np.flatnonzero(out == "valid").tolist()) == sorted(valid.tolist())


def test_a_lone_train_folder_is_split_into_train_valid_and_test(tmp_path):
    from medclass.data import build_index

    root = make_folder_dataset(tmp_path / "data", splits={"train": 10})
    index = build_index(DataConfig(source=str(root), val_fraction=0.2, test_fraction=0.2))
    counts = {s: len(v) for s, v in index.splits.items()}
    assert counts == {"train": 12, "valid": 4, "test": 4}
    assert all({x.label for x in index.splits[s]} == {0, 1} for s in ("valid", "test"))


def test_train_and_val_folders_without_test_are_scored_on_valid_and_say_so(tmp_path):
    root = make_folder_dataset(tmp_path / "data", splits={"train": 6, "val": 3})
    r = CliRunner().invoke(app, ["train", str(root), "--runs-dir", str(tmp_path / "runs"), "--name", "r",
                                 "--epochs", "1", "--image-size", "16", "--batch-size", "4",
                                 "--set", "model.stem=small", "--set", "train.progress=false"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "no test split" in out and "optimistic" in out
    m = json.loads((tmp_path / "runs" / "r" / "eval-valid" / "metrics.json").read_text())
    assert m["split"] == "valid" and m["n"] == 6
    assert not (tmp_path / "runs" / "r" / "eval-test").exists()


def test_class_folders_spelled_differently_per_split_are_one_class(tmp_path):
    from medclass.data.sources import match_class_names

    root = tmp_path / "data"
    spelled = {"train": ("NORMAL", "no_tumor"), "val": ("Normal", "notumor"), "test": ("normal", "No-Tumor")}
    for split, names in spelled.items():
        for value, name in zip((60, 180), names):
            for i in range(4):
                _png(root / split / name / f"{i}.png", value=value + i)
    index = index_folder(root, DataConfig(source=str(root)))
    assert index.class_names == ["NORMAL", "no_tumor"]  # as the training split spells them
    assert index.counts() == {s: {"NORMAL": 4, "no_tumor": 4} for s in ("train", "valid", "test")}
    # side by side in one split they stay two classes
    assert match_class_names(["Normal", "normal"], None, [["Normal", "normal"]]) == {"Normal": "Normal",
                                                                                     "normal": "normal"}


def test_masks_inside_class_folders_are_named_in_a_warning(tmp_path, capsys):
    # the COVID-19 Radiography Database's layout: <class>/images/ beside <class>/masks/
    root = tmp_path / "data"
    for value, cls in ((60, "COVID"), (180, "Normal")):
        for i in range(6):
            _png(root / cls / "images" / f"{cls}-{i}.png", value=value + i)
            _png(root / cls / "masks" / f"{cls}-{i}.png", value=255)
    index = index_folder(root, DataConfig(source=str(root)))
    assert len(index.notes) == 2
    assert f"{root / 'COVID' / 'masks'}/ holds 6 images" in index.notes[0] and "'COVID'" in index.notes[0]
    cfg = tiny_config(root, epochs=1)
    train(cfg, tmp_path / "run")
    assert f"warning: {index.notes[1]}" in capsys.readouterr().out
    plain = index_folder(make_folder_dataset(tmp_path / "plain", per_class=4), DataConfig(source=str(tmp_path / "plain")))
    assert plain.notes == []


def test_a_small_validation_split_is_warned_about_with_what_to_change(tmp_path, capsys):
    from medclass.data import build_index
    from medclass.data import small_validation_note

    given = make_folder_dataset(tmp_path / "given", splits={"train": 12, "val": 8, "test": 3})
    note = small_validation_note(build_index(DataConfig(source=str(given))))
    assert "16 images" in note and "bright 8, dark 8" in note
    assert "moves its recall by 12 points and the balanced accuracy by 6.2" in note
    assert "move images from train/" in note
    made = build_index(DataConfig(source=str(make_folder_dataset(tmp_path / "made", per_class=12)),
                                  val_fraction=0.25, test_fraction=0.25))
    assert "raise data.val_fraction" in small_validation_note(made)
    roomy = build_index(DataConfig(source=str(make_folder_dataset(tmp_path / "roomy", splits={"train": 4, "val": 10}))))
    assert small_validation_note(roomy) is None
    from medclass.data import DataIndex

    lone = DataIndex(["a", "b"], {"train": [Sample("x", 0), Sample("y", 1)], "valid": [Sample("z", 0)] * 12})
    assert "no validation image of b" in small_validation_note(lone)
    train(tiny_config(given, epochs=1), tmp_path / "run")
    assert f"warning: {note}" in capsys.readouterr().out


def test_a_csv_saved_by_excel_on_windows_is_read_with_a_note(tmp_path):
    # Windows-1252, semicolons, spaces after them, a capitalised split column, ISIC's label column
    from medclass.data import build_index

    for i in range(12):
        _png(tmp_path / "images" / f"im{i}.png", value=10 * i)
    lines = ["image_id; benign_malignant; Split"] + [
        f"im{i}; {'bösartig' if i % 2 else 'gutartig'}; {['train', 'train', 'valid', 'test'][i % 4 if i < 8 else 0]}"
        for i in range(12)]
    (tmp_path / "meta.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))
    index = build_index(DataConfig(source=str(tmp_path / "meta.csv")))
    assert index.class_names == ["bösartig", "gutartig"]
    assert {s: len(v) for s, v in index.splits.items()} == {"train": 8, "valid": 2, "test": 2}
    assert len(index.notes) == 1 and "cp1252" in index.notes[0] and "UTF-8" in index.notes[0]
    (tmp_path / "utf8.csv").write_text("path,label\n" + "".join(f"images/im{i}.png,{'ab'[i % 2]}\n" for i in range(12)),
                                       encoding="utf-8")
    assert build_index(DataConfig(source=str(tmp_path / "utf8.csv"))).notes == []


def test_the_audit_reports_the_indexing_warnings(tmp_path):
    root = tmp_path / "data"
    for value, cls in ((60, "COVID"), (180, "Normal")):
        for i in range(4):
            _png(root / cls / "images" / f"{i}.png", value=value + i)
            _png(root / cls / "masks" / f"{i}.png", value=255)
    r = CliRunner().invoke(app, ["audit", str(root), "--out", str(tmp_path / "audit")])
    assert r.exit_code == 0, r.output
    assert f"warning: {root / 'COVID' / 'masks'}/ holds 4 images" in " ".join(r.output.split())
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert len(report["notes"]) == 3 and "fewer than 10 in some classes" in report["notes"][2]  # 8 images in all
    assert "- warning: " in (tmp_path / "audit" / "audit.md").read_text()


def test_symlinked_folders_inside_class_folders_are_followed_once(tmp_path):
    store = tmp_path / "store"
    for i in range(4):
        _png(store / "a" / f"{i}.png", value=20 * i)
        _png(store / "b" / f"{i}.png", value=200 - 20 * i)
    root = tmp_path / "data"
    (root / "benign").mkdir(parents=True)
    (root / "benign" / "from-site-1").symlink_to(store / "a", target_is_directory=True)
    (root / "malignant").mkdir()
    (root / "malignant" / "scans").symlink_to(store / "b", target_is_directory=True)
    (store / "b" / "again").symlink_to(store / "b", target_is_directory=True)  # a cycle
    index = index_folder(root, DataConfig(source=str(root)))
    per_class = {c: sum(n for split in index.counts().values() for cc, n in split.items() if cc == c)
                 for c in index.class_names}
    assert per_class == {"benign": 4, "malignant": 4}
    assert len(expand_image_paths([root / "malignant"])) == 4


def test_csv_ids_are_found_in_sub_folders_and_paths_under_data_image_root(tmp_path):
    from medclass.data import build_index

    # ISIC 2020 on Kaggle: train.csv beside jpeg/train/ISIC_*.jpg
    for i in range(8):
        _png(tmp_path / "isic" / "jpeg" / "train" / f"ISIC_{i:07d}.png", value=20 * i)
    (tmp_path / "isic" / "train.csv").write_text(
        "image_name,patient_id,target\n" + "".join(f"ISIC_{i:07d},p{i},{i % 2}\n" for i in range(8)))
    index = build_index(DataConfig(source=str(tmp_path / "isic" / "train.csv"), val_fraction=0.25, test_fraction=0.25))
    assert sum(len(v) for v in index.splits.values()) == 8
    # a name found in two sub-folders is not guessed
    _png(tmp_path / "isic" / "jpeg" / "test" / "ISIC_0000003.png")
    with pytest.raises(DataError, match="1 of 8 ids have no image file"):
        build_index(DataConfig(source=str(tmp_path / "isic" / "train.csv")))
    # labels/labels.csv whose paths are relative to the data set's root, not to the CSV
    for i in range(8):
        _png(tmp_path / "ds" / "scans" / f"{i}.png", value=30 * i)
    (tmp_path / "ds" / "labels").mkdir()
    (tmp_path / "ds" / "labels" / "labels.csv").write_text(
        "path,label\n" + "".join(f"scans/{i}.png,{'ab'[i % 2]}\n" for i in range(8)))
    with pytest.raises(DataError) as e:
        build_index(DataConfig(source=str(tmp_path / "ds" / "labels" / "labels.csv")))
    assert "8 of 8 paths have no image file" in str(e.value) and "data.image_root" in str(e.value)
    index = build_index(DataConfig(source=str(tmp_path / "ds" / "labels" / "labels.csv"),
                                   image_root=str(tmp_path / "ds"), val_fraction=0.25, test_fraction=0.25))
    assert sum(len(v) for v in index.splits.values()) == 8


def test_multi_label_csv_labels_are_named_in_a_warning(tmp_path):
    from medclass.data import build_index

    for i in range(9):
        _png(tmp_path / "images" / f"{i:08d}_000.png", value=20 * i)
    labels = ["No Finding", "Effusion", "Effusion|Mass"] * 3
    (tmp_path / "Data_Entry.csv").write_text(
        "Image Index,Finding Labels,Patient ID\n" + "".join(f"{i:08d}_000.png,{lab},{i}\n" for i, lab in enumerate(labels)))
    index = build_index(DataConfig(source=str(tmp_path / "Data_Entry.csv"), path_column="Image Index",
                                   label_column="Finding Labels", group_column="Patient ID",
                                   image_root=str(tmp_path / "images"), val_fraction=0.3, test_fraction=0.3))
    assert index.class_names == ["Effusion", "Effusion|Mass", "No Finding"]
    assert len(index.notes) == 1 and "3 of 9 labels" in index.notes[0] and "'Effusion|Mass'" in index.notes[0]


def test_a_home_folder_tilde_in_a_yaml_config_is_expanded(tmp_path, monkeypatch):
    from medclass.core.config import RunConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    make_folder_dataset(tmp_path / "data", per_class=4)
    (tmp_path / "run.yaml").write_text("data:\n  source: ~/data\n  cache_dir: ~/cache\nmodel:\n  pretrained: null\n")
    cfg = RunConfig.load(tmp_path / "run.yaml")
    assert cfg.data.source == str(tmp_path / "data") and cfg.data.cache_dir == str(tmp_path / "cache")
    from medclass.data import build_index

    assert build_index(cfg.data).class_names == ["bright", "dark"]
