"""What a newcomer met on the first day: README commands, split folder names, the positive class of
a binary task, cut names and help, ROC axes, the package metadata."""

from __future__ import annotations

import csv
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import make_folder_dataset, tiny_config
from medclass.cli.app import app
from medclass.core.config import BUILTIN_ARCHS, RunConfig
from medclass.core.positive_class import choose_positive_class

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_lines(text: str) -> list[tuple[int, str]]:
    """(offset in ``text``, line) of every line inside a ```bash block."""
    out = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        offset = block.start(1)
        for line in block.group(1).splitlines(keepends=True):
            out.append((offset, line.strip()))
            offset += len(line)
    return out


def test_readme_commands_run_after_the_quickstart_as_written():
    activate = README.index("source .venv/bin/activate")
    quickstart_end = README.index("## What it does")
    for offset, line in bash_lines(README):
        if line.startswith("medclass "):  # bare: needs the environment active
            assert offset > activate, f"README runs `{line}` before saying how to activate .venv"
        if offset < quickstart_end and "medclass" in line.split("#")[0] and not line.startswith("python3 -m venv"):
            assert ".venv/bin/" in line, f"Quickstart line without .venv/bin/: {line}"
    assert ".venv/bin/medclass train" in README[:quickstart_end]


def test_readme_names_every_split_folder_the_code_accepts():
    from medclass.data.sources import SPLIT_DIR_NAMES

    row = next(line for line in README.splitlines() if line.startswith("| class folders with splits"))
    for aliases in SPLIT_DIR_NAMES.values():
        for alias in aliases:
            assert f"`{alias}`" in row.lower(), f"README's data table does not name the split folder {alias!r}"


def test_readme_says_what_the_first_command_does_and_what_chromium_less_machines_skip():
    text = " ".join(README.split())
    assert "about 63 epochs" in text and "expect about 11 minutes" in text  # benchmarks/results/recipe_vs_monai-breastmnist.json
    assert "A machine without Chromium" in text and "skips 8 tests" in text


@pytest.mark.parametrize("names, index, says", [
    (["malignant", "normal, benign"], 0, "says disease"),  # BreastMNIST: class 1 is the healthy one
    (["no", "yes"], 1, "says disease"),
    (["Benign", "Malignant"], 1, "says disease"),
    (["glioma_tumor", "no_tumor"], 0, "is its negation"),  # "no tumor" is healthy, not a tumour
    (["abnormal", "normal"], 0, "says disease"),
    (["cats", "normal"], 0, "named as healthy"),
    (["bright", "dark"], 1, "neither name says"),
    # one name negates the other; sorted, the negation often comes second and was taken as positive
    (["Demented", "Non-Demented"], 0, "is its negation"),
    (["MildDemented", "NonDemented"], 0, "is its negation"),  # OASIS
    (["cancer", "non_cancer"], 0, "is its negation"),  # both names hold "cancer"
    (["Glaucoma", "Non Glaucoma"], 0, "is its negation"),
    (["not pneumothorax", "pneumothorax"], 1, "is its negation"),
])
def test_the_default_positive_class_is_the_disease(names, index, says):
    got, reason = choose_positive_class(names)
    assert got == index and says in reason and names[index] in reason


def test_a_given_positive_class_must_be_a_class_of_a_binary_task():
    assert choose_positive_class(["malignant", "normal"], "normal")[0] == 1
    with pytest.raises(ValueError, match="not a class of this data"):
        choose_positive_class(["malignant", "normal"], "cancer")
    with pytest.raises(ValueError, match="for binary tasks"):
        choose_positive_class(["a", "b", "c"], "a")


