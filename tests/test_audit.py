"""Data audit: planted duplicates, near duplicates, leaked groups and broken files are found, and
dedupe removes exactly the held-out copies; on the real chest CT set the train/test leak is found."""

import filecmp
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from typer.testing import CliRunner

from medclass.cli.app import app
from medclass.core.config import DataConfig
from medclass.data import DataIndex, Sample, build_index, read_manifest
from medclass.data.audit import NEAR_THRESHOLD, audit, cross_split_duplicates, dedupe, write_audit

runner = CliRunner()


def smooth_image(seed, size=96):
    """A distinct smooth RGB image: random 10x10 colours upsampled. Its perceptual hash is stable
    (a JPEG re-save at quality 90 or 8% more brightness moved it by <= 2 bits in 60 of 60 seeds;
    with 6x6 or 4x4 colours the DCT coefficients crowd the median and bits flip)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def planted(root):
    """train/valid/test/<a|b>/ of distinct images plus planted copies; returns what was planted."""
    seed = iter(range(1000))
    for split, n in (("train", 6), ("valid", 2), ("test", 3)):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                smooth_image(next(seed)).save(d / f"{cls}{i}.png")
    t = root / "train"
    plants = {
        # exact copies of train images in held-out splits
        "test_exact": shutil.copy(t / "a" / "a0.png", root / "test" / "a" / "leak.png"),
        "valid_exact": shutil.copy(t / "b" / "b1.png", root / "valid" / "b" / "leak.png"),
        # identical content, different label: a train "a" image in test/b
        "conflict": shutil.copy(t / "a" / "a4.png", root / "test" / "b" / "conflict.png"),
        # a copy of a valid image in test (no train copy)
        "valid_test": shutil.copy(root / "valid" / "b" / "b0.png", root / "test" / "b" / "vt.png"),
        # a duplicate within train only: never removed
        "train_within": shutil.copy(t / "b" / "b2.png", t / "b" / "b2 - Copy.png"),
    }
    # near duplicates: a JPEG re-save at quality 90 (test) and a 8% brighter copy (valid)
    Image.open(t / "b" / "b3.png").save(root / "test" / "b" / "near.jpg", quality=90)
    ImageEnhance.Brightness(Image.open(t / "a" / "a2.png")).enhance(1.08).save(root / "valid" / "a" / "bright.png")
    plants["test_near"] = root / "test" / "b" / "near.jpg"
    plants["valid_near"] = root / "valid" / "a" / "bright.png"
    # an unreadable file
    broken = root / "test" / "a" / "broken.png"
    broken.write_bytes((t / "a" / "a1.png").read_bytes()[:60])
    plants["broken"] = broken
    return {k: str(v) for k, v in plants.items()}


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "data"
    plants = planted(root)
    return root, build_index(DataConfig(source=str(root))), plants


def paths_of(items):
    return {i["path"] for i in items}


def test_audit_finds_counts_sizes_duplicates_and_broken_files(data):
    root, index, plants = data
    report = audit(index, source=str(root))
    json.dumps(report)  # JSON-serialisable
    assert report["counts"]["train"] == {"a": 6, "b": 7} and report["counts"]["test"] == {"a": 5, "b": 6}
    assert report["n_images"] == 13 + 6 + 11
    train = report["images"]["train"]
    assert train["width"] == {"min": 96, "median": 96.0, "max": 96} and train["common_sizes"] == [[[96, 96], 13]]
    assert report["images"]["test"]["modes"] == {"RGB": 10} and report["images"]["test"]["formats"] == {"PNG": 9, "JPEG": 1}

    assert [(u["path"], u["split"]) for u in report["unreadable"]] == [(plants["broken"], "test")]
    assert "not a readable image" in report["unreadable"][0]["reason"]

    ex = report["exact_duplicates"]
    assert ex["n_groups"] == 5 and ex["n_cross_split"] == 4 and ex["n_within_split"] == 1
    groups = {frozenset(paths_of(g["items"])): g for g in ex["groups"]}
    a0 = str(root / "train" / "a" / "a0.png")
    assert groups[frozenset({a0, plants["test_exact"]})]["splits"] == {"train": 1, "test": 1}
    within = groups[frozenset({str(root / "train" / "b" / "b2.png"), plants["train_within"]})]
    assert not within["cross_split"] and within["splits"] == {"train": 2}
    assert groups[frozenset({str(root / "valid" / "b" / "b0.png"), plants["valid_test"]})]["cross_split"]

    conflicts = report["label_conflicts"]
    assert len(conflicts) == 1 and conflicts[0]["labels"] == ["a", "b"]
    assert paths_of(conflicts[0]["items"]) == {str(root / "train" / "a" / "a4.png"), plants["conflict"]}

    nd = report["near_duplicates"]
    assert nd["threshold"] == NEAR_THRESHOLD
    found = {frozenset((p["a"]["path"], p["b"]["path"])): p for p in nd["pairs"]}
    assert set(found) == {
        frozenset({str(root / "train" / "b" / "b3.png"), plants["test_near"]}),
        frozenset({str(root / "train" / "a" / "a2.png"), plants["valid_near"]}),
    }  # exact copies are not repeated as near pairs, and distinct images are far apart
    for p in found.values():
        assert p["cross_split"] and p["same_label"] and p["distance"] <= NEAR_THRESHOLD
        assert p["a"]["split"] == "train"
    assert nd["n_groups"] == 2 and nd["n_cross_split"] == 2
    assert report["groups_in_several_splits"] == []


def test_near_search_can_be_switched_off_and_threshold_zero(data):
    _, index, _ = data
    off = audit(index, near=False)
    assert off["near_duplicates"]["n_pairs"] == 0 and off["exact_duplicates"]["n_groups"] == 5
    with pytest.raises(ValueError, match="0..64"):
        audit(index, near_threshold=65)


def test_cross_split_duplicates_lists_exact_then_near(data):
    root, index, plants = data
    pairs = cross_split_duplicates(index)
    kinds = [p["kind"] for p in pairs]
    assert kinds == ["exact"] * 4 + ["near"] * 2
    assert all(p["a"]["split"] != p["b"]["split"] for p in pairs)
    exact_only = cross_split_duplicates(index, near=False)
    assert len(exact_only) == 4


def test_dedupe_removes_exactly_the_held_out_copies_and_never_train(data):
    root, index, plants = data
    before = {s: list(v) for s, v in index.splits.items()}
    out, removed = dedupe(index)
    assert index.splits == before  # the input is not modified
    assert out.splits["train"] == index.splits["train"]
    expected = {plants[k] for k in ("valid_exact", "valid_near", "test_exact", "test_near", "conflict", "valid_test")}
    assert {r["path"] for r in removed} == expected
    assert {r["path"] for r in removed if r["split"] == "valid"} == {plants["valid_exact"], plants["valid_near"]}
    for s in ("valid", "test"):
        kept = {x.path for x in out.splits[s]}
        assert kept == {x.path for x in index.splits[s]} - expected
    vt = next(r for r in removed if r["path"] == plants["valid_test"])
    assert vt["kind"] == "exact" and vt["duplicate_of"]["split"] == "valid"
    near = next(r for r in removed if r["path"] == plants["test_near"])
    assert near["kind"] == "near" and near["duplicate_of"]["path"].endswith("b3.png")
    # exact only: the near copies stay
    _, removed_exact = dedupe(index, near=False)
    assert {r["path"] for r in removed_exact} == expected - {plants["valid_near"], plants["test_near"]}
    # nothing left to remove after a dedupe
    assert dedupe(out)[1] == []


def test_dedupe_checks_test_against_kept_valid_only(tmp_path):
    img = tmp_path / "x.png"
    smooth_image(1).save(img)
    copies = [shutil.copy(img, tmp_path / f"{s}.png") for s in ("train", "valid", "test")]
    index = DataIndex(["a"], {s: [Sample(str(p), 0)] for s, p in zip(("train", "valid", "test"), copies)})
    out, removed = dedupe(index)
    assert [len(out.splits[s]) for s in ("train", "valid", "test")] == [1, 0, 0]
    assert [r["duplicate_of"]["split"] for r in removed] == ["train", "train"]


def test_groups_in_several_splits(data):
    root, index, _ = data
    grouped = DataIndex(index.class_names, {
        s: [Sample(x.path, x.label, f"patient{i % 4}" if s != "valid" else f"v{i}") for i, x in enumerate(items)]
        for s, items in index.splits.items()
    })
    report = audit(grouped, near=False)
    leaked = {g["group"]: g["splits"] for g in report["groups_in_several_splits"]}
    assert set(leaked) == {"patient0", "patient1", "patient2", "patient3"}
    assert set(leaked["patient0"]) == {"train", "test"}
    item = report["exact_duplicates"]["groups"][0]["items"][0]
    assert "group" in item


def test_write_audit_and_cli(data, tmp_path):
    root, index, plants = data
    report = audit(index, source=str(root))
    j, md = write_audit(report, tmp_path / "rep")
    assert json.loads(j.read_text())["exact_duplicates"]["n_groups"] == 5
    text = md.read_text()
    assert "| class | train | valid | test | total |" in text and "## Exact duplicates" in text
    assert "test/a/leak.png" in text and "broken.png" in text

    out = tmp_path / "cli"
    manifest = tmp_path / "deduped.csv"
    result = runner.invoke(app, ["audit", str(root), "--out", str(out), "--dedupe-manifest", str(manifest)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "exact duplicate groups: 5 (4 across splits, 1 within one split" in result.output
    assert f"near duplicates (pHash distance <= {NEAR_THRESHOLD}): 2 pairs (2 across splits)" in result.output
    assert "unreadable files: 1" in result.output
    assert "dedupe: removed 2 valid and 4 test images" in result.output
    assert (out / "audit.json").is_file() and (out / "audit.md").is_file()
    again = read_manifest(manifest)
    assert len(again.splits["train"]) == 13 and len(again.splits["valid"]) == 4 and len(again.splits["test"]) == 7

    result = runner.invoke(app, ["audit", str(root), "--out", str(tmp_path / "x"), "--no-near", "--near-threshold", "3"])
    assert result.exit_code == 0 and "near duplicates" not in result.output
    result = runner.invoke(app, ["audit", str(root), "--out", str(tmp_path / "y"), "--near-threshold", "99"])
    assert result.exit_code == 2 and "0..64" in result.output


def test_cli_audit_of_a_csv_with_groups(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    rows = ["path,label,lesion_id,split"]
    for i in range(8):
        smooth_image(i).save(folder / f"{i}.png")
        rows.append(f"img/{i}.png,{'x' if i % 2 else 'y'},L{i // 2},{'train' if i < 5 else 'test' if i > 5 else 'valid'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    result = runner.invoke(app, ["audit", str(tmp_path / "m.csv"), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rep" / "audit.json").read_text())
    assert [g["group"] for g in report["groups_in_several_splits"]] == ["L2"]  # images 4 (train) and 5 (valid)
    assert "groups (patient/lesion) in several splits: 1" in result.output


@pytest.mark.integration
def test_chest_ct_train_test_leak_is_found(shared_data):
    data = shared_data / "chest-ct"
    if not data.exists():
        pytest.skip(f"{data} not present")
    index = build_index(DataConfig(source=str(data)))
    report = audit(index, source=str(data))
    assert report["n_images"] == 944 and sum(report["counts"]["test"].values()) == 259
    assert report["unreadable"] == []
    ex = report["exact_duplicates"]
    cross = [g for g in ex["groups"] if g["cross_split"]]
    # measured on this copy (read-only): 59 groups of identical files, 22 of them across splits
    # (14 train+test, 5 train+valid+test, 3 train+valid), 37 within one split ("7 - Copy.png")
    assert ex["n_groups"] == 59 and ex["n_cross_split"] == len(cross) == 22 and ex["n_within_split"] == 37
    train_test = [g for g in cross if "train" in g["splits"] and "test" in g["splits"]]
    assert len(train_test) == 19  # the README's "about 20 groups in both train/ and test/"
    assert sum(g["splits"].get("test", 0) for g in cross) == 46
    for g in train_test[:5]:  # really byte-identical files
        first, *rest = [i["path"] for i in g["items"]]
        assert all(filecmp.cmp(first, other, shallow=False) for other in rest)
    # one image is filed under two classes (train large cell l4.png == train squamous sq2.png)
    assert [c["labels"] for c in report["label_conflicts"]] == [["large.cell.carcinoma", "squamous.cell.carcinoma"]]
    assert report["near_duplicates"]["n_pairs"] > 0

    out, removed = dedupe(index, near=False)
    assert out.splits["train"] == index.splits["train"]
    assert sum(r["split"] == "test" for r in removed) == 46 and sum(r["split"] == "valid" for r in removed) == 10
    assert len(out.splits["test"]) == 259 - 46
    for r in removed:
        assert filecmp.cmp(r["path"], r["duplicate_of"]["path"], shallow=False)
