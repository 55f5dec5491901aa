"""The package's layers by job (issue 24), held against the code: ``lint-imports`` (import-linter) checks
the contracts in ``pyproject.toml`` (a ``layers`` contract: api | cli > workflow > serving > evaluation >
engine > data | models > core; an ``acyclic_siblings`` contract: no import cycle between the modules of
any package), and only the API, the command line and the entry points live at the package's top level."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "medclass"


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports is missing: pip install -e '.[test]' (import-linter)")
    return [exe, "--config", str(ROOT / "pyproject.toml")]


def test_imports_point_down_the_layers_and_no_package_has_a_cycle():
    r = subprocess.run(_lint_imports(), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the package with core importing the engine is refused."""
    copy = tmp_path / "src" / "medclass"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "*.npz"))
    runs = copy / "core" / "runs.py"
    runs.write_text(runs.read_text() + "\nfrom ..engine import trainer  # noqa: E402,F401\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {"PYTHONPATH": str(tmp_path / "src"), "PATH": str(Path(sys.executable).parent)}
    r = subprocess.run(_lint_imports()[:1] + ["--config", str(tmp_path / "pyproject.toml")], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert "medclass.core is not allowed to import medclass.engine" in r.stdout


def test_only_the_api_and_the_entry_points_sit_at_the_top_level():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "api.py"]
    packages = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["cli", "core", "data", "engine", "evaluation", "models", "serving", "workflow"]
