"""Auditing a data set before training: counts, sizes, unreadable files, duplicates and leakage.

An honest evaluation needs held-out images that the model has not seen. Public medical data
sets often break this: the Kaggle chest CT set has identical files in ``train/`` and ``test/``,
HAM10000 has several photos of one lesion. :func:`audit` finds, over all splits of a
:class:`~medclass.data.sources.DataIndex`:

* images per class and split; image sizes (pixels) and Pillow modes/formats per split;
* unreadable files (path and reason);
* exact duplicates: identical bytes (BLAKE2b-128 of the file, :func:`~medclass.data.dataset.file_digest`;
  of the array for MedMNIST ``.npz`` items), grouped, each group within one split or across splits;
* near duplicates: images whose 64-bit perceptual hash (DCT hash, ``imagehash.phash``; Zauner
  2010, "Implementation and Benchmarking of Perceptual Image Hash Functions", Hagenberg) differs
  in at most ``near_threshold`` of 64 bits; pairs that are exact duplicates are not repeated;
* groups (the ``Sample.group``: patient, lesion) present in more than one split;
* label conflicts: identical content with different labels.

Limits of the near-duplicate search: pHash sees the 8x8 lowest frequencies of a 32x32 greyscale
thumbnail, so a crop or a shift is not caught, and images that share one layout (a dark lesion in
the middle of skin) can pair up although they differ. On nearly left-right symmetric images with
a black background (axial brain MRI) many of those coefficients are close to their median and
bits flip easily: a JPEG re-save at quality 90 moved the hash by 0-32 bits (half of 100 images by more than 4) on
brain-tumor-mri-yn, so near copies there are found only in part. See :data:`NEAR_THRESHOLD`.

:func:`dedupe` removes the leaked copies from the held-out splits; the training split is never
changed. :func:`write_audit` writes ``audit.json`` and a readable ``audit.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image
from ..core.fileio import atomic_write_text
from ..core.progress import Progress

from .dataset import _npz_images, file_digest
from .pixels import ImageReadError, to_channels
from .sources import NPZ_SEP, SPLITS, DataIndex, Sample, small_validation_note

__all__ = [
    "NEAR_THRESHOLD",
    "audit",
    "cross_split_duplicates",
    "dedupe",
    "write_audit",
    "audit_markdown",
    "audit_summary",
    "image_fingerprint",
    "Fingerprint",
]

#: Largest Hamming distance (bits of 64) between two pHashes that counts as a near duplicate.
#: pHash (Zauner 2010; the ``imagehash`` implementation: 32x32 greyscale, 2D DCT, the 8x8 lowest
#: frequencies against their median) is built to survive re-encoding, rescaling and small
#: brightness/contrast changes. Its bits are balanced (32 above the median), so distances are
#: even: 2 and 3 are the same threshold. Measured with medclass on ../shared/data (chest-ct, 60
#: train images, each edited): a JPEG re-save at quality 90 or 75 and a 2x downscale moved the
#: hash by at most 2 bits; +10% brightness by <= 2 in 59 of 60 (4 once), +10% contrast by <= 2 in
#: 58 of 60 (4 and 6 once); a 5% crop by 2-18 bits (crops are not caught). False pairs grow fast
#: above 2 where images share one layout: on ham10000-subset (dermoscopy, a dark lesion in the
#: middle of skin) pairs of *different* lesion_id are 1 of 18 pairs at <= 2, 20 of 46 at <= 4 and
#: 90 of 124 at <= 6 (different lesions that merely look alike). On chest-ct the pairs at 4-6 are
#: mostly the same slice with other annotation marks or the next slice of the same scan (3% of the
#: pairs at 6 have different labels, 14% at 8, 45% at 12, about chance). Since :func:`dedupe`
#: deletes held-out images on this evidence, the default is the precise 2; for review of CT-like
#: sets, 4-6 find more (``--near-threshold``), and everything above ~6 needs looking at.
NEAR_THRESHOLD = 2

#: Rows of the pairwise Hamming distance matrix computed at once (memory: rows x N x 8 bytes).
_BLOCK = 512


@dataclass(frozen=True)
class Fingerprint:
    """What the audit knows of one image: content ``digest`` (None: the file is missing),
    64-bit ``phash`` (None: unreadable), ``width``/``height`` in pixels, Pillow ``mode`` and
    ``format`` (``"DICOM"`` for DICOM, whose mode is its PhotometricInterpretation), and
    ``error`` (why it cannot be read, else None)."""

    digest: Optional[str]
    phash: Optional[int]
    width: Optional[int] = None
    height: Optional[int] = None
    mode: Optional[str] = None
    format: Optional[str] = None
    error: Optional[str] = None


def _phash64(img: Image.Image) -> int:
    """64-bit pHash of an image as an int (greyscale with alpha composited over black, as the
    model sees it; ``imagehash.phash`` with ``hash_size=8``)."""
    import imagehash

    bits = imagehash.phash(to_channels(img, 1), hash_size=8).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _fingerprint_file(path: str) -> Fingerprint:
    digest = file_digest(path)
    if digest == "missing":
        return Fingerprint(None, None, error="no such file")
    from .dicom import DICOM_EXTENSIONS, is_dicom_file, read_dicom

    try:
        if os.path.getsize(path) == 0:
            return Fingerprint(digest, None, error="the file is empty")
        if Path(path).suffix.lower() in DICOM_EXTENSIONS or is_dicom_file(path):
            import pydicom

            arr = read_dicom(path, 1)[:, :, 0]  # raises ImageReadError for what medclass cannot read
            header = pydicom.dcmread(path, stop_before_pixels=True)
            mode = str(header.get("PhotometricInterpretation", "MONOCHROME2"))
            return Fingerprint(digest, _phash64(Image.fromarray(arr, "L")), arr.shape[1], arr.shape[0], mode, "DICOM")
        with Image.open(path) as img:
            img.load()
            return Fingerprint(digest, _phash64(img), img.width, img.height, img.mode, img.format)
    except ImageReadError as e:
        return Fingerprint(digest, None, error=e.reason)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return Fingerprint(digest, None, error=f"not a readable image ({type(e).__name__}: {e})")


@lru_cache(maxsize=65536)
def _fingerprint_cached(path: str, size: int, mtime_ns: int) -> Fingerprint:
    return _fingerprint_file(path)


def image_fingerprint(path: str) -> Fingerprint:
    """The :class:`Fingerprint` of one image (a file, or ``"<file.npz>::<split>::<i>"``).

    Never raises: an unreadable image gets ``error``. Memoised per process by
    ``(path, size, mtime)`` like :func:`~medclass.data.dataset.file_digest`, so :func:`audit`
    then :func:`dedupe` decode each file once.
    """
    if NPZ_SEP in path:
        npz, prefix, i = path.split(NPZ_SEP)
        try:
            arr = np.ascontiguousarray(_npz_images(npz, prefix)[int(i)])
        except (OSError, KeyError, ValueError, IndexError) as e:
            return Fingerprint(None, None, error=f"cannot read item of {npz}: {e}")
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
        img = Image.fromarray(arr)
        return Fingerprint(h.hexdigest(), _phash64(img), img.width, img.height, img.mode, "NPZ")
    try:
        st = os.stat(path)
    except OSError:
        return Fingerprint(None, None, error="no such file")
    return _fingerprint_cached(path, st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------- pairwise distances


def _popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (``np.bitwise_count`` on NumPy >= 2, else a byte table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)


def _near_pairs(hashes: np.ndarray, threshold: int) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` with i < j for every pair of 64-bit hashes at Hamming distance
    <= ``threshold``: all N(N-1)/2 pairs, vectorised in blocks of rows (N of a few thousand
    takes well under a second)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    out: list[tuple[int, int, int]] = []
    for start in range(0, n, _BLOCK):
        block = hashes[start : start + _BLOCK]
        dist = _popcount64(block[:, None] ^ hashes[None, :])
        rows, cols = np.nonzero(dist <= threshold)
        keep = cols > rows + start
        for r, c in zip(rows[keep], cols[keep]):
            out.append((int(r) + start, int(c), int(dist[r, c])))
    return out


# --------------------------------------------------------------------------- the audit


_SPLIT_ORDER = {s: i for i, s in enumerate(SPLITS)}


def _entries(index: DataIndex) -> list[tuple[str, int, Sample]]:
    """``(split, position in split, sample)`` of every sample, splits in train/valid/test order."""
    splits = sorted(index.splits, key=lambda s: (_SPLIT_ORDER.get(s, len(SPLITS)), s))
    return [(s, i, x) for s in splits for i, x in enumerate(index.splits[s])]


def _fingerprints(paths: Sequence[str], threads: int, progress: bool) -> dict[str, Fingerprint]:
    unique = list(dict.fromkeys(paths))
    # a bar on a terminal, a line every log interval in a log (medclass.core.progress)
    bar = Progress("audit: reading and hashing images (duplicate check)", len(unique), "images", enabled=progress)
    out: dict[str, Fingerprint] = {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # Pillow and the DCT release the GIL
        for p, fp in zip(unique, pool.map(image_fingerprint, unique)):
            out[p] = fp
            bar.update(1)
    bar.close()
    return out


class _Scan:
    """Fingerprints of every sample of an index, exact groups and near pairs (content level)."""

    def __init__(self, index: DataIndex, near_threshold: int, near: bool, threads: int, progress: bool):
        if not 0 <= int(near_threshold) <= 64:
            raise ValueError(f"near_threshold must be 0..64 bits of the 64-bit pHash, got {near_threshold}")
        self.index = index
        self.entries = _entries(index)
        self.fp = _fingerprints([x.path for _, _, x in self.entries], threads, progress)
        by_digest: dict[str, list[int]] = defaultdict(list)
        for k, (_, _, x) in enumerate(self.entries):
            d = self.fp[x.path].digest
            if d is not None:
                by_digest[d].append(k)
        self.by_digest = dict(by_digest)
        self.contents = list(self.by_digest)  # one per distinct content
        self.near_pairs: list[tuple[str, str, int]] = []  # (digest a, digest b, distance)
        if near:
            hashed = [d for d in self.contents if self.fp[self.entries[self.by_digest[d][0]][2].path].phash is not None]
            hashes = np.array(
                [self.fp[self.entries[self.by_digest[d][0]][2].path].phash for d in hashed], dtype=np.uint64
            )
            self.near_pairs = [(hashed[i], hashed[j], dist) for i, j, dist in _near_pairs(hashes, int(near_threshold))]

    def item(self, k: int) -> dict[str, Any]:
        split, pos, x = self.entries[k]
        out = {"path": x.path, "split": split, "label": self.index.class_names[x.label]}
        if x.group is not None:
            out["group"] = x.group
        return out


def _size_stats(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "median": float(statistics.median(values)), "max": max(values)}


def audit(
    index: DataIndex,
    near_threshold: int = NEAR_THRESHOLD,
    near: bool = True,
    threads: int = 4,
    progress: bool = False,
    source: Optional[str] = None,
) -> dict[str, Any]:
    """Audit every split of ``index``; returns a JSON-serialisable report (a dict).

    Keys: ``source``, ``class_names``, ``n_images``, ``n_distinct`` (distinct contents),
    ``counts`` (split -> class -> images), ``images`` (per split: ``n``, ``width`` and ``height``
    min/median/max in pixels, ``common_sizes`` ``[[w, h], n]`` (top 5), ``modes``, ``formats``),
    ``unreadable`` (``path``, ``split``, ``reason``), ``exact_duplicates`` (``n_groups``,
    ``n_cross_split``, ``n_within_split``, ``groups``: each with ``digest``, ``cross_split``,
    ``splits`` (split -> n), ``labels``, ``items``), ``near_duplicates`` (``threshold``,
    ``n_pairs``/``n_cross_split_pairs``/``n_within_split_pairs``, ``pairs`` of images at Hamming
    distance <= threshold with different content (``a``, ``b``, ``distance``, ``cross_split``,
    ``same_label``), ``groups``: connected near-duplicate contents, flagged like the exact ones),
    ``groups_in_several_splits`` (``group``, ``splits``), ``label_conflicts`` (exact duplicates
    with different labels), ``notes`` (warnings: masks inside class folders, a CSV that is not
    UTF-8, a class with fewer than 10 validation images), ``settings`` and ``seconds``. Items name
    ``path``, ``split``, ``label`` (class name) and ``group`` when there is one. Splits listed are
    train, valid, test.

    ``near=False`` skips the perceptual hashing comparison (the images are still decoded, to find
    the unreadable ones and the sizes). ``threads`` decode in parallel.

    Raises:
        ValueError: ``near_threshold`` outside 0..64.
    """
    t0 = time.time()
    scan = _Scan(index, near_threshold, near, threads, progress)
    names = index.class_names
    split_names = [s for s in sorted(index.splits, key=lambda s: (_SPLIT_ORDER.get(s, len(SPLITS)), s))]

    images: dict[str, Any] = {}
    for split in split_names:
        fps = [scan.fp[x.path] for x in index.splits[split]]
        ok = [f for f in fps if f.error is None and f.width is not None]
        info: dict[str, Any] = {"n": len(fps), "n_readable": len(ok)}
        if ok:
            info["width"] = _size_stats([f.width for f in ok])
            info["height"] = _size_stats([f.height for f in ok])
            info["common_sizes"] = [[[w, h], n] for (w, h), n in Counter((f.width, f.height) for f in ok).most_common(5)]
            info["n_sizes"] = len({(f.width, f.height) for f in ok})
            info["modes"] = dict(Counter(f.mode for f in ok).most_common())
            info["formats"] = dict(Counter(f.format or "unknown" for f in ok).most_common())
        images[split] = info

    unreadable = [
        {"path": x.path, "split": s, "reason": scan.fp[x.path].error}
        for s, _, x in scan.entries if scan.fp[x.path].error is not None
    ]

    exact_groups = []
    for digest, ks in scan.by_digest.items():
        if len(ks) < 2:
            continue
        splits = Counter(scan.entries[k][0] for k in ks)
        labels = sorted({names[scan.entries[k][2].label] for k in ks})
        exact_groups.append({
            "digest": digest, "n": len(ks), "cross_split": len(splits) > 1,
            "splits": {s: splits[s] for s in split_names if s in splits}, "labels": labels,
            "label_conflict": len(labels) > 1, "items": [scan.item(k) for k in ks],
        })
    exact_groups.sort(key=lambda g: (not g["cross_split"], -g["n"], g["items"][0]["path"]))

    pairs, near_groups = _near_report(scan, split_names)
    group_splits: dict[str, Counter] = defaultdict(Counter)
    for s, _, x in scan.entries:
        if x.group is not None:
            group_splits[x.group][s] += 1
    leaked_groups = [
        {"group": g, "splits": {s: c[s] for s in split_names if s in c}}
        for g, c in sorted(group_splits.items()) if len(c) > 1
    ]
    import imagehash

    return {
        "source": source,
        "class_names": list(names),
        "given_splits": index.given_splits,
        "notes": index.notes + [n for n in [small_validation_note(index)] if n],
        "n_images": len(scan.entries),
        "n_distinct": len(scan.by_digest),
        "counts": index.counts(),
        "images": images,
        "unreadable": unreadable,
        "exact_duplicates": {
            "n_groups": len(exact_groups),
            "n_cross_split": sum(g["cross_split"] for g in exact_groups),
            "n_within_split": sum(not g["cross_split"] for g in exact_groups),
            "n_images_in_groups": sum(g["n"] for g in exact_groups),
            "groups": exact_groups,
        },
        "near_duplicates": {
            "enabled": near,
            "threshold": int(near_threshold),
            "n_pairs": len(pairs),
            "n_cross_split_pairs": sum(p["cross_split"] for p in pairs),
            "n_within_split_pairs": sum(not p["cross_split"] for p in pairs),
            "n_groups": len(near_groups),
            "n_cross_split": sum(g["cross_split"] for g in near_groups),
            "n_within_split": sum(not g["cross_split"] for g in near_groups),
            "pairs": pairs,
            "groups": near_groups,
        },
        "groups_in_several_splits": leaked_groups,
        "label_conflicts": [
            {"digest": g["digest"], "labels": g["labels"], "items": g["items"]} for g in exact_groups if g["label_conflict"]
        ],
        "settings": {
            "near_threshold": int(near_threshold), "near": near,
            "content_hash": "BLAKE2b-128 of the file bytes (of the array for .npz items)",
            "perceptual_hash": f"imagehash {imagehash.__version__} phash, 64 bits, of the greyscale image "
                               "(alpha over black)",
        },
        "seconds": round(time.time() - t0, 3),
    }


def _near_report(scan: _Scan, split_names: list[str]) -> tuple[list[dict], list[dict]]:
    """Sample-level near pairs (each content pair expanded to its images) and content-level
    connected groups."""
    pairs = []
    parent: dict[str, str] = {}

    def root(d: str) -> str:
        while parent.get(d, d) != d:
            parent[d] = parent.get(parent[d], parent[d])
            d = parent[d]
        return d

    for da, db, dist in scan.near_pairs:
        ra, rb = root(da), root(db)
        if ra != rb:
            parent[ra] = rb
        for ka in scan.by_digest[da]:
            for kb in scan.by_digest[db]:
                a, b = sorted((ka, kb))  # entries are in split order: a is the earlier split
                sa, sb = scan.entries[a][2], scan.entries[b][2]
                pairs.append({
                    "a": scan.item(a), "b": scan.item(b), "distance": dist,
                    "cross_split": scan.entries[a][0] != scan.entries[b][0], "same_label": sa.label == sb.label,
                })
    pairs.sort(key=lambda p: (not p["cross_split"], p["distance"], p["a"]["path"], p["b"]["path"]))
    members: dict[str, list[str]] = defaultdict(list)
    for d in {d for da, db, _ in scan.near_pairs for d in (da, db)}:
        members[root(d)].append(d)
    dist_in: dict[str, int] = defaultdict(int)
    for da, _, dist in scan.near_pairs:
        dist_in[root(da)] = max(dist_in[root(da)], dist)
    groups = []
    for r, ds in members.items():
        ks = sorted(k for d in ds for k in scan.by_digest[d])
        splits = Counter(scan.entries[k][0] for k in ks)
        labels = sorted({scan.index.class_names[scan.entries[k][2].label] for k in ks})
        groups.append({
            "n": len(ks), "n_distinct": len(ds), "max_distance": dist_in[r], "cross_split": len(splits) > 1,
            "splits": {s: splits[s] for s in split_names if s in splits}, "labels": labels,
            "items": [scan.item(k) for k in ks],
        })
    groups.sort(key=lambda g: (not g["cross_split"], -g["n"], g["items"][0]["path"]))
    return pairs, groups


# --------------------------------------------------------------------------- leakage and dedupe


def _cross_pairs(scan: _Scan) -> list[dict[str, Any]]:
    out = []
    for ks in scan.by_digest.values():
        for i, a in enumerate(ks):
            for b in ks[i + 1 :]:
                if scan.entries[a][0] != scan.entries[b][0]:
                    out.append({"kind": "exact", "distance": 0, "_a": a, "_b": b})
    for da, db, dist in scan.near_pairs:
        for ka in scan.by_digest[da]:
            for kb in scan.by_digest[db]:
                a, b = sorted((ka, kb))
                if scan.entries[a][0] != scan.entries[b][0]:
                    out.append({"kind": "near", "distance": dist, "_a": a, "_b": b})
    out.sort(key=lambda p: (p["kind"] != "exact", p["distance"], p["_a"], p["_b"]))
    return out


def cross_split_duplicates(
    index: DataIndex,
    near_threshold: int = NEAR_THRESHOLD,
    near: bool = True,
    threads: int = 4,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Every pair of images in different splits that are exact duplicates (``kind`` ``"exact"``,
    ``distance`` 0) or, with ``near``, near duplicates (``"near"``, pHash Hamming distance <=
    ``near_threshold``). Each pair: ``kind``, ``distance``, ``a`` (the image of the earlier split
    in train, valid, test order) and ``b``, each ``{"path", "split", "label"[, "group"]}``.
    Exact pairs come first, then near ones by distance.

    Raises:
        ValueError: ``near_threshold`` outside 0..64.
    """
    scan = _Scan(index, near_threshold, near, threads, progress)
    return [
        {"kind": p["kind"], "distance": p["distance"], "a": scan.item(p["_a"]), "b": scan.item(p["_b"])}
        for p in _cross_pairs(scan)
    ]


