"""NATS authentication and TLS, each against a real nats-server that requires it: the worker
connects with what its settings name and transcribes, a client without credentials is
refused, and no secret reaches the log. Also the example account config in k8s/nats/."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nats.aio.client import Client

from stt_worker.config import load_settings
from stt_worker.runtime.connection import connect_options, flush_in_order, redact_url
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import stream_file
from stt_worker.runtime.worker import Worker
from tests.helpers import REPO, SPEECH_DIR, Inbox, manifest_text, until
from tests.test_worker import WER_BOUND, final_text, sid
from tests.textnorm import wer

CLIP = "lj_LJ001-0006.wav"
ACCOUNTS_CONF = REPO / "k8s" / "nats" / "accounts.conf"


async def connect(url: str, **options: Any) -> Client:
    """A client that gives up at once, so a refused connection fails the call."""
    return await nats.connect(url, allow_reconnect=False, connect_timeout=3, **options)


async def refused(url: str, **options: Any) -> None:
    with pytest.raises((nats.errors.Error, OSError)):
        client = await connect(url, **options)
        await client.close()


async def transcribes(client: Client) -> None:
    session = sid()
    inbox = await Inbox.open(client, session)
    await stream_file(client, session, SPEECH_DIR / CLIP, speed=0)
    messages = await inbox.until_closed(within_s=60)
    assert wer(manifest_text(CLIP), final_text(messages)) <= WER_BOUND


@contextlib.asynccontextmanager
async def serving(make_worker: Any, **settings: Any) -> AsyncIterator[Worker]:
    """A worker on a server of the test's own, stopped before that server is."""
    worker, stop, task = await make_worker(return_handles=True, **settings)
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def delivered(sender: Client, subject: str, receiver: Any) -> bool:
    """Does a publish on `subject` reach `receiver`? Sent again each second, up to 10 times:
    one core NATS message went unheard once in a loaded CI run (passing alone), and an
    allowed path is what this asks, not one message's fate; a denied one never arrives."""
    for _ in range(10):
        await sender.publish(subject, b"text")
        await sender.flush()  # sent, not left to the client's flusher on a loaded machine
        with contextlib.suppress(nats.errors.TimeoutError):
            return (await receiver.next_msg(timeout=1)).data == b"text"
    return False


def logged_text(records: list[logging.LogRecord]) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records)


# ---------------------------------------------------------------- token, CLI tools


async def test_token_worker_and_cli_tools_connect_and_others_are_refused(make_worker, caplog):
    token = secrets.token_hex(16)
    async with NatsServer(extra_args=("--auth", token)) as server:
        with caplog.at_level(logging.DEBUG):
            async with serving(make_worker, nats_url=server.url, nats_token=token) as worker:
                assert worker.readiness()["nats"] is None
                # `stt-streaming stream` as the publisher, with the worker's settings by env.
                session = sid()
                client = await connect(server.url, token=token)
                inbox = await Inbox.open(client, session)
                env = {**os.environ, "NATS_URL": server.url, "NATS_TOKEN": token}
                argv = [
                    "-m",
                    "stt_worker.tools.cli",
                    "stream",
                    str(SPEECH_DIR / CLIP),
                    "--speed",
                    "0",
                ]
                streamed = await asyncio.create_subprocess_exec(
                    sys.executable, *argv, "--session", session, env=env
                )
                assert await asyncio.wait_for(streamed.wait(), 60) == 0
                messages = await inbox.until_closed(within_s=60)
                assert wer(manifest_text(CLIP), final_text(messages)) <= WER_BOUND
                await client.close()
        await refused(server.url)
        await refused(server.url, token="not-" + token)
        without = {**os.environ, "NATS_URL": server.url}
        without.pop("NATS_TOKEN", None)
        tail = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stt_worker.tools.cli",
            "tail",
            env=without,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(tail.communicate(), 60)
        assert tail.returncode == 1 and b"cannot connect" in stderr
    assert token not in logged_text(caplog.records)
    assert token not in repr(load_settings(nats_token=token))


# ---------------------------------------------------------------- user/password and nkey


