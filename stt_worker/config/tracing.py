"""OpenTelemetry tracing and HyperDX."""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, SecretStr

from stt_worker.config.fields import Group, setting


class TracingFields(BaseModel):
    """The fields of `Group.TRACING`, one of the bases of `Settings`."""

    # The seed's names; the OTLP exporters also read the standard OTEL_* variables themselves.
    otel_enabled: bool = setting(
        True,
        "OTEL_ENABLED",
        group=Group.TRACING,
        description="Export traces over OTLP. The standard `OTEL_EXPORTER_OTLP_*` variables "
        "(endpoint, headers, timeout, certificates, compression), `OTEL_RESOURCE_ATTRIBUTES` "
        "and `OTEL_BSP_*` apply.",
    )
    otel_service_name: str = setting(
        "stt-streaming",
        "OTEL_SERVICE_NAME",
        group=Group.TRACING,
        description="`service.name` of the exported spans.",
    )
    otel_exporter_otlp_protocol: str = setting(
        "http/protobuf",
        AliasChoices("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        group=Group.TRACING,
        description="`http/protobuf` (the OTel default for new SDKs) or `grpc`.",
    )
    otel_exporter_otlp_endpoint: str | None = setting(
        None,
        AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        group=Group.TRACING,
        description="Where the OTLP exporter sends traces; unset: the exporter's default for "
        "the protocol. With `HYPERDX_ENABLED`, the OTLP exporter runs only when this is set.",
    )
    hyperdx_enabled: bool = setting(
        False,
        "HYPERDX_ENABLED",
        group=Group.TRACING,
        description="Also send traces to HyperDX (needs `HYPERDX_API_KEY`).",
    )
    hyperdx_api_key: SecretStr | None = setting(
        None,
        "HYPERDX_API_KEY",
        group=Group.TRACING,
        description="HyperDX key, sent as `authorization`; never logged.",
    )
    hyperdx_otlp_endpoint: str = setting(
        "https://in-otel.hyperdx.io",
        "HYPERDX_OTLP_ENDPOINT",
        group=Group.TRACING,
        description="HyperDX's OTLP/HTTP endpoint.",
    )
