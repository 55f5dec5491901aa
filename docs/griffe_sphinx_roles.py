"""Griffe extension: turn the Sphinx/reST markup of medclass's docstrings into Markdown.

The docstrings in ``src/medclass`` are Google style, but their prose uses reST: roles such as
``:func:`medclass.engine.train```, ``:class:`~medclass.core.spec.ModelSpec```, ``:meth:`Run.evaluate```,
double-backtick literals, and paragraphs ending in ``::`` followed by an indented literal block.
mkdocstrings renders docstrings as Markdown, where those show literally. This extension rewrites
each docstring once the package is loaded (before mkdocstrings parses it), without touching the
source files:

* ``:role:`target``` (any role, ``py:`` domain optional) becomes an *optional* mkdocs-autorefs
  cross-reference, ``<autoref identifier="a.b.c" optional><code>a.b.c</code></autoref>``: a link
  when the target is rendered somewhere in the site, otherwise (autorefs' rule for optional
  references) plain inline code, with no warning under ``mkdocs build --strict``. The target is
  resolved in the docstring owner's scope with Griffe (``Run.evaluate`` in ``medclass.api`` ->
  ``medclass.api.Run.evaluate``; re-exported names -> their canonical path, which mkdocstrings
  registers for every rendered object). The text shown follows Sphinx: ``~a.b.c`` shows ``c``,
  ``title <target>`` shows ``title``, ``!target`` is never a link.
* ``double backticks`` become single-backtick Markdown code.
* a paragraph line ending in ``::`` gets a single ``:`` (a lone ``::`` line goes away, ``text ::``
  loses it), and the indented literal block after it becomes a fenced code block (``python`` when
  the block parses as Python, ``pycon`` for ``>>>`` sessions, ``text`` otherwise).

Literal blocks are copied verbatim (no role or backtick rewriting inside them).

Registered in ``mkdocs.yml``::

    plugins:
      - mkdocstrings:
          handlers:
            python:
              options:
                extensions:
                  - docs/griffe_sphinx_roles.py:SphinxRoles
"""

from __future__ import annotations

import ast
import contextlib
import html
import re
import textwrap
from typing import TYPE_CHECKING, Any

from griffe import Extension

if TYPE_CHECKING:
    from griffe import GriffeLoader, Module, Object

# ``literal`` | :role:`content` / :domain:role:`content`
_INLINE_RE = re.compile(
    r"(?<!`)``(?P<literal>(?:[^`]|`(?!`))+?)``(?!`)"
    r"|(?<![\w`]):(?:(?P<domain>[a-z]+):)?(?P<role>[a-z][a-z0-9-]*):`(?P<content>[^`]+)`"
)
# A Google-style section title (the docstring's own level: column 0 after cleandoc).
_SECTION_TITLE_RE = re.compile(
    r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters|Returns|Return|Yields|Yield"
    r"|Receives|Raises|Raise|Warns|Warnings|Attributes|Examples|Example|Note|Notes|See Also|Todo)\s*:\s*$",
)
# Google-style sections whose items griffe splits as "exception: description".
_RAISES_TITLE_RE = re.compile(r"^\s*(?P<title>Raises|Raise|Exceptions|Except|Warns|Warnings)\s*:\s*$", re.IGNORECASE)
# Sphinx explicit title: ``title <target>``.
_EXPLICIT_TITLE_RE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$", re.DOTALL)
# Roles whose target is a Python object (the others: shown as code, never linked).
_PY_ROLES = {"func", "meth", "class", "mod", "data", "attr", "exc", "obj", "const", "type", "property"}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _code_lang(block: str) -> str:
    if block.lstrip().startswith(">>>"):
        return "pycon"
    try:
        ast.parse(block)
    except SyntaxError:
        return "text"
    return "python"


