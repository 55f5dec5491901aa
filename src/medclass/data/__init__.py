"""Data: finding images (folders, CSV manifests, MedMNIST npz), splitting, decoding (DICOM too),
augmenting, auditing (duplicates and leakage between splits)."""

# the audit function itself is medclass.data.audit.audit: re-exporting it here would hide the module
from .audit import NEAR_THRESHOLD, cross_split_duplicates, dedupe, write_audit
from .dataset import DecodedSplit, cache_dir_for, decode_split, default_cache_dir, load_sample
from .dicom import read_dicom
from .io import IMAGE_EXTENSIONS, ImageReadError, is_image_file, read_image
from .sources import (
    SPLITS,
    DataError,
    DataIndex,
    Sample,
    build_index,
    bundled_breastmnist,
    index_csv,
    index_folder,
    index_npz,
    match_class_names,
    read_manifest,
    write_manifest,
)
from .splits import stratified_split
from .transforms import Preprocess, build_augmentation

__all__ = [
    "SPLITS", "DataError", "DataIndex", "Sample", "DecodedSplit", "ImageReadError", "IMAGE_EXTENSIONS",
    "build_index", "bundled_breastmnist", "index_csv", "index_folder", "index_npz", "match_class_names",
    "read_manifest", "write_manifest", "stratified_split", "decode_split", "default_cache_dir", "cache_dir_for", "load_sample", "read_image",
    "is_image_file", "Preprocess", "build_augmentation", "read_dicom", "cross_split_duplicates", "dedupe",
    "write_audit", "NEAR_THRESHOLD",
]