def dedupe(
    index: DataIndex,
    near: bool = True,
    near_threshold: int = NEAR_THRESHOLD,
    threads: int = 4,
    progress: bool = False,
) -> tuple[DataIndex, list[dict[str, Any]]]:
    """Remove leaked copies from the held-out splits; returns ``(new index, removed)``.

    A ``valid`` image is removed when it has an exact (or, with ``near``, a near) duplicate in
    ``train``; a ``test`` image when it has one in ``train`` or among the ``valid`` images that
    are kept (a valid copy removed for duplicating train no longer leaks into model selection).
    ``train`` is never changed, nor are duplicates inside one split. Each removed entry:
    ``path``, ``split``, ``label``, ``kind`` (exact/near), ``distance`` and ``duplicate_of``
    (``{"path", "split", "label"}`` of the copy that stays). Patients or lesions (``group``)
    present in several splits are not handled here: re-split with a group column for those.
    The input index is not modified.

    Raises:
        ValueError: ``near_threshold`` outside 0..64.
    """
    scan = _Scan(index, near_threshold, near, threads, progress)
    pairs = _cross_pairs(scan)  # exact first, then by distance: the first reason found is kept
    split_of = lambda k: scan.entries[k][0]  # noqa: E731
    removed: dict[int, dict[str, Any]] = {}
    for held_out, against in (("valid", ("train",)), ("test", ("train", "valid"))):
        for p in pairs:
            for k, other in ((p["_a"], p["_b"]), (p["_b"], p["_a"])):
                if split_of(k) == held_out and split_of(other) in against and other not in removed and k not in removed:
                    removed[k] = {**scan.item(k), "kind": p["kind"], "distance": p["distance"],
                                  "duplicate_of": scan.item(other)}
    out = DataIndex(list(index.class_names), {}, index.given_splits)
    positions = {(scan.entries[k][0], scan.entries[k][1]) for k in removed}
    for split, items in index.splits.items():
        out.splits[split] = [x for i, x in enumerate(items) if (split, i) not in positions]
    order = sorted(removed, key=lambda k: k)
    return out, [removed[k] for k in order]