def test_evaluation_reports_sensitivity_of_the_disease_class_recorded_in_the_run(tmp_path, capsys):
    from medclass.engine import train
    from medclass.evaluation import evaluate_run
    from medclass.core.spec import read_spec

    data = make_folder_dataset(tmp_path / "data", per_class=10)
    (data / "dark").rename(data / "malignant")  # sorted: malignant is class 0
    (data / "bright").rename(data / "normal")
    run = train(tiny_config(data, epochs=1), tmp_path / "run").files.root
    assert "positive class 'malignant'" in capsys.readouterr().out  # training says which it picked
    assert read_spec(run).extra["positive_class"] == "malignant"
    assert RunConfig.load(run / "config.yaml").data.positive_class == "malignant"
    m = evaluate_run(run, progress=False, n_bootstrap=20)
    op = m["operating_point"]
    assert op["positive_class"] == "malignant"
    with open(Path(m["out_dir"]) / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    p_malignant = np.array([float(r["p_malignant"]) for r in rows])
    is_malignant = np.array([r["label"] == "malignant" for r in rows])
    expected = float((p_malignant[is_malignant] >= 0.5).mean())
    assert op["at_0.5"]["sensitivity"] == pytest.approx(expected)  # recall of malignant, not of normal
    # the spec decides on P(class 1 = normal): the same decision as P(malignant) >= the chosen threshold
    spec = read_spec(run)
    t = op["chosen_on_valid"]["threshold"]
    assert spec.threshold == pytest.approx(1 - t, abs=1e-9)


def test_predict_table_keeps_whole_class_names():
    from medclass.serving.predict_format import format_predictions

    names = ["adenocarcinoma", "squamous.cell.carcinoma"]
    pred = SimpleNamespace(path="a.png", predicted="squamous.cell.carcinoma", error=None,
                           probabilities={"adenocarcinoma": 0.25, "squamous.cell.carcinoma": 0.75})
    header, row = format_predictions([pred], names, "table").splitlines()
    assert header.split() == ["path", "predicted", *names]
    assert row.split() == ["a.png", "squamous.cell.carcinoma", "0.2500", "0.7500"]


def test_train_help_lists_every_architecture_and_nothing_is_cut_at_80_columns():
    from medclass.models import list_models

    assert set(BUILTIN_ARCHS) <= set(list_models())  # the help's list is the registry's
    runner = CliRunner()
    for command in ("train", "cv", "lr-find", "audit", "evaluate", "predict", "runs"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
        assert result.exit_code == 0
        assert "…" not in result.output, f"`medclass {command} --help` cuts a word at 80 columns"
    text = " ".join(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80"}).output.replace("│", " ").split())
    for arch in BUILTIN_ARCHS:
        assert arch in text
    assert "imagenet-v2" in text and ".safetensors" in text and "--positive-class" in text


def test_roc_axes_name_the_positive_class_and_multiclass_axes_no_positive_label(tmp_path, monkeypatch):
    import medclass.evaluation.plots as plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", lambda fig: figures.append(fig))
    rng = np.random.default_rng(0)
    y3 = np.array([0, 1, 2] * 10)
    plots.plot_roc(y3, rng.dirichlet([1, 1, 1], 30), ["a", "b", "c"], tmp_path / "roc3.png")
    y2 = np.array([0, 1] * 10)
    p2 = rng.dirichlet([1, 1], 20)
    plots.plot_roc(y2, p2, ["malignant", "normal"], tmp_path / "roc2.png", positive=0)
    multi, binary = (f.axes[0] for f in figures)
    assert "Positive label" not in multi.get_xlabel() + multi.get_ylabel()
    assert "positive: malignant" in binary.get_ylabel() and "Positive label" not in binary.get_ylabel()
    assert binary.get_legend_handles_labels()[1][0].startswith("malignant vs normal")


def test_pyproject_license_is_an_spdx_string_setuptools_accepts_without_warning(tmp_path):
    pytest.importorskip("setuptools", minversion="77")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    for name in ("pyproject.toml", "LICENSE", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src", tmp_path / "src")
    import os

    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # setuptools' deprecation of the license table is a warning
            dist = apply_configuration(Distribution(), "pyproject.toml")
    finally:
        os.chdir(here)
    assert dist.metadata.license_expression == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()
