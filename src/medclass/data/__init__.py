"""Data: finding images (folders, CSV manifests, MedMNIST npz), splitting, decoding, augmenting."""

from .dataset import DecodedSplit, cache_dir_for, decode_split, default_cache_dir, load_sample
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
    "is_image_file", "Preprocess", "build_augmentation",
]