# --------------------------------------------------------------------------- writing the report


def _rel(path: str, root: Optional[str]) -> str:
    if root and NPZ_SEP not in path:
        try:
            return os.path.relpath(path, root)
        except ValueError:
            return path
    return path


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _root_of(report: dict[str, Any]) -> Optional[str]:
    src = report.get("source")
    if src and os.path.isdir(src):
        return src
    if src and os.path.isfile(src):
        return os.path.dirname(src) or "."
    return None


def audit_markdown(report: dict[str, Any], max_rows: int = 100) -> str:
    """The audit report as Markdown: summary, tables of counts, sizes, unreadable files,
    duplicates (at most ``max_rows`` rows each; all of them are in ``audit.json``)."""
    root = _root_of(report)
    splits = list(report["counts"])
    ex, nd = report["exact_duplicates"], report["near_duplicates"]
    lines = [f"# Data audit: {report.get('source') or 'data'}", ""]
    if root:
        lines += [f"Paths are relative to `{root}`.", ""]
    lines += [
        f"- images: {report['n_images']} ({report['n_distinct']} distinct contents); splits "
        + ("given by the data" if report.get("given_splits", True) else "made by medclass"),
        f"- unreadable files: {len(report['unreadable'])}",
        f"- exact duplicate groups: {ex['n_groups']} ({ex['n_cross_split']} across splits, "
        f"{ex['n_within_split']} within one split)",
    ]
    if nd["enabled"]:
        lines.append(
            f"- near duplicates (pHash, Hamming distance <= {nd['threshold']} of 64 bits, exact copies excluded): "
            f"{nd['n_pairs']} pairs ({nd['n_cross_split_pairs']} across splits), {nd['n_groups']} groups "
            f"({nd['n_cross_split']} across splits)"
        )
    else:
        lines.append("- near duplicates: not searched")
    lines += [f"- warning: {n}" for n in report.get("notes", [])]
    lines += [
        f"- groups (patient/lesion) in more than one split: {len(report['groups_in_several_splits'])}",
        f"- label conflicts (identical content, different labels): {len(report['label_conflicts'])}",
        f"- audit time: {report['seconds']:.1f} s",
        "",
        "## Images per class and split",
        "",
        "| class | " + " | ".join(splits) + " | total |",
        "|---|" + "---:|" * (len(splits) + 1),
    ]
    for c in report["class_names"]:
        row = [report["counts"][s].get(c, 0) for s in splits]
        lines.append(f"| {_md_cell(c)} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    totals = [sum(report["counts"][s].values()) for s in splits]
    lines += ["| **total** | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |", ""]

    lines += ["## Image sizes (pixels) and modes per split", "",
              "| split | images | readable | width min / median / max | height min / median / max | distinct sizes "
              "| most common sizes (w x h: n) | modes | formats |",
              "|---|---:|---:|---|---|---:|---|---|---|"]
    for s, info in report["images"].items():
        if "width" not in info:
            lines.append(f"| {s} | {info['n']} | {info['n_readable']} | | | | | | |")
            continue
        w, h = info["width"], info["height"]
        common = ", ".join(f"{a}x{b}: {n}" for (a, b), n in info["common_sizes"])
        modes = ", ".join(f"{m}: {n}" for m, n in info["modes"].items())
        formats = ", ".join(f"{m}: {n}" for m, n in info["formats"].items())
        lines.append(
            f"| {s} | {info['n']} | {info['n_readable']} | {w['min']} / {w['median']:g} / {w['max']} | "
            f"{h['min']} / {h['median']:g} / {h['max']} | {info['n_sizes']} | {common} | {modes} | {formats} |"
        )
    lines.append("")

    def table(title: str, header: str, rows: list[str], total: int) -> None:
        lines.extend([f"## {title}", ""])
        if not rows:
            lines.extend(["None found.", ""])
            return
        lines.extend([header, "|" + "---|" * (header.count("|") - 1)])
        lines.extend(rows[:max_rows])
        if total > max_rows:
            lines.append(f"\n{total - max_rows} more rows in audit.json.")
        lines.append("")

    table("Unreadable files", "| split | path | reason |",
          [f"| {u['split']} | {_md_cell(_rel(u['path'], root))} | {_md_cell(u['reason'])} |" for u in report["unreadable"]],
          len(report["unreadable"]))

    def items_cell(items: list[dict]) -> str:
        return "<br>".join(_md_cell(f"{i['split']}: {_rel(i['path'], root)}") for i in items)

    table(f"Exact duplicates ({ex['n_cross_split']} groups across splits, {ex['n_within_split']} within one split)",
          "| # | across splits | splits | labels | files |",
          [f"| {n} | {'yes' if g['cross_split'] else 'no'} | "
           + ", ".join(f"{s}: {c}" for s, c in g["splits"].items())
           + f" | {_md_cell(', '.join(g['labels']))} | {items_cell(g['items'])} |"
           for n, g in enumerate(ex["groups"], 1)], ex["n_groups"])
    if nd["enabled"]:
        table(f"Near duplicates (pHash distance <= {nd['threshold']}): {nd['n_pairs']} pairs, "
              f"{nd['n_cross_split_pairs']} across splits",
              "| distance | across splits | same label | image a | image b |",
              [f"| {p['distance']} | {'yes' if p['cross_split'] else 'no'} | {'yes' if p['same_label'] else 'NO'} | "
               f"{_md_cell(p['a']['split'] + ': ' + _rel(p['a']['path'], root))} ({_md_cell(p['a']['label'])}) | "
               f"{_md_cell(p['b']['split'] + ': ' + _rel(p['b']['path'], root))} ({_md_cell(p['b']['label'])}) |"
               for p in nd["pairs"]], nd["n_pairs"])
    table("Groups (patient, lesion) in more than one split", "| group | images per split |",
          [f"| {_md_cell(g['group'])} | " + ", ".join(f"{s}: {c}" for s, c in g["splits"].items()) + " |"
           for g in report["groups_in_several_splits"]], len(report["groups_in_several_splits"]))
    table("Label conflicts (identical content, different labels)", "| labels | files |",
          [f"| {_md_cell(', '.join(c['labels']))} | {items_cell(c['items'])} |" for c in report["label_conflicts"]],
          len(report["label_conflicts"]))
    return "\n".join(lines).rstrip() + "\n"


def write_audit(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``audit.json`` (the whole report) and ``audit.md`` (readable tables) into ``out_dir``
    (created if needed); returns their paths.

    Raises:
        OSError: ``out_dir`` cannot be written (the message names it).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / "audit.json", out / "audit.md"
        atomic_write_text(json_path, json.dumps(report, indent=1))
        atomic_write_text(md_path, audit_markdown(report))
    except OSError as e:
        raise OSError(f"cannot write the audit report into {out}: {e}; give a writable --out folder") from e
    return json_path, md_path


def audit_summary(report: dict[str, Any], md_path: str | Path, shown: int = 10) -> str:
    """The report of :func:`audit` as the lines ``medclass audit`` prints (no final newline): images
    per class and split, counts of unreadable files, exact and near duplicates, groups in several
    splits and label conflicts, then up to ``shown`` exact-duplicate groups across splits (one file
    per split, paths relative to the data folder); the rest are in ``md_path``."""
    root = _root_of(report)
    splits = list(report["counts"])
    width = max([len("class")] + [len(c) for c in report["class_names"]])
    lines = [f"{'class':{width}s}  " + "  ".join(f"{s:>6s}" for s in splits) + "   total"]
    for c in report["class_names"]:
        row = [report["counts"][s].get(c, 0) for s in splits]
        lines.append(f"{c:{width}s}  " + "  ".join(f"{n:6d}" for n in row) + f"  {sum(row):6d}")
    totals = [sum(report["counts"][s].values()) for s in splits]
    lines.append(f"{'total':{width}s}  " + "  ".join(f"{n:6d}" for n in totals) + f"  {sum(totals):6d}")
    ex, nd = report["exact_duplicates"], report["near_duplicates"]
    lines.append(f"unreadable files: {len(report['unreadable'])}")
    lines.append(f"exact duplicate groups: {ex['n_groups']} ({ex['n_cross_split']} across splits, "
                 f"{ex['n_within_split']} within one split; {ex['n_images_in_groups']} images)")
    if nd["enabled"]:
        lines.append(f"near duplicates (pHash distance <= {nd['threshold']}): {nd['n_pairs']} pairs "
                     f"({nd['n_cross_split_pairs']} across splits), {nd['n_groups']} groups ({nd['n_cross_split']} "
                     f"across splits, {nd['n_within_split']} within one split)")
    lines.append(f"groups (patient/lesion) in several splits: {len(report['groups_in_several_splits'])}; "
                 f"label conflicts: {len(report['label_conflicts'])}")
    lines += [f"warning: {n}" for n in report.get("notes", [])]
    cross = [g for g in ex["groups"] if g["cross_split"]]
    if cross:
        lines.append("exact duplicates across splits (one file per split shown):")
        for g in cross[:shown]:
            first: dict[str, str] = {}
            for i in g["items"]:
                first.setdefault(i["split"], i["path"])
            counts = ", ".join(f"{s} {n}" for s, n in g["splits"].items())
            lines.append(f"  [{counts}] {', '.join(g['labels'])}: " + " = ".join(_rel(x, root) for x in first.values()))
        if len(cross) > shown:
            lines.append(f"  ... and {len(cross) - shown} more groups (all in {md_path})")
    return "\n".join(lines)
