"""Every file medclass writes goes through the one atomic writer (issue 24):
:func:`medclass.core.fileio.atomic_write` / ``atomic_write_text`` (a fresh temporary file beside the
destination, renamed over it, so a planted symbolic link is replaced, never followed, and a reader
sees the old file or the whole new one). Only ``core/fileio.py`` and the checkpoints' fsync variant
(``engine/checkpoint.py``) rename files themselves; this is checked statically on the source."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "medclass"

#: The modules that may rename a temporary file into place themselves.
ALLOWED = {"core/fileio.py", "engine/checkpoint.py"}

#: Functions of ``os`` that move a file into place.
OS_MOVES = {"replace", "rename", "renames"}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.relative_to(SRC).as_posix() not in ALLOWED)


def hand_rolled_renames(source: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each call in ``source`` that moves a file by hand: ``os.replace``,
    ``os.rename``, ``os.renames`` (also imported by name from ``os``), and ``Path.replace`` /
    ``Path.rename``, i.e. a ``.replace(target)`` or ``.rename(target)`` method call with one
    positional argument and no keywords (``str.replace`` needs two arguments; ``dataclasses.replace``
    is excluded by name)."""
    tree = ast.parse(source)
    from_os = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module == "os" for a in node.names if a.name in OS_MOVES}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in from_os:
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(f, ast.Attribute):
            owner = f.value
            if isinstance(owner, ast.Name) and owner.id == "os" and f.attr in OS_MOVES:
                found.append((node.lineno, ast.unparse(node)))
            elif (f.attr in ("replace", "rename") and len(node.args) == 1 and not node.keywords
                  and not (isinstance(owner, ast.Name) and owner.id in ("dataclasses", "os"))):
                found.append((node.lineno, ast.unparse(node)))
    return found


def hand_made_temp_files(source: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each ``tempfile.mkstemp`` / ``tempfile.NamedTemporaryFile`` call (the
    other half of a hand-rolled atomic write; ``TemporaryDirectory`` for scratch work is fine)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "tempfile"
                and node.func.attr in ("mkstemp", "NamedTemporaryFile")):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_checker_finds_what_it_should():
    code = (
        "import os, dataclasses\nfrom os import rename as mv\n"
        "tmp.replace(path)\n"                   # Path.replace
        "(root / '.x.tmp').replace(root / 'x')\n"
        "os.replace(tmp, path)\n"
        "os.rename(a, b)\n"
        "mv(a, b)\n"
        "Path(a).rename(b)\n"
    )
    assert [line for line, _ in hand_rolled_renames(code)] == [3, 4, 5, 6, 7, 8]
    harmless = (
        "import dataclasses\n"
        "s.replace('-', '_')\n"                 # str.replace
        "dataclasses.replace(spec, epoch=1)\n"
        "dataclasses.replace(spec)\n"
        "d.replace(year=2000)\n"                # keywords: not a path
        "df.rename(columns={'a': 'b'})\n"
        "text.replace('a', 'b').replace('c', 'd')\n"
    )
    assert hand_rolled_renames(harmless) == []
    assert [line for line, _ in hand_made_temp_files(
        "import tempfile\ntempfile.mkstemp(dir=d)\ntempfile.TemporaryDirectory()\n")] == [2]


def test_the_allowed_modules_exist():
    """The exceptions name real files (a rename or move would otherwise widen them silently)."""
    for rel in ALLOWED:
        assert (SRC / rel).is_file(), rel
    assert hand_rolled_renames((SRC / "core" / "fileio.py").read_text())  # the one writer does rename


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(SRC).as_posix())
def test_no_module_renames_files_by_hand(path):
    found = hand_rolled_renames(path.read_text(encoding="utf-8"))
    assert not found, (f"{path.relative_to(SRC)} moves files into place itself: "
                       + "; ".join(f"line {n}: {code}" for n, code in found)
                       + " (use medclass.core.fileio.atomic_write / atomic_write_text)")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(SRC).as_posix())
def test_no_module_makes_its_own_temporary_files(path):
    found = hand_made_temp_files(path.read_text(encoding="utf-8"))
    assert not found, (f"{path.relative_to(SRC)} creates temporary files for writing itself: "
                       + "; ".join(f"line {n}: {code}" for n, code in found)
                       + " (use medclass.core.fileio.atomic_write)")


def test_write_manifest_replaces_a_planted_link(tmp_path):
    """One of the writers routed through atomic_write: a symbolic link at the destination is
    replaced by the file, and what it pointed to is untouched."""
    from medclass.data import DataIndex, read_manifest, write_manifest
    from medclass.data.sources import Sample

    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.csv").symlink_to(outside)
    index = DataIndex(["benign", "malignant"], {"train": [Sample("a.png", 0), Sample("b.png", 1)],
                                                "valid": [Sample("c.png", 1)], "test": []})
    write_manifest(index, run / "manifest.csv")
    assert not (run / "manifest.csv").is_symlink() and outside.read_text() == "keep me"
    assert read_manifest(run / "manifest.csv").splits["train"] == index.splits["train"]
    assert sorted(p.name for p in run.iterdir()) == ["manifest.csv"]  # no temporary file left
