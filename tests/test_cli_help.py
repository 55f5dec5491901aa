"""`--help` reads as sentences (issue 24, point 3): a command's docstring is its help, and Typer (rich
markup) rewraps only the first paragraph of a command's own help and no line of the command list,
so a hard line break inside a docstring paragraph was rendered as a line cut mid-sentence
(`medclass ood-fit --help`, `medclass report --help`, the list of `medclass --help`). Each
paragraph is one source line now; these tests render the help on a wide terminal and check that
every line of the docstring's text was broken by the wrapping, not by the source. Torch-free."""

import inspect
import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from medclass.cli.app import app

#: Wider than any source line of app.py's docstrings (about 100 characters): a hard break in a
#: paragraph leaves a rendered line far shorter than the terminal.
WIDTH = 160

runner = CliRunner()
COMMANDS = get_command(app).commands
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _render(args: list[str]) -> list[str]:
    result = runner.invoke(app, args, terminal_width=WIDTH, env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output).splitlines()


def _paragraphs(help_text: str) -> list[str]:
    """The docstring's paragraphs (blank-line separated), each whitespace-normalised to one line."""
    return [" ".join(p.split()) for p in inspect.cleandoc(help_text).split("\n\n") if p.strip()]


def _cut_early(lines: list[str], width: int) -> list[str]:
    """The lines of one wrapped paragraph after which the next line's first word would still have
    fitted in ``width`` columns (with a little slack): a break the wrapping did not make."""
    return [a for a, b in zip(lines, lines[1:]) if len(a) + 1 + len(b.split()[0]) <= width - 3]


def test_every_command_has_help():
    assert len(COMMANDS) >= 10
    for name, cmd in COMMANDS.items():
        assert cmd.help and cmd.help.strip(), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_docstring_paragraphs_are_one_line_each(name):
    """The cause: a line break inside a paragraph of the docstring (Typer does not rewrap those)."""
    for paragraph in inspect.cleandoc(COMMANDS[name].help).split("\n\n"):
        assert "\n" not in paragraph.strip(), f"{name}: a paragraph of its docstring spans lines: {paragraph!r}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_help_is_wrapped_by_the_terminal(name):
    """`medclass NAME --help`: the text between the usage line and the first panel is the
    docstring, paragraph by paragraph, and no line of it ends before the terminal's width does."""
    lines = _render([name, "--help"])
    width = max(len(line) for line in lines)  # the panels' borders span the console
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if "╭" in line and i > start), len(lines))
    rendered: list[list[str]] = [[]]
    for line in lines[start:end]:
        if line.strip():
            rendered[-1].append(line.strip())
        elif rendered[-1]:
            rendered.append([])
    rendered = [p for p in rendered if p]
    assert [" ".join(p) for p in rendered] == _paragraphs(COMMANDS[name].help)
    for paragraph in rendered:
        assert not _cut_early(paragraph, width - 2), f"{name} --help cuts a line mid-sentence: {paragraph}"


def test_command_list_shows_each_first_paragraph_wrapped():
    """`medclass --help`: each command's row is its docstring's first paragraph, wrapped by the
    table, not cut where the source line ended."""
    lines = _render(["--help"])
    top = next(i for i, line in enumerate(lines) if "Commands" in line and "╭" in line)
    rows: dict[str, list[str]] = {}
    column, name = None, None
    for line in lines[top + 1:]:
        if line.startswith("╰"):
            break
        right = line.rindex("│")
        if column is None:
            m = re.match(r"│ (\S+)\s+", line)
            column = m.end()
        head = line[1:column].strip()
        if head:
            name = head
            rows[name] = []
        rows[name].append(line[column:right].strip())
    assert set(rows) == set(COMMANDS)
    width = right - column - 1
    for name, text in rows.items():
        text = [t for t in text if t]
        assert " ".join(text) == _paragraphs(COMMANDS[name].help)[0], name
        assert not _cut_early(text, width), f"the command list cuts {name}'s line mid-sentence: {text}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_option_help_is_one_sentence_string(name):
    """Option and argument help strings are single lines without doubled spaces (a string literal
    concatenation that lost or doubled its space)."""
    for param in COMMANDS[name].params:
        text = getattr(param, "help", None) or ""
        assert "\n" not in text and "  " not in text, f"{name} {param.name}: {text!r}"


def test_ood_fit_help_names_the_defaults():
    """`ood-fit --help` gives the defaults by value (not as Python constant names): they are those
    of medclass.core.ood."""
    from medclass.core.ood import DEFAULT_OOD_COMBINE, DEFAULT_OOD_LAYERS, DEFAULT_OOD_METHOD, DEFAULT_THRESHOLD_RULE

    helps = {p.name: p.help for p in COMMANDS["ood-fit"].params}
    assert f"(default: {DEFAULT_OOD_METHOD})" in helps["method"]
    assert f"default: {DEFAULT_OOD_LAYERS}." in helps["layers"]
    assert f"(default: {DEFAULT_OOD_COMBINE})" in helps["combine"]
    assert f"(default: {DEFAULT_THRESHOLD_RULE})" in helps["threshold_rule"]
    assert not any("DEFAULT_" in (h or "") for h in helps.values())
