"""Finding the images and their labels: class folders, CSV manifests, MedMNIST ``.npz``.

Every source becomes a :class:`DataIndex`: class names and, per split, a list of
:class:`Sample` (path, label index, optional group). A data index is written to and read back
from a split manifest CSV, so a run can be repeated exactly.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np

from ..core.config import DataConfig
from ..core.fileio import atomic_write
from .io import IMAGE_EXTENSIONS, find_images, is_ignored_name
from .splits import stratified_split

__all__ = [
    "DataError",
    "Sample",
    "DataIndex",
    "SPLITS",
    "NPZ_SEP",
    "bundled_breastmnist",
    "build_index",
    "index_folder",
    "index_csv",
    "index_npz",
    "match_class_names",
    "read_manifest",
    "small_validation_note",
    "write_manifest",
]

SPLITS = ("train", "valid", "test")
SPLIT_DIR_NAMES = {
    "train": ("train", "training"),
    "valid": ("valid", "val", "validation"),
    "test": ("test", "testing"),
}
#: Separator of an image inside a ``.npz``: ``"<file.npz>::<split>::<index>"``.
NPZ_SEP = "::"
#: Class names of MedMNIST sets (from the MedMNIST v2 ``INFO`` table, Yang et al. 2023).
MEDMNIST_CLASS_NAMES = {"breastmnist": ["malignant", "normal, benign"]}

_PATH_COLUMNS = ("path", "filepath", "file_path", "image_path", "img_path", "image_file", "file", "filename",
                 "file_name", "fname")
_ID_COLUMNS = ("image_id", "image_name", "img_id", "isic_id", "id", "image", "img")
_LABEL_COLUMNS = ("label", "dx", "class", "class_name", "diagnosis", "target", "benign_malignant", "pathology",
                  "category", "y")
_GROUP_COLUMNS = ("group", "lesion_id", "patient_id", "patient", "subject_id", "subject")


class DataError(ValueError):
    """The data cannot be used as given; the message names the file, folder or field and the fix."""


@dataclass(frozen=True)
class Sample:
    """One image: ``path`` (a file, or ``"<file.npz>::<split>::<index>"``), class index, group."""

    path: str
    label: int
    group: Optional[str] = None


@dataclass
class DataIndex:
    """The images of a data set by split (``train``, ``valid``, ``test``) and its class names."""

    class_names: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    given_splits: bool = True  # False: medclass made the split
    notes: list[str] = field(default_factory=list, compare=False)  # warnings for the user (training logs them)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class name."""
        return {
            s: {c: sum(1 for x in items if x.label == i) for i, c in enumerate(self.class_names)}
            for s, items in self.splits.items()
        }


def bundled_breastmnist() -> Path:
    """Path of the BreastMNIST ``.npz`` shipped in the package (MedMNIST v2, CC BY 4.0)."""
    return Path(str(resources.files("medclass") / "datasets" / "breastmnist.npz"))


# --------------------------------------------------------------------------- class folders


def match_class_names(
    folder_names: Iterable[str],
    class_map: Optional[dict[str, str]] = None,
    together: Iterable[Iterable[str]] = (),
) -> dict[str, str]:
    """Map class-folder names to class names, matching long and short spellings of one class.

    A name that starts with another name followed by a separator (``_ - . space (``) is the same
    class: ``adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib`` -> ``adenocarcinoma``. Names that occur
    together in one split (each collection in ``together``) are different classes and never
    merged (``pneumonia/`` beside ``pneumonia_viral/``). ``class_map`` (folder name -> class name)
    overrides the matching; a name that matches a mapped name takes its mapping too.

    Spellings that differ only in case and separators are one class too (``NORMAL`` and
    ``Normal``, ``no_tumor`` and ``notumor``, as Kaggle's splits spell them), named as the first
    collection of ``together`` (the training split) spells it; the prefix rule ignores case.
    """
    class_map = dict(class_map or {})
    given = sorted(set(folder_names))
    groups = [list(group) for group in together]
    side_by_side = [set(group) for group in groups]
    names = sorted(set(given) | {n for g in groups for n in g})

    def same_split(a: str, b: str) -> bool:
        return any(a in g and b in g for g in side_by_side)

    def key(name: str) -> str:
        return re.sub(r"[^0-9a-z]", "", name.casefold())

    first: dict[str, str] = {}
    for n in [n for g in groups for n in sorted(g)] + names:  # the training split's spelling first
        first.setdefault(key(n), n)
    spelled = {n: (first[key(n)] if key(n) and not same_split(n, first[key(n)]) else n) for n in names}
    canon = sorted(set(spelled.values()))

    parent: dict[str, str] = {}
    for n in canon:
        shorter = [
            m for m in canon
            if len(m) < len(n) and n.casefold().startswith(m.casefold()) and re.match(r"[_\-. (]", n[len(m)])
            and not same_split(m, n)
        ]
        parent[n] = max(shorter, key=len) if shorter else n
    out: dict[str, str] = {}
    for n in names:
        root = spelled[n]
        while root not in class_map and parent[root] != root:  # resolve chains to the root
            root = parent[root]
        out[n] = class_map.get(n, class_map.get(spelled[n], class_map.get(root, root)))
    return {n: out[n] for n in given}


