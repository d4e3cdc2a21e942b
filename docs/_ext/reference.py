"""Directives that render the configuration reference and the CLI help from the code itself."""

from __future__ import annotations

import typing
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{args}]" if name not in ("Union", "UnionType") else args.replace(", ", " | ")
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: Any) -> str:
    parts = []
    for item in field.metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >=")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches ``{pattern}``")
    return ", ".join(parts)


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        return f"``{field.default!r}``" if field.default is not None else "``null``"
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else f"``{value!r}``"
    return "required"


def config_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type and bounds, default, description) for every key, sections first-level then nested."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.append((key, "section", "", (annotation.__doc__ or "").strip().splitlines()[0]))
            rows.extend(config_rows(annotation, key + "."))
            continue
        kind = _type_name(annotation)
        bounds = _constraints(field)
        rows.append((key, f"{kind} ({bounds})" if bounds else kind, _default(field), field.description or ""))
        item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            rows.extend(config_rows(item, f"{key}[].")[:])
    return rows


class ConfigReference(SphinxDirective):
    """``.. config-reference::`` renders every key of :class:`fmnist_ignite.Config` as a table."""

    def run(self) -> list[nodes.Node]:
        from fmnist_ignite.config import Config

        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 22 22 14 42", "",
                 "   * - key", "     - type", "     - default", "     - meaning"]
        for key, kind, default, description in config_rows(Config):
            lines += [f"   * - ``{key}``", f"     - {kind}", f"     - {default}", f"     - {description}"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return container.children


class CliHelp(SphinxDirective):
    """``.. cli-help::`` renders ``python -m fmnist_ignite --help``."""

    def run(self) -> list[nodes.Node]:
        from fmnist_ignite.cli import build_parser

        text = build_parser().format_help()
        return [nodes.literal_block(text, text)]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("config-reference", ConfigReference)
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "version": "1"}
