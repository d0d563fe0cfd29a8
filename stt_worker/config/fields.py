"""`setting`, the one way a settings field is declared, and the `Group`s the fields fall in.

A field declared with `setting` keeps its environment variable(s), group and description as
data, which docs/configuration.md is rendered from.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, Field
from pydantic.fields import FieldInfo

_GROUP_KEY = "group"


def setting(
    default: Any,
    env: str | AliasChoices,
    *,
    group: str,
    description: str,
    **constraints: Any,
) -> Any:
    """A settings field read from `env`, with its group and description kept as data.

    A plain name becomes the field's alias, as ``Field(alias=...)`` would make it;
    `AliasChoices` (several names, the first set one wins) becomes its validation alias.
    `constraints` are pydantic's (``ge``, ``le``, ``gt``, ...).
    """
    names = {"alias": env} if isinstance(env, str) else {"validation_alias": env}
    return Field(
        default,
        description=description,
        json_schema_extra={_GROUP_KEY: str(group)},
        **names,
        **constraints,
    )


def group_of(field: FieldInfo) -> str | None:
    """The group `setting` gave a field; None for a field declared some other way."""
    extra = field.json_schema_extra
    group = extra.get(_GROUP_KEY) if isinstance(extra, dict) else None
    return group if isinstance(group, str) else None


class Group(StrEnum):
    """The worker's settings by concern, in the order the source and the docs list them."""

    TRANSPORT = "Transport"
    NATS_AUTH = "NATS authentication and TLS"
    ENGINE = "Engine and model"
    HTTP_ENGINE = "HTTP engine"
    WHISPER_SERVER = "Whisper server"
    AUDIO = "Audio and VAD"
    UTTERANCES = "Utterances and partials"
    END_OF_TURN = "End of turn"
    BARGE_IN = "Barge-in"
    LIMITS = "Limits and bounds"
    PARTITIONS = "Partitions"
    DURABILITY = "Durability"
    OPERATIONS = "Probes and logs"
    TRACING = "Tracing"
