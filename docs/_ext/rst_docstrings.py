"""Griffe extension for the docs build: render the reST bits of our Google-style docstrings.

The package's docstrings are Google style (for mkdocstrings) but use a few constructs that also
read well in ``help()``: ``.. math::`` blocks, ``:math:`` roles, ``:func:``/``:class:``
cross-reference roles, grouped parameters (``a, b: ...``) and ``Example:`` sections (griffe
parses only ``Examples:`` as doctest code). This extension rewrites them, in the docs build
only, to the Markdown that ``pymdownx.arithmatex`` and mkdocstrings understand. It is not part
of the installed package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.M)


def _convert_math_blocks(text: str) -> str:
    """``.. math::`` followed by an indented block -> a ``$$ ... $$`` display block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(".. math::"):
            indent = line[: len(line) - len(stripped)]
            body: list[str] = []
            inline = stripped[len(".. math::") :].strip()
            if inline:
                body.append(inline)
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent + " ")):
                if lines[i].strip():
                    body.append(lines[i].strip())
                elif body:
                    # A blank line after the formula ends the block.
                    if i + 1 < len(lines) and not lines[i + 1].startswith(indent + " "):
                        break
                i += 1
            out.extend([indent + "$$", *(indent + b for b in body), indent + "$$", ""])
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Attributes|Keyword Args):\s*$")
_NAMES = re.compile(r"^[\w*]+(?:\s*,\s*[\w*]+)*,?$")


def _split_grouped_params(text: str) -> str:
    """Expand ``a, b, c: description`` (names may wrap) into one entry per name."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    item_indent: str | None = None
    while i < len(lines):
        line = lines[i]
        header = _SECTION.match(line)
        if header:
            item_indent = None
            out.append(line)
            i += 1
            # Items are indented one level deeper than the header.
            for j in range(i, len(lines)):
                if lines[j].strip():
                    indent = lines[j][: len(lines[j]) - len(lines[j].lstrip())]
                    if len(indent) > len(header.group(1)):
                        item_indent = indent
                    break
            continue
        if item_indent is not None and line.strip() and not line.startswith(item_indent):
            item_indent = None  # left the section
        if (
            item_indent is not None
            and line.startswith(item_indent)
            and not line[len(item_indent) :].startswith(" ")
        ):
            head = line.strip()
            k = i
            # Names may continue on following, deeper-indented lines until the colon.
            while ":" not in head and k + 1 < len(lines) and _NAMES.match(head):
                k += 1
                head += " " + lines[k].strip()
            names_part, sep, desc = head.partition(":")
            names = [n.strip() for n in names_part.split(",") if n.strip()]
            if sep and len(names) > 1 and all(re.fullmatch(r"[\w*]+", n) for n in names):
                body: list[str] = []
                k += 1
                while k < len(lines) and (
                    not lines[k].strip() or lines[k].startswith(item_indent + " ")
                ):
                    if not lines[k].strip():
                        break
                    body.append(lines[k])
                    k += 1
                for name in names:
                    out.append(f"{item_indent}{name}:{desc}")
                    out.extend(body)
                i = k
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _shorten(match: re.Match[str]) -> str:
    return f"`{match.group(1).split('.')[-1]}`"


def convert(text: str) -> str:
    """Rewrite the reST constructs of one docstring to Markdown."""
    text = _convert_math_blocks(text)
    text = _split_grouped_params(text)
    # Griffe renders "Example:" as an admonition (``>>>`` lines become quotes) and parses
    # "Examples:" as doctest code blocks.
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(_shorten, text)


class RstDocstrings(griffe.Extension):
    """Convert reST math and roles in every docstring that griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
