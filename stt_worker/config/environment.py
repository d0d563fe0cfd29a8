"""`EnvSettings`: settings read from the environment by their documented names only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class _DocumentedNamesOnly(EnvSettingsSource):
    """The environment, read by each field's documented variable(s) only.

    `populate_by_name` lets code build settings by field name (`load_settings(durable=True)`),
    but pydantic-settings then also reads the bare field name from the environment: `PORT`,
    `TOKEN` or `DURABLE`, which platforms and shells set for their own reasons, would
    configure us. Names stay allowed as keyword arguments, not as variables.
    """

    def _extract_field_info(
        self, field: FieldInfo, field_name: str, model_config: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str, bool]]:
        config = dict(self.config if model_config is None else model_config)
        config.update(populate_by_name=False, validate_by_name=False)
        return super()._extract_field_info(field, field_name, config)


class EnvSettings(BaseSettings):
    """Settings read from the environment by their documented variable names only."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _DocumentedNamesOnly(settings_cls), file_secret_settings)
