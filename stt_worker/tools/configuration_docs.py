"""The configuration reference, docs/configuration.md, rendered from the settings classes.

``python -m stt_worker.tools.configuration_docs`` prints the page; ``--write`` writes it to
docs/configuration.md (or to the path given). Each settings class is a section, each of its
groups a table: the environment variables a field is read from, its default, its type and
bounds, its description. The defaults of secrets are never printed.

A field without a description or a group stops the rendering, so the page cannot silently
leave one out; tests/test_configuration_docs.py also fails when the committed page is stale.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from stt_worker.config import Settings, group_of
from stt_worker.gateway.settings import GatewaySettings
from stt_worker.tools.generated_page import print_or_write

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
COMMAND = "python -m stt_worker.tools.configuration_docs --write"
SECTIONS: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("Worker", Settings),
    ("Gateway", GatewaySettings),
)

_TYPE_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    SecretStr: "secret string",
    Path: "path",
}
_BOUNDS: tuple[tuple[type, str, str], ...] = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)
_PREAMBLE = f"""\
<!-- Generated from stt_worker/config/ and stt_worker/gateway/settings.py by
`{COMMAND}` (or `./dev docs`): edit those, not this file. -->

# Configuration

Every setting is an environment variable, read once at start into a frozen settings object
and validated there. Variable names are matched whatever their case. Booleans take `true` or
`false` (also `1`/`0`, `yes`/`no`, `on`/`off`). Where a row names several variables, the
first one set wins. A default of *unset* means no value; the description says what that
means. Only the variables listed here are read: a setting's bare name (`PORT`, `TOKEN`,
`DURABLE`) configures nothing.
"""


@dataclass(frozen=True)
class Row:
    """One setting as the page shows it."""

    group: str
    variables: tuple[str, ...]
    default: str
    kind: str
    description: str


def undocumented(settings_class: type[BaseSettings]) -> list[str]:
    """The fields of `settings_class` that lack a description, a group or a variable."""
    return [
        name
        for name, field in settings_class.model_fields.items()
        if not (field.description and group_of(field) and env_names(field))
    ]


def rows(settings_class: type[BaseSettings]) -> list[Row]:
    """Every field of `settings_class`, in source order; ValueError if one is undocumented."""
    missing = undocumented(settings_class)
    if missing:
        raise ValueError(
            f"{settings_class.__name__} fields without a description, a group or a variable: "
            f"{', '.join(missing)}; declare them with stt_worker.config.setting()"
        )
    return [
        Row(
            group=group_of(field) or "",
            variables=tuple(env_names(field)),
            default=default_text(field),
            kind=kind_text(field),
            description=field.description or "",
        )
        for field in settings_class.model_fields.values()
    ]


def env_names(field: FieldInfo) -> list[str]:
    """The environment variables a field is read from, the preferred one first."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    return [alias] if isinstance(alias, str) else []


def default_text(field: FieldInfo) -> str:
    """The default as an operator would write it; a secret's is hidden."""
    value = field.default
    if value is PydanticUndefined:
        if field.default_factory is not None:
            raise ValueError("a default_factory cannot be documented: give a plain default")
        return "required"
    if value is None:
        return "unset"
    if _is_secret(field.annotation):
        return "(hidden)"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{_number(value) if isinstance(value, float) else value}`"


def kind_text(field: FieldInfo) -> str:
    """The type in words, then its bounds: `integer, ≥ 1, ≤ 10`."""
    bounds = [_bound(constraint) for constraint in field.metadata]
    return ", ".join([_type_name(field.annotation), *bounds])


def render_page(sections: Sequence[tuple[str, type[BaseSettings]]] = SECTIONS) -> str:
    """The whole page: a section per settings class, a table per group."""
    lines = [_PREAMBLE]
    for title, settings_class in sections:
        lines += [f"## {title}", "", inspect.getdoc(settings_class) or "", ""]
        by_group: dict[str, list[Row]] = {}
        for row in rows(settings_class):
            by_group.setdefault(row.group, []).append(row)
        for group, group_rows in by_group.items():
            lines += [f"### {group}", ""]
            lines += ["| variable | default | type | description |", "| --- | --- | --- | --- |"]
            lines += [_table_row(row) for row in group_rows]
            lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return print_or_write(
        render_page, DOC_PATH, argv, prog="python -m stt_worker.tools.configuration_docs"
    )


def _table_row(row: Row) -> str:
    variables = " or ".join(f"`{name}`" for name in row.variables)
    cells = (variables, row.default, row.kind, row.description)
    # A bare | would end the cell, even inside a code span.
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        named = [_type_name(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " or ".join(named)
    if origin is Literal:
        choices = [f"`{choice}`" for choice in get_args(annotation)]
        return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
    if origin is Annotated:
        base, *extras = get_args(annotation)
        if any(getattr(extra, "path_type", None) == "file" for extra in extras):
            return "path of an existing file"
        return _type_name(base)
    if annotation in _TYPE_NAMES:
        return _TYPE_NAMES[annotation]
    raise TypeError(f"no words for the type {annotation!r}: add them to configuration_docs")


def _bound(constraint: object) -> str:
    for kind, attribute, symbol in _BOUNDS:
        if isinstance(constraint, kind):
            return f"{symbol} {_number(getattr(constraint, attribute))}"
    raise TypeError(f"no words for the constraint {constraint!r}: add them to configuration_docs")


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(arg) for arg in get_args(annotation))


def _number(value: object) -> str:
    """2.0 as 2, 0.2 as 0.2: the way the value would be written in the environment."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