def _find_split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not is_ignored_name(p.name)}
    for split, aliases in SPLIT_DIR_NAMES.items():
        for alias in aliases:
            if alias in children:
                found[split] = children[alias]
                break
    return found


#: Sub-folder names that hold segmentation masks or annotations in public data sets (the COVID-19
#: Radiography Database keeps ``<class>/images/`` beside ``<class>/masks/``).
MASK_FOLDER_NAMES = frozenset({"mask", "masks", "label", "labels", "segmentation", "segmentations", "annotation",
                               "annotations", "gt", "ground_truth", "groundtruth"})


def _mask_folder_notes(class_dir: Path, files: list[Path]) -> list[str]:
    """Warnings for images of ``class_dir`` that lie in a folder named like masks
    (:data:`MASK_FOLDER_NAMES`): they are read as images of the class, which is wrong if they
    are segmentation masks."""
    counts: dict[Path, int] = {}
    for p in files:
        for parent in p.relative_to(class_dir).parents:
            if parent.name.casefold() in MASK_FOLDER_NAMES:
                counts[class_dir / parent] = counts.get(class_dir / parent, 0) + 1
                break
    return [f"{d}/ holds {n} images that are read as images of the class {class_dir.name!r}; if they are "
            "segmentation masks, move them out of the class folder (or list the images in a CSV)"
            for d, n in sorted(counts.items())]


#: Fewest distinct DICOM ``PatientID`` values for a folder's DICOM images to be grouped by patient
#: (below it the IDs are taken as anonymised: one shared value, or a few).
MIN_DICOM_PATIENTS = 10


def _dicom_patient_groups(files: Sequence[Path], notes: list[str]) -> dict[Path, str]:
    """The group (patient) of each image file (:func:`medclass.data.io.find_images`) of a
    class-folder data set: for DICOM files their
    ``PatientID`` (:func:`medclass.data.dicom.dicom_patient_id`), so that a split made by medclass
    keeps a patient's slices on one side and evaluation reports per-patient figures; files without
    one (and other images) form a group of their own. Empty when there are no DICOM files, or fewer
    than :data:`MIN_DICOM_PATIENTS` distinct IDs (anonymised), which adds a note to ``notes``."""
    from .dicom import DICOM_EXTENSIONS, dicom_patient_id

    # files are images (find_images): one without a raster extension is DICOM (.dcm, or found by its marker)
    raster = IMAGE_EXTENSIONS - DICOM_EXTENSIONS
    dicom = [p for p in files if p.suffix.lower() not in raster]
    if not dicom:
        return {}
    ids = {p: dicom_patient_id(p) for p in dicom}
    distinct = {v for v in ids.values() if v}
    if len(distinct) < MIN_DICOM_PATIENTS:
        if len(dicom) > len(distinct):
            notes.append(f"{len(dicom)} DICOM files hold {len(distinct)} distinct PatientID values (anonymised?): the "
                         "split is made image by image, so slices of one patient may land in different splits; give a "
                         "CSV with a patient column (data.group_column) to keep them together")
        return {}
    return {p: (f"patient:{ids[p]}" if ids.get(p) else f"file:{p}") for p in files}


