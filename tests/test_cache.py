"""The decode cache: uint8 memory-mapped .npy at the training size, keyed by content and settings."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medclass.data import ImageReadError, Sample, decode_split


def _images(root, n=6, size=30):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)).save(p)
        out.append(Sample(str(p), i % 2))
    return out


def test_second_decode_maps_the_cache_and_equals_a_fresh_decode(tmp_path):
    samples = _images(tmp_path / "img")
    cache = tmp_path / "cache"
    first = decode_split(samples, 3, 16, progress=False, cache_dir=cache)
    second = decode_split(samples, 3, 16, progress=False, cache_dir=cache)
    plain = decode_split(samples, 3, 16, progress=False)
    assert not first.cache_hit and second.cache_hit
    assert second.images.dtype == torch.uint8 and second.images.shape == (6, 3, 16, 16)
    assert torch.equal(second.images, plain.images) and torch.equal(second.labels, plain.labels)
    assert isinstance(np.load(second.cache_path, mmap_mode="r"), np.memmap)
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]  # no temporary left behind


def test_changed_file_or_setting_builds_a_new_entry_and_renamed_folder_does_not(tmp_path):
    samples = _images(tmp_path / "img")
    cache = tmp_path / "cache"
    base = decode_split(samples, 3, 16, progress=False, cache_dir=cache)
    assert decode_split(samples, 3, 20, progress=False, cache_dir=cache).cache_hit is False  # size
    assert decode_split(samples, 1, 16, progress=False, cache_dir=cache).cache_hit is False  # channels
    # same content under another folder name: still the same entry
    moved = tmp_path / "moved"
    (tmp_path / "img").rename(moved)
    renamed = [Sample(str(moved / f"{i}.png"), s.label) for i, s in enumerate(samples)]
    assert decode_split(renamed, 3, 16, progress=False, cache_dir=cache).cache_hit is True
    # one file changed: rebuilt, and the new pixels are what comes back
    Image.fromarray(np.zeros((30, 37, 3), np.uint8)).save(moved / "2.png")
    changed = decode_split(renamed, 3, 16, progress=False, cache_dir=cache)
    assert changed.cache_hit is False
    assert changed.images[2].max() == 0 and not torch.equal(changed.images, base.images)


def test_cached_skips_are_kept_and_strict_mode_still_raises(tmp_path):
    samples = _images(tmp_path / "img", n=4)
    bad = tmp_path / "img" / "bad.png"
    bad.write_bytes(b"not a png")
    samples.append(Sample(str(bad), 1))
    cache = tmp_path / "cache"
    out = decode_split(samples, 3, 8, skip_corrupt=True, progress=False, cache_dir=cache)
    again = decode_split(samples, 3, 8, skip_corrupt=True, progress=False, cache_dir=cache)
    assert again.cache_hit and len(again) == 4 and again.skipped[0][0] == str(bad)
    assert torch.equal(out.images, again.images)
    with pytest.raises(ImageReadError, match="bad.png"):
        decode_split(samples, 3, 8, skip_corrupt=False, progress=False, cache_dir=cache)


def test_damaged_entry_is_rebuilt(tmp_path):
    samples = _images(tmp_path / "img")
    cache = tmp_path / "cache"
    first = decode_split(samples, 3, 16, progress=False, cache_dir=cache)
    first.cache_path.write_bytes(b"\x93NUMPY garbage")
    again = decode_split(samples, 3, 16, progress=False, cache_dir=cache)
    assert not again.cache_hit
    assert torch.equal(again.images, decode_split(samples, 3, 16, progress=False).images)
    assert json.loads(first.cache_path.with_suffix(".json").read_text())["size"] == 16


def test_unwritable_cache_folder_is_a_clear_error(tmp_path):
    samples = _images(tmp_path / "img", n=2)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="data.cache_dir"):
        decode_split(samples, 3, 8, progress=False, cache_dir=blocker / "cache")


def test_worker_processes_load_the_same_batches_from_the_mapped_cache(tmp_path):
    from medclass.core.config import RunConfig
    from medclass.engine.fit import make_loader

    samples = _images(tmp_path / "img", n=10)
    split = decode_split(samples, 3, 8, progress=False, cache_dir=tmp_path / "cache")
    cfg = RunConfig()
    cfg.train.batch_size = 4
    batches = {}
    for workers in (0, 2):
        cfg.train.num_workers = workers
        loader = make_loader(cfg, split, torch.Generator().manual_seed(3))
        batches[workers] = [(x.clone(), y.clone()) for x, y in loader]
    assert len(batches[0]) == 2  # 10 images, batch 4, last partial batch dropped
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2]):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