class SphinxRoles(Extension):
    """Rewrite reST roles, double-backtick literals and ``::`` literal blocks into Markdown."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._done: set[int] = set()
        self._loader: GriffeLoader | None = None

    # The whole tree is loaded (aliases can be resolved) when on_package fires; on_object does
    # not fire for the top-level module itself, so one walk from the package covers everything.
    def on_package(self, *, pkg: Module, loader: GriffeLoader, **kwargs: Any) -> None:
        self._loader = loader
        self._walk(pkg)

    def _walk(self, obj: Object) -> None:
        self._rewrite(obj)
        for member in list(obj.members.values()):
            if not member.is_alias:
                self._walk(member)

    # -- docstrings -------------------------------------------------------------------------

    def _rewrite(self, obj: Object) -> None:
        docstring = obj.docstring
        if docstring is None or id(docstring) in self._done:
            return
        self._done.add(id(docstring))
        new = self.convert(docstring.value, obj)
        if new != docstring.value:
            docstring.value = new
            docstring.__dict__.pop("parsed", None)  # drop a cached parse of the old text

    def convert(self, text: str, obj: Object | None = None) -> str:
        """The Markdown form of the reST docstring ``text`` (names resolved in ``obj``'s scope)."""
        out: list[str] = []
        prose: list[str] = []

        def flush_prose() -> None:
            if prose:
                out.append(self._inline("\n".join(prose), obj))
                prose.clear()

        lines = self._unsplittable_raises(self._separate_sections(text.split("\n")))
        i = 0
        while i < len(lines):
            line = lines[i]
            stripped = line.rstrip()
            if stripped.endswith("::") and not stripped.lstrip().startswith(".. "):
                block_end, block = self._literal_block(lines, i)
                if block is not None:
                    base = " " * _indent(line)
                    head = stripped.strip()
                    if head == "::":
                        pass  # the paragraph is only "::": nothing to show
                    elif head.endswith(" ::"):
                        prose.append(stripped[:-3].rstrip())
                    else:
                        prose.append(stripped[:-1])  # "text::" -> "text:"
                    flush_prose()
                    body = textwrap.dedent("\n".join(block))
                    fence = "````" if "```" in body else "```"
                    out.append(
                        "\n".join(
                            [
                                "",
                                f"{base}{fence}{_code_lang(body)}",
                                *(f"{base}{code}".rstrip() for code in body.split("\n")),
                                f"{base}{fence}",
                                "",
                            ],
                        ),
                    )
                    i = block_end
                    continue
            prose.append(line)
            i += 1
        flush_prose()
        return "\n".join(out)

    @staticmethod
    def _separate_sections(lines: list[str]) -> list[str]:
        """A blank line before each Google section title that directly follows text (``Returns:``
        right under the Args block): Sphinx's napoleon reads such sections, Griffe skips them
        as text unless a blank line precedes them."""
        out: list[str] = []
        for i, line in enumerate(lines):
            if (
                i > 0
                and _SECTION_TITLE_RE.match(line)
                and lines[i - 1].strip()
                and i + 1 < len(lines)
                and lines[i + 1].startswith(" ")
                and not any(prev.lstrip().startswith("```") for prev in lines[:i])  # not in a fence
            ):
                out.append("")
            out.append(line)
        return out

    @staticmethod
    def _unsplittable_raises(lines: list[str]) -> list[str]:
        """Turn a "Raises:" section none of whose items has an ``exception: description`` colon
        (in reST prose, ``as :meth:`evaluate`.``: the only colons were the role's) into a plain
        paragraph, ``Raises: as ...``; Griffe would otherwise warn that it cannot split it (which
        fails ``mkdocs build --strict``) and render nothing useful."""
        out: list[str] = []
        i = 0
        while i < len(lines):
            title = _RAISES_TITLE_RE.match(lines[i])
            if title and i + 1 < len(lines) and _indent(lines[i + 1]) > _indent(lines[i]):
                base = _indent(lines[i])
                j = i + 1
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                    j += 1
                while j > i + 1 and not lines[j - 1].strip():
                    j -= 1
                block = lines[i + 1 : j]
                item_indent = _indent(block[0])
                items = [line for line in block if line.strip() and _indent(line) == item_indent]
                if all(":" not in _INLINE_RE.sub("x", line) for line in items):
                    words = " ".join(line.strip() for line in block if line.strip())
                    out.append(f"{' ' * base}{title['title']}: {words}")
                    i = j
                    continue
            out.append(lines[i])
            i += 1
        return out

    @staticmethod
    def _literal_block(lines: list[str], i: int) -> tuple[int, list[str] | None]:
        """The indented block after the ``::`` line ``i``: (index after it, its lines) or (i, None)."""
        base = _indent(lines[i])
        j = i + 1
        if j >= len(lines) or lines[j].strip():
            return i, None  # reST needs a blank line before the literal block
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or _indent(lines[j]) <= base:
            return i, None
        start = j
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            j += 1
        end = j
        while end > start and not lines[end - 1].strip():
            end -= 1
        return j, lines[start:end]

    # -- inline markup ----------------------------------------------------------------------

    def _inline(self, text: str, obj: Object | None) -> str:
        def replace(match: re.Match[str]) -> str:
            if match["literal"] is not None:
                literal = match["literal"]
                if "`" in literal:  # Markdown's double-backtick span allows single backticks inside
                    return f"`` {literal} ``"
                return f"`{literal}`"
            return self._role(match["domain"], match["role"], match["content"], obj)

        return _INLINE_RE.sub(replace, text)

    def _role(self, domain: str | None, role: str, content: str, obj: Object | None) -> str:
        content = " ".join(content.split())
        explicit = _EXPLICIT_TITLE_RE.match(content)
        if explicit:
            title, target = explicit["title"], explicit["target"].strip()
        else:
            title, target = None, content
        no_link = target.startswith("!")
        target = target.lstrip("!")
        short = target.startswith("~")
        target = target.lstrip("~.")
        if title is None:
            title = target.rsplit(".", 1)[-1] if short else target
        code = f"<code>{html.escape(title)}</code>"
        if no_link or (domain not in (None, "py")) or role not in _PY_ROLES:
            return code
        identifier = self._resolve(target, obj)
        return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'

    def _resolve(self, target: str, obj: Object | None) -> str:
        """The canonical path of ``target`` as seen from ``obj`` (``target`` itself if unknown)."""
        target = target.removesuffix("()")
        first, _, rest = target.partition(".")
        path = target
        if obj is not None:
            try:
                resolved = obj.resolve(first)
            except Exception:  # noqa: BLE001 - an unknown name stays as written
                resolved = None
            if resolved:
                path = f"{resolved}.{rest}" if rest else resolved
        if self._loader is not None:
            try:
                found = self._loader.modules_collection.get_member(path)
            except Exception:  # noqa: BLE001
                found = None
            if found is not None:
                with contextlib.suppress(Exception):  # an alias to something not loaded: as written
                    path = found.canonical_path
        return path
