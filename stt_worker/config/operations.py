"""Probes, metrics and logs."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel

from stt_worker.config.fields import Group, setting


class OperationFields(BaseModel):
    """The fields of `Group.OPERATIONS`, one of the bases of `Settings`."""

    http_host: str = setting(
        "0.0.0.0",
        "STT_HTTP_HOST",
        group=Group.OPERATIONS,
        description="Listen address of `/healthz`, `/readyz` and `/metrics`.",
    )
    http_port: int = setting(
        8080,
        "STT_HTTP_PORT",
        group=Group.OPERATIONS,
        description="Listen port of `/healthz`, `/readyz` and `/metrics`; 0 = a free port "
        "the OS picks (tests), -1 = no HTTP endpoint at all.",
        ge=-1,
        le=65535,
    )
    log_level: str = setting(
        "INFO",
        AliasChoices("STT_LOG_LEVEL", "LOG_LEVEL"),
        group=Group.OPERATIONS,
        description="Log level.",
    )
    log_format: Literal["auto", "json", "text"] = setting(
        "auto",
        "STT_LOG_FORMAT",
        group=Group.OPERATIONS,
        description="`json` (one object per line), `text`, or `auto`: text on a terminal, "
        "JSON otherwise.",
    )
    build_commit: str = setting(
        "unknown",
        "STT_BUILD_COMMIT",
        group=Group.OPERATIONS,
        description="Source commit of the running build, the `commit` label of "
        "`stt_build_info` and `stt_whisper_server_build_info` (the images set it from "
        "`--build-arg STT_BUILD_COMMIT=$(git rev-parse HEAD)`).",
    )