def _class_dirs(root: Path) -> list[Path]:
    """The class folders of ``root``: its sub-folders less hidden and system ones
    (:func:`medclass.data.io.is_ignored_name`: ``__MACOSX`` from a macOS zip, ``@eaDir``)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not is_ignored_name(p.name))


def _images_in(folder: Path) -> list[Path]:
    return find_images(folder)


def index_folder(root: Path, cfg: DataConfig) -> DataIndex:
    """Index ``root/{train,valid|val,test}/<class>/*`` or ``root/<class>/*``.

    Without given splits (or without a valid split) a stratified split is made with
    ``cfg.split_seed`` and the configured fractions.

    Raises:
        DataError: no class folders or images; classes that cannot be matched across splits
            (the message lists them and suggests ``data.class_map``).
    """
    root = Path(root)
    split_dirs = _find_split_dirs(root)
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root}: found {sorted(split_dirs)} folders but no train/ folder")
    if not split_dirs:
        split_dirs = {"all": root}
        only = _class_dirs(root)
        inner = _class_dirs(only[0]) if len(only) == 1 else []
        if inner:  # a wrapper folder (a zip's top folder, Kaggle's chest_xray/chest_xray/): not one class
            names = ", ".join(p.name + "/" for p in inner[:6]) + (", ..." if len(inner) > 6 else "")
            raise DataError(f"{root} holds one folder, {only[0].name}/, which holds the folders {names}; give "
                            f"{only[0]} as the data (a classifier needs a folder per class, at least 2)")
    per_split: dict[str, dict[str, list[Path]]] = {}
    notes: list[str] = []
    for split, d in split_dirs.items():
        classes = _class_dirs(d)
        if not classes:
            raise DataError(f"{d}: no class folders; expected {d}/<class name>/<images>")
        per_split[split] = {c.name: _images_in(c) for c in classes}
        notes += [note for c in classes for note in _mask_folder_notes(c, per_split[split][c.name])]
    folder_to_class = match_class_names(
        (n for folders in per_split.values() for n in folders), cfg.class_map, per_split.values()
    )
    class_names = sorted(set(folder_to_class.values()))
    if len(split_dirs) > 1:
        classes_of = {s: {folder_to_class[n] for n in f} for s, f in per_split.items()}
        unmatched = {
            s: sorted(set(class_names) - have) for s, have in classes_of.items() if set(class_names) - have
        }
        if unmatched:
            detail = "; ".join(
                f"{s}/ lacks {', '.join(missing)} (folders there: {', '.join(sorted(per_split[s]))})"
                for s, missing in unmatched.items()
            )
            raise DataError(
                f"{root}: class folders cannot be matched across splits: {detail}. "
                "Rename the folders or give data.class_map (folder name -> class name)."
            )
    imageless = sorted(
        c for c in class_names
        if not any(files for folders in per_split.values() for n, files in folders.items() if folder_to_class[n] == c)
    )
    if imageless:
        # a class without images cannot be learnt, and a split manifest could not name it
        raise DataError(
            f"{root}: class folders without images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
            f"{', '.join(imageless)}; add images or remove the folders"
        )
    label_of = {c: i for i, c in enumerate(class_names)}
    index = DataIndex(class_names, notes=notes)
    group_of = _dicom_patient_groups([p for folders in per_split.values() for files in folders.values() for p in files],
                                     notes)
    for split, folders in per_split.items():
        index.splits[split] = [
            Sample(str(p), label_of[folder_to_class[n]], group_of.get(p)) for n, files in sorted(folders.items())
            for p in files
        ]
    empty = [s for s, items in index.splits.items() if not items]
    if empty:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {empty}")
    return _complete_splits(index, cfg)


def _complete_splits(index: DataIndex, cfg: DataConfig) -> DataIndex:
    """Make the missing splits: all of them from ``"all"``; ``valid`` from ``train`` (and ``test``
    too when that is missing as well: a lone ``train/`` folder is split as an unsplit folder is).
    Given ``train`` and ``valid`` without ``test`` stay as given (see
    :func:`medclass.evaluation.evaluate.final_split`)."""
    if "all" in index.splits:
        items = index.splits.pop("all")
        groups = [x.group for x in items] if any(x.group is not None for x in items) else None
        if groups is not None and any(g is None for g in groups):
            raise DataError("some rows have a group and others none: fill the group column for every row")
        assign = stratified_split(
            [x.label for x in items], groups, cfg.val_fraction, cfg.test_fraction, cfg.split_seed
        )
        index.splits = {s: [x for x, a in zip(items, assign) if a == s] for s in SPLITS}
        index.given_splits = False
    elif "valid" not in index.splits:
        items = index.splits["train"]
        groups = [x.group for x in items] if any(x.group is not None for x in items) else None
        make_test = not index.splits.get("test")
        assign = stratified_split([x.label for x in items], groups, cfg.val_fraction,
                                  cfg.test_fraction if make_test else 0.0, cfg.split_seed)
        index.splits["train"] = [x for x, a in zip(items, assign) if a == "train"]
        index.splits["valid"] = [x for x, a in zip(items, assign) if a == "valid"]
        if make_test:
            index.splits["test"] = [x for x, a in zip(items, assign) if a == "test"]
        index.given_splits = False
    index.splits = {s: index.splits.get(s, []) for s in SPLITS}
    return index


# --------------------------------------------------------------------------- CSV manifests


def _pick_column(header: list[str], given: Optional[str], candidates: tuple[str, ...], what: str, csv_path: Path, required: bool) -> Optional[str]:
    if given:
        if given not in header:
            raise DataError(f"{csv_path}: no column {given!r} for the {what}; columns are {header}")
        return given
    lower = {h.lower(): h for h in header}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise DataError(
            f"{csv_path}: cannot tell which column holds the {what} (looked for {list(candidates)}); "
            f"columns are {header}. Set data.{what.replace(' ', '_')}_column."
        )
    return None


#: Encodings tried in order for a CSV manifest: UTF-8 (with or without Excel's byte-order mark),
#: then Windows-1252 (Excel's "CSV" on Western-European Windows), then Latin-1 (decodes any byte).
CSV_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")
#: Delimiters a CSV manifest may use; the one found most often in its header line is taken
#: (Excel writes ``;`` where the decimal separator is a comma).
CSV_DELIMITERS = (",", ";", "\t", "|")


def _csv_rows(csv_path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The rows of a CSV file as dicts, read as :data:`CSV_ENCODINGS` and :data:`CSV_DELIMITERS`
    allow (spaces after a delimiter ignored), and notes for the user (an encoding other than UTF-8).

    Raises:
        DataError: the file cannot be read or parsed.
    """
    try:
        raw = Path(csv_path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read CSV manifest {csv_path}: {e}") from e
    notes: list[str] = []
    for encoding in CSV_ENCODINGS:
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if encoding != "utf-8-sig":
        notes.append(f"{csv_path} is not UTF-8; it was read as {encoding} (Excel's encoding on Windows): check the "
                     "class names, and save it as CSV UTF-8 to be sure")
    header = text.lstrip("\ufeff").split("\n", 1)[0]
    delimiter = max(CSV_DELIMITERS, key=header.count) if any(d in header for d in CSV_DELIMITERS) else ","
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True))
    except csv.Error as e:
        raise DataError(f"cannot read CSV manifest {csv_path}: {e}") from e
    return rows, notes


class _CsvTable(NamedTuple):
    """A CSV manifest as :func:`_read_csv` reads it."""

    rows: list[dict[str, str]]
    header: list[str]
    paths: list[Path]  # each row's image file
    missing: list[str]  # the ids or paths (as written) with no image file
    missing_kind: str  # "paths" (a path column) or "ids"
    base: Path  # the folder relative paths and ids are read from
    notes: list[str]  # warnings for the user (:func:`_csv_rows`)


def _read_csv(csv_path: Path, cfg: DataConfig) -> _CsvTable:
    """The rows and header of a CSV manifest, each row's image path (relative paths against
    ``data.image_root``, by default the CSV's folder; ids looked up there as ``images/<id>.<ext>``
    or ``<id>.<ext>``, with or without the extension, or as a path relative to that folder, or,
    failing those, a file of that name found once in its sub-folders), the ids or paths with no
    image file, and notes for the user (:func:`_csv_rows`).

    Raises:
        DataError: unreadable or empty CSV, no path or id column.
    """
    rows, notes = _csv_rows(csv_path)
    if not rows:
        raise DataError(f"{csv_path}: the manifest has no rows")
    header = list(rows[0].keys())
    path_col = _pick_column(header, cfg.path_column, _PATH_COLUMNS, "path", csv_path, False)
    id_col = None if path_col else _pick_column(header, cfg.id_column, _ID_COLUMNS, "id", csv_path, False)
    if path_col is None and id_col is None:
        raise DataError(
            f"{csv_path}: no path column ({list(_PATH_COLUMNS)}) or id column ({list(_ID_COLUMNS)}); "
            f"columns are {header}. Set data.path_column or data.id_column."
        )
    base = Path(cfg.image_root) if cfg.image_root else csv_path.parent
    if cfg.image_root and not base.is_dir():
        raise DataError(f"data.image_root {base} is not a folder; give the folder the CSV's paths or ids are in")
    by_id: dict[str, Path] = {}  # "ISIC_0024306" and "ISIC_0024306.jpg" name the same file
    if id_col:
        for folder in (base / "images", base):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.suffix.lower() in IMAGE_EXTENSIONS and not is_ignored_name(p.name):
                        by_id.setdefault(p.stem, p)
                        by_id.setdefault(p.name, p)
        if any(r[id_col] not in by_id for r in rows):  # deeper (ISIC 2020's jpeg/train/): names found once only
            deeper: dict[str, Path] = {}
            clashes: set[str] = set()
            for p in find_images(base):
                for k in (p.stem, p.name):
                    if k in deeper and deeper[k] != p:
                        clashes.add(k)
                    deeper.setdefault(k, p)
            for k, p in deeper.items():
                if k not in clashes:
                    by_id.setdefault(k, p)
    paths, missing = [], []
    for r in rows:
        if path_col:
            p = Path(r[path_col])
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                missing.append(r[path_col])
            paths.append(p)
        else:
            v = r[id_col]
            p = by_id.get(v)
            if p is None and v and (base / v).is_file():  # an id column that holds relative paths
                p = base / v
            if p is None:
                missing.append(r[id_col])
                # kept with its expected name: with skip_corrupt it is listed as skipped when decoded
                p = (base / "images" if (base / "images").is_dir() else base) / f"{r[id_col]}.jpg"
            paths.append(p)
    return _CsvTable(rows, header, paths, missing, "paths" if path_col else "ids", base, notes)


def csv_columns(csv_path: Path, cfg: DataConfig, samples: Sequence[Sample], columns: Sequence[str]
                ) -> dict[str, list[Optional[str]]]:
    """The values of ``columns`` of a CSV manifest for each of ``samples`` (matched by image
    path; ``None`` where a sample has no row), e.g. ``sex`` and ``age`` for subgroup results.

    Raises:
        DataError: unreadable CSV, or a column it does not have (the message lists its columns).
    """
    table = _read_csv(Path(csv_path), cfg)
    rows, header, paths = table.rows, table.header, table.paths
    unknown = [c for c in columns if c not in header]
    if unknown:
        raise DataError(f"{csv_path}: no column {', '.join(map(repr, unknown))}; its columns are {header}")
    row_of = {str(p): r for p, r in zip(paths, rows)}
    return {c: [(row_of[s.path][c] if s.path in row_of else None) for s in samples] for c in columns}


def index_csv(csv_path: Path, cfg: DataConfig) -> DataIndex:
    """Index a CSV manifest: a path or id column, a label column, optional group and split columns.

    Paths are relative to ``data.image_root`` (default: the CSV's folder). Ids (e.g. HAM10000's
    ``image_id``) are looked up as ``images/<id>.<ext>`` or ``<id>.<ext>`` there, else as a file
    of that name found once in its sub-folders (ISIC 2020's ``jpeg/train/``). Label column candidates: ``label``,
    ``dx``, ...; group: ``group``, ``lesion_id``, ``patient_id``, ...; or set them in the config.
    Without a ``split`` column, a stratified split is made that keeps every group on one side.

    Raises:
        DataError: unreadable CSV, missing columns, ids or paths with no image file (unless
            ``data.skip_corrupt``), empty labels, a ``data.image_root`` that is not a folder.
    """
    csv_path = Path(csv_path)
    table = _read_csv(csv_path, cfg)
    rows, header, paths, missing, notes = table.rows, table.header, table.paths, table.missing, table.notes
    label_col = _pick_column(header, cfg.label_column, _LABEL_COLUMNS, "label", csv_path, True)
    group_col = _pick_column(header, cfg.group_column, _GROUP_COLUMNS, "group", csv_path, False)
    split_col = _pick_column(header, None, ("split", "subset", "partition"), "split", csv_path, False)
    if missing and not cfg.skip_corrupt:
        raise DataError(
            f"{csv_path}: {len(missing)} of {len(rows)} {table.missing_kind} have no image file under {table.base} "
            f"(first: {missing[:5]}); they are read relative to {table.base}: set data.image_root to the folder they are in, fix them, or set "
            "data.skip_corrupt=true to leave them out (they are listed in the run's report)"
        )
    labels_raw = [r[label_col].strip() for r in rows]
    if any(not x for x in labels_raw):
        bad = [i + 2 for i, x in enumerate(labels_raw) if not x][:5]
        raise DataError(f"{csv_path}: empty {label_col!r} on lines {bad}")
    class_names = sorted(set(cfg.class_map.get(x, x) for x in labels_raw))
    multi = sum("|" in x for x in labels_raw)
    if multi:  # NIH ChestX-ray14's "Finding Labels": Effusion|Mass
        notes.append(f"{multi} of {len(rows)} labels in {label_col!r} hold '|' (e.g. {next(x for x in labels_raw if '|' in x)!r}): "
                     f"medclass trains single-label classifiers, so each combination is a class of its own "
                     f"({len(class_names)} classes); give one label per image, or map combinations with data.class_map")
    label_of = {c: i for i, c in enumerate(class_names)}
    samples = [
        Sample(str(p), label_of[cfg.class_map.get(lab, lab)], (r[group_col] or None) if group_col else None)
        for p, lab, r in zip(paths, labels_raw, rows)
    ]
    index = DataIndex(class_names, notes=notes)
    if split_col:
        for r, s in zip(rows, samples):
            name = _canonical_split(r[split_col], csv_path)
            index.splits.setdefault(name, []).append(s)
    else:
        index.splits["all"] = samples
    return _complete_splits(index, cfg)


#: Fewer validation images than this in a class draw a warning (:func:`small_validation_note`).
MIN_VALID_PER_CLASS = 10


def small_validation_note(index: DataIndex) -> Optional[str]:
    """A warning when a class has fewer than :data:`MIN_VALID_PER_CLASS` validation images: the
    best checkpoint, the temperature and the decision rule are all chosen on that split, and one
    image of a class of ``n`` moves its recall by ``100 / n`` points and the balanced accuracy by
    ``100 / (n K)`` for ``K`` classes (Kaggle's chest X-ray set gives 8 per class). None otherwise."""
    valid = index.splits.get("valid") or []
    counts = {c: sum(1 for s in valid if s.label == i) for i, c in enumerate(index.class_names)}
    small = {c: n for c, n in counts.items() if n < MIN_VALID_PER_CLASS}
    if not valid or not small:
        return None
    what = ", ".join(f"{c} {n}" for c, n in small.items())
    c_min = min((c for c in small if small[c] > 0), key=small.get, default=None)
    if c_min is None:
        moves = f"no validation image of {', '.join(small)}: its recall cannot be measured there"
    else:
        n_min = small[c_min]
        moves = (f"one image of {c_min} moves its recall by {100 / n_min:.0f} points and the balanced accuracy by "
                 f"{100 / (n_min * len(counts)):.1f}")
    fix = ("raise data.val_fraction" if not index.given_splits else
           "move images from train/ to the validation folder, or remove it so that medclass makes one "
           "(data.val_fraction)")
    return (f"the validation split has {len(valid)} images, fewer than {MIN_VALID_PER_CLASS} in some classes "
            f"({what}): the best checkpoint, the temperature and the decision rule are chosen on it, and {moves}; "
            f"for steadier choices, {fix}")


def _canonical_split(name: str, where: Path) -> str:
    low = name.strip().lower()
    for split, aliases in SPLIT_DIR_NAMES.items():
        if low in aliases:
            return split
    raise DataError(f"{where}: unknown split {name!r}; use train, valid or test")


# --------------------------------------------------------------------------- MedMNIST npz


def index_npz(npz_path: Path) -> DataIndex:
    """Index a MedMNIST ``.npz`` (``{train,val,test}_images`` and ``_labels``).

    Labels may have shape ``(N,)`` or ``(N, 1)``; multi-label ``(N, K>1)`` is refused.

    Raises:
        DataError: a missing array or multi-label labels.
    """
    npz_path = Path(npz_path)
    try:
        data = np.load(npz_path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {npz_path} as a MedMNIST .npz: {e}") from e
    with data:
        keys = set(data.files)
        labels_by_split = {}
        for split, prefix in (("train", "train"), ("valid", "val"), ("test", "test")):
            if f"{prefix}_images" not in keys or f"{prefix}_labels" not in keys:
                raise DataError(f"{npz_path}: no {prefix}_images/{prefix}_labels arrays (has {sorted(keys)})")
            labels = np.asarray(data[f"{prefix}_labels"])
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.ndim != 1:
                raise DataError(f"{npz_path}: {prefix}_labels has shape {labels.shape}; only single-label (N,) or (N, 1) is supported")
            labels_by_split[split] = labels.astype(np.int64)
    n_classes = int(max(l.max() for l in labels_by_split.values())) + 1
    stem = npz_path.stem.lower()
    names = MEDMNIST_CLASS_NAMES.get(stem, [str(i) for i in range(n_classes)])
    index = DataIndex(list(names))
    for split, labels in labels_by_split.items():
        prefix = "val" if split == "valid" else split
        index.splits[split] = [
            Sample(f"{npz_path}{NPZ_SEP}{prefix}{NPZ_SEP}{i}", int(y)) for i, y in enumerate(labels)
        ]
    return index


# --------------------------------------------------------------------------- manifests of runs


MANIFEST_COLUMNS = ("split", "path", "label", "class_name", "group")


def write_manifest(index: DataIndex, path: Path) -> None:
    """Write the split as CSV (columns ``split, path, label, class_name, group``), atomically
    (:func:`medclass.core.fileio.atomic_write`)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(MANIFEST_COLUMNS)
            for split, items in index.splits.items():
                for s in items:
                    w.writerow([split, s.path, s.label, index.class_names[s.label], s.group or ""])

    atomic_write(path, write)


def read_manifest(path: Path) -> DataIndex:
    """Read a split manifest written by :func:`write_manifest` (the split of an earlier run).

    Raises:
        DataError: missing columns or inconsistent label/class-name pairs.
    """
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"cannot read split manifest {path}: {e}") from e
    if not rows or any(c not in rows[0] for c in MANIFEST_COLUMNS):
        raise DataError(f"{path}: a split manifest needs the columns {list(MANIFEST_COLUMNS)}")
    names: dict[int, str] = {}
    index = DataIndex([], {s: [] for s in SPLITS})
    for r in rows:
        label = int(r["label"])
        if names.setdefault(label, r["class_name"]) != r["class_name"]:
            raise DataError(f"{path}: label {label} is both {names[label]!r} and {r['class_name']!r}")
        index.splits.setdefault(_canonical_split(r["split"], path), []).append(
            Sample(r["path"], label, r["group"] or None)
        )
    gaps = [i for i in range(max(names) + 1) if i not in names]
    if gaps or min(names) < 0:
        raise DataError(f"{path}: no rows for labels {gaps or [min(names)]}; labels must be 0..K-1 with a name each")
    index.class_names = [names[i] for i in range(max(names) + 1)]
    return index


def build_index(cfg: DataConfig) -> DataIndex:
    """The :class:`DataIndex` for a data config: manifest, bundled default, npz, CSV or folder.

    Raises:
        DataError: the source does not exist or is of a kind medclass does not read.
    """
    if cfg.manifest:
        return read_manifest(Path(cfg.manifest))
    source = Path(cfg.source) if cfg.source else bundled_breastmnist()
    if not source.exists():
        raise DataError(f"data source {source} does not exist; give a folder, a .csv manifest or a .npz")
    if source.is_dir():
        return index_folder(source, cfg)
    if source.suffix.lower() == ".npz":
        return index_npz(source)
    if source.suffix.lower() == ".csv":
        return index_csv(source, cfg)
    raise DataError(f"data source {source}: expected a folder, a .csv manifest or a MedMNIST .npz")