@pytest.fixture
def users_conf(tmp_path: Path) -> dict[str, Any]:
    """A server config with a password user and an nkey user; their secrets."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed)
    public = nkeys.from_seed(seed).public_key.decode()
    password = secrets.token_urlsafe(16)
    conf = tmp_path / "users.conf"
    conf.write_text(
        "authorization {\n  users = [\n"
        f'    {{user: "stt-worker", password: "{password}"}}\n'
        f'    {{nkey: "{public}"}}\n'
        "  ]\n}\n"
    )
    return {"conf": conf, "password": password, "seed_file": seed_file, "seed": seed.decode()}


@pytest.mark.parametrize("method", ["user_password", "nkey"])
async def test_worker_authenticates_by_password_or_nkey(make_worker, users_conf, caplog, method):
    as_user = {"user": "stt-worker", "password": users_conf["password"]}
    as_nkey = {"nkeys_seed": str(users_conf["seed_file"])}
    async with NatsServer(extra_args=("-c", str(users_conf["conf"]))) as server:
        with caplog.at_level(logging.DEBUG):
            if method == "user_password":
                settings = {"nats_user": "stt-worker", "nats_password": users_conf["password"]}
                client_options = as_nkey
            else:
                settings = {"nats_nkey_seed_file": users_conf["seed_file"]}
                client_options = as_user
            async with serving(make_worker, nats_url=server.url, **settings):
                client = await connect(server.url, **client_options)
                await transcribes(client)
                await client.close()
        await refused(server.url)
        await refused(server.url, user="stt-worker", password="wrong")
    text = logged_text(caplog.records)
    assert users_conf["password"] not in text and users_conf["seed"] not in text


def test_credentials_in_the_url_are_redacted_for_logs():
    url = "nats://stt:hunter2@nats-1:4222,nats://tok3n@nats-2:4222,nats://nats-3:4222"
    assert redact_url(url) == "nats://stt:***@nats-1:4222,nats://***@nats-2:4222,nats://nats-3:4222"


# ---------------------------------------------------------------- TLS


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made here."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("test CA", ca_key, None, ca=True)
    issuer = (ca_cert.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    server_cert = _issue("nats", server_key, issuer, sans=server_sans)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("stt-worker", client_key, issuer)
    ca_file, _ = _write(tmp_path, "ca", ca_cert, ca_key)
    server_cert_file, server_key_file = _write(tmp_path, "server", server_cert, server_key)
    client_cert_file, client_key_file = _write(tmp_path, "client", client_cert, client_key)
    conf = tmp_path / "tls.conf"
    conf.write_text(
        "tls {\n"
        f'  cert_file: "{server_cert_file}"\n  key_file: "{server_key_file}"\n'
        f'  ca_file: "{ca_file}"\n  verify: true\n'  # clients must show a certificate too
        "}\n"
    )
    return {"conf": conf, "ca": ca_file, "cert": client_cert_file, "key": client_key_file}


async def test_worker_connects_over_mutual_tls_and_plain_clients_are_refused(make_worker, pki):
    async with NatsServer(extra_args=("-c", str(pki["conf"]))) as server:
        tls = {
            "nats_tls_ca_file": pki["ca"],
            "nats_tls_cert_file": pki["cert"],
            "nats_tls_key_file": pki["key"],
        }
        async with serving(make_worker, nats_url=server.url, **tls):
            settings = load_settings(nats_url=server.url, **tls)
            client = await connect(server.url, **connect_options(settings))
            await transcribes(client)
            await client.close()
        await refused(server.url)  # no TLS at all
        no_cert = load_settings(nats_url=server.url, nats_tls_ca_file=pki["ca"])
        await refused(server.url, **connect_options(no_cert))  # TLS, but no client certificate


# ---------------------------------------------------------------- k8s account config


async def test_k8s_accounts_conf_lets_each_user_touch_only_its_subjects(
    make_worker, monkeypatch, tmp_path
):
    # nats-server parses an env value as a config token: token_urlsafe's leading "-" (1 in
    # 32 runs for two passwords) reads as a negative number and fails ("Expected a digit").
    worker_password, publisher_password = (f"pw{secrets.token_hex(16)}" for _ in range(2))
    # The config reads the passwords from the server's environment, as in the pod.
    monkeypatch.setenv("STT_WORKER_NATS_PASSWORD", worker_password)
    monkeypatch.setenv("VOICE_PUBLISHER_NATS_PASSWORD", publisher_password)
    worker_user = {"user": "stt-worker", "password": worker_password}
    publisher_user = {"user": "voice-publisher", "password": publisher_password}
    # nats.conf enables JetStream; its store is an argument, as in the pod.
    config = ("-c", str(ACCOUNTS_CONF), "-m", "-1", "-sd", str(tmp_path))
    async with NatsServer(extra_args=config) as server:
        # The worker as deployed: partitioned, with the worker user's password.
        deployed = {"partitions": 12, "replicas": 1, "replica_index": 0}
        async with serving(
            make_worker,
            nats_url=server.url,
            nats_user="stt-worker",
            nats_password=worker_password,
            **deployed,
        ) as worker:
            publisher = await connect(server.url, **publisher_user)
            await transcribes(publisher)
            # The worker may publish the markers that move a session to its own subscription.
            session = sid()
            streaming = asyncio.create_task(
                stream_file(publisher, session, SPEECH_DIR / CLIP, speed=2.0)
            )
            await until(lambda: worker._intake.own.taken_from_own(session), within_s=10)
            await streaming

        violations: asyncio.Queue[str] = asyncio.Queue()

        async def on_error(exc: Exception) -> None:
            violations.put_nowait(str(exc))

        # Fresh clients for the permission checks, independent of the session's client.
        await publisher.close()
        publisher = await connect(server.url, error_cb=on_error, **publisher_user)
        as_worker = await connect(server.url, error_cb=on_error, **worker_user)
        heard = await as_worker.subscribe("ai.voice.partitioned.>")  # allowed
        await flush_in_order(as_worker)  # the SUB reached the server, not only a PING
        await publisher.publish("ai.voice.stream.probe", b"audio")  # allowed
        assert (await heard.next_msg(timeout=5)).data == b"audio"
        answers = await publisher.subscribe("ai.voice.transcription.probe")  # allowed
        await flush_in_order(publisher)
        assert await delivered(as_worker, "ai.voice.transcription.probe", answers), violations

        await publisher.publish("ai.voice.transcription.forged", b"text")  # denied
        await as_worker.publish("ai.voice.elsewhere", b"text")  # denied
        await as_worker.subscribe("ai.voice.transcription.>")  # denied
        await flush_in_order(as_worker)
        await flush_in_order(publisher)
        async with asyncio.timeout(5):
            denied = {await violations.get() for _ in range(3)}
        assert any("publish" in v and "ai.voice.transcription.forged" in v for v in denied)
        assert any("publish" in v and "ai.voice.elsewhere" in v for v in denied)
        assert any("subscription" in v and "ai.voice.transcription.>" in v for v in denied)
        for client in (publisher, as_worker):
            await client.close()
        await refused(server.url)
