"""Directives that render the configuration reference and the CLI help from the code itself.

The reference is written for someone editing a YAML file: types, defaults and limits are said
in YAML's terms (``true``, ``null``, ``[]``) and in words, not as Python or regular expressions.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

import yaml
from docutils import nodes
from docutils.statemachine import StringList
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

# Patterns of the schema, said in words; a pattern not listed here is shown as it is.
PATTERN_WORDS = {
    r"^[A-Za-z0-9][A-Za-z0-9._-]*$": "a name of letters, digits, ``.``, ``_`` and ``-``, "
    "starting with a letter or digit",
    r"^(auto|cpu|mps|cuda(:[0-9]+)?)$": "``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``",
}
BOUND_WORDS = (("ge", "at least"), ("gt", "greater than"), ("le", "at most"), ("lt", "less than"))
TYPE_WORDS = {str: "text", int: "integer", float: "number", bool: "``true`` or ``false``"}


def _words(items: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _yaml(value: Any) -> str:
    """A value as it is written in a YAML file, on one line."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text.removesuffix("\n...").strip()


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _list_item(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None


def _type_words(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return _words([f"``{_yaml(a)}``" for a in typing.get_args(annotation)])
    if origin in (typing.Union, types.UnionType):
        return _words([_type_words(a) for a in typing.get_args(annotation)])
    if origin is dict:
        return "mapping"
    if origin is list:
        item = _list_item(annotation)
        return "list of entries (see below)" if _is_section(item) else f"list of {_type_words(item)}"
    if annotation is type(None):
        return "``null``"
    return TYPE_WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _allowed(field: Any) -> str:
    """The field's type and limits in words: "integer, at least 1"; a known pattern replaces the type."""
    kind = _type_words(field.annotation)
    limits = []
    for item in field.metadata:
        for attr, words in BOUND_WORDS:
            value = getattr(item, attr, None)
            if value is not None:
                limits.append(f"{words} {value}")
        if getattr(item, "min_length", None) == 1:
            limits.append("not empty")
        pattern = getattr(item, "pattern", None)
        if pattern in PATTERN_WORDS:
            kind = PATTERN_WORDS[pattern]
        elif pattern:
            limits.append(f"matching the pattern ``{pattern}``")
    return f"{kind}, {' and '.join(limits)}" if limits else kind


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        return f"``{_yaml(field.default)}``"
    if field.default_factory is not None:
        return f"``{_yaml(field.default_factory())}``"
    return "required"


def _rst(text: str) -> str:
    """The schema's texts mark code with single backquotes, as Markdown does; reST needs two."""
    return re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text)


def _summary(model: type[BaseModel]) -> str:
    return _rst((model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "))


def _table(model: type[BaseModel]) -> list[str]:
    """A list-table of the model's plain keys (sections get their own table)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 20 24 14 42",
        "   :class: config-reference",
        "",
        "   * - key",
        "     - allowed values",
        "     - default",
        "     - meaning",
    ]
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            continue
        lines += [
            f"   * - ``{name}``",
            f"     - {_allowed(field)}",
            f"     - {_default(field)}",
            f"     - {_rst(field.description or '')}",
        ]
    return lines


def reference_lines(model: type[BaseModel]) -> list[str]:
    """reStructuredText for every key of ``model``: its own keys, then one sub-section per section."""
    lines = ["Top-level keys", "-" * 14, "", *_table(model), ""]
    for name, field in model.model_fields.items():
        annotation = field.annotation
        item = _list_item(annotation)
        if _is_section(annotation):
            title, section = f"``{name}``", annotation
            intro = (
                f"{_summary(annotation)} These keys go under ``{name}:``; on the command line, ``{name}.KEY=VALUE``."
            )
        elif _is_section(item):
            title, section = f"``{name}`` entries", item
            intro = f"{_summary(item)} Each entry of the list under ``{name}:`` has these keys."
        else:
            continue
        lines += [title, "-" * len(title), "", intro, "", *_table(section), ""]
    return lines


class ConfigReference(SphinxDirective):
    """``.. config-reference::`` renders every key of :class:`fmnist_ignite.Config`, a table per section."""

    def run(self) -> list[nodes.Node]:
        from fmnist_ignite.config import Config

        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(reference_lines(Config), "config-reference"), container)
        return container.children


class CliHelp(SphinxDirective):
    """``.. cli-help::`` renders ``python -m fmnist_ignite --help``."""

    def run(self) -> list[nodes.Node]:
        from fmnist_ignite.app.cli import build_parser

        text = build_parser().format_help()
        return [nodes.literal_block(text, text, language="text")]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("config-reference", ConfigReference)
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "version": "1"}
