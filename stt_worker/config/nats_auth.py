"""How the worker proves itself to NATS: credentials files, token, user and password, TLS."""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, FilePath, SecretStr, field_validator

from stt_worker.config.fields import Group, setting


class NatsAuthFields(BaseModel):
    """The fields of `Group.NATS_AUTH`, one of the bases of `Settings`."""

    # nats-py takes each of these as it is; runtime/connection.py hands them over.
    nats_creds_file: FilePath | None = setting(
        None,
        AliasChoices("NATS_CREDS_FILE", "NATS_CREDS"),
        group=Group.NATS_AUTH,
        description="`.creds` file (JWT and NKey seed, e.g. from `nsc generate creds`) for "
        "decentralised auth; empty = unset.",
    )
    nats_nkey_seed_file: FilePath | None = setting(
        None,
        "NATS_NKEY_SEED_FILE",
        group=Group.NATS_AUTH,
        description="NKey seed file (`SU...`); empty = unset.",
    )
    nats_token: SecretStr | None = setting(
        None,
        "NATS_TOKEN",
        group=Group.NATS_AUTH,
        description="Token auth; never logged; empty = unset.",
    )
    nats_user: str | None = setting(
        None,
        "NATS_USER",
        group=Group.NATS_AUTH,
        description="User for user/password auth (with `NATS_PASSWORD`); empty = unset.",
    )
    nats_password: SecretStr | None = setting(
        None,
        "NATS_PASSWORD",
        group=Group.NATS_AUTH,
        description="Password for user/password auth; never logged; empty = unset.",
    )
    nats_tls_ca_file: FilePath | None = setting(
        None,
        "NATS_TLS_CA_FILE",
        group=Group.NATS_AUTH,
        description="CA that signed the server's certificate. Any `NATS_TLS_*` turns TLS on; "
        "the CA alone verifies the server. Empty = unset.",
    )
    nats_tls_cert_file: FilePath | None = setting(
        None,
        "NATS_TLS_CERT_FILE",
        group=Group.NATS_AUTH,
        description="Client certificate (with `NATS_TLS_KEY_FILE`), for servers that verify "
        "clients (`verify: true`); empty = unset.",
    )
    nats_tls_key_file: FilePath | None = setting(
        None,
        "NATS_TLS_KEY_FILE",
        group=Group.NATS_AUTH,
        description="Key of the client certificate; empty = unset.",
    )

    @field_validator(
        "nats_creds_file",
        "nats_nkey_seed_file",
        "nats_token",
        "nats_user",
        "nats_password",
        "nats_tls_ca_file",
        "nats_tls_cert_file",
        "nats_tls_key_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # A ConfigMap or Secret key left empty means "not used", not "a file named ''".
        return None if value == "" else value
