"""Data: finding images (folders, CSV manifests, MedMNIST npz), splitting, decoding (DICOM too),
augmenting, auditing (duplicates and leakage between splits).

The names below are imported lazily (PEP 562): ``from medclass.data import X`` works as before,
but ``import medclass.data.io`` (image decoding: numpy, Pillow, pydicom) no longer drags in the
PyTorch-using modules (``dataset``, ``transforms``, ``audit``...), so the ONNX Runtime backend
(:mod:`medclass.serving.onnx_backend`) can read images in a process without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule that defines it.
# The audit function itself is medclass.data.audit.audit: re-exporting it here would hide the module.
_EXPORTS = {
    "NEAR_THRESHOLD": "audit", "cross_split_duplicates": "audit", "dedupe": "audit", "write_audit": "audit",
    "DecodedSplit": "dataset", "cache_dir_for": "dataset", "decode_split": "dataset",
    "default_cache_dir": "dataset", "load_sample": "dataset", "native_side": "dataset", "greyscale_content": "dataset",
    "read_dicom": "dicom",
    "IMAGE_EXTENSIONS": "io", "ImageReadError": "io", "expand_image_paths": "io", "is_image_file": "io", "read_image": "io",
    "SPLITS": "sources", "DataError": "sources", "DataIndex": "sources", "Sample": "sources",
    "build_index": "sources", "bundled_breastmnist": "sources", "index_csv": "sources",
    "index_folder": "sources", "index_npz": "sources", "match_class_names": "sources",
    "read_manifest": "sources", "write_manifest": "sources", "csv_columns": "sources",
    "small_validation_note": "sources",
    "stratified_split": "splits",
    "Preprocess": "transforms", "build_augmentation": "transforms",
}

_SUBMODULES = frozenset({"audit", "dataset", "dicom", "io", "sources", "splits", "transforms"})

__all__ = [
    "SPLITS", "DataError", "DataIndex", "Sample", "DecodedSplit", "ImageReadError", "IMAGE_EXTENSIONS",
    "build_index", "bundled_breastmnist", "index_csv", "index_folder", "index_npz", "match_class_names",
    "read_manifest", "write_manifest", "csv_columns", "stratified_split", "decode_split", "default_cache_dir", "cache_dir_for", "load_sample", "native_side", "greyscale_content", "read_image",
    "is_image_file", "expand_image_paths", "Preprocess", "build_augmentation", "read_dicom", "cross_split_duplicates", "dedupe",
    "write_audit", "NEAR_THRESHOLD", "small_validation_note",
]


def __getattr__(name: str) -> Any:
    """Import the submodule defining ``name`` on first use, and cache the name in this module.

    A submodule's own name (``medclass.data.audit``...) resolves to the submodule.

    Raises:
        AttributeError: not a name of this package.
    """
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .audit import NEAR_THRESHOLD, cross_split_duplicates, dedupe, write_audit
    from .dataset import DecodedSplit, cache_dir_for, decode_split, default_cache_dir, greyscale_content, load_sample, native_side
    from .dicom import read_dicom
    from .io import IMAGE_EXTENSIONS, expand_image_paths, is_image_file, read_image
    from .pixels import ImageReadError
    from .sources import (
        SPLITS, DataError, DataIndex, Sample, build_index, bundled_breastmnist, index_csv, index_folder,
        csv_columns, index_npz, match_class_names, read_manifest, write_manifest,
    )
    from .splits import stratified_split
    from .transforms import Preprocess, build_augmentation
