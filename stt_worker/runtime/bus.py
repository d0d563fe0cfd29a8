"""The message bus as the edges (the gateway, the tools, the evaluation) use it.

Only the runtime imports nats (tests/test_layers.py); the edges get from here what they need:

- the client and subscription types they annotate with (`NatsClient`, `Subscription`);
- `publish` (a typed client message), `subscribe` (a callback) and `deliveries` (an async
  iterator), which hand over each output message decoded once, as a `Delivery`;
- `BusError`: NATS' own exceptions, converted in one place (`mapped_errors`), so an edge
  catches ours. `connect()` is in connection.py; its `ConnectError` is a `BusError`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from stt_worker.config import Settings
from stt_worker.core.errors import ErrorCode, ProtocolError, SttError
from stt_worker.core.protocol import (
    ClientMessage,
    ServerMessage,
    decode_server_message,
    encode_client_message,
)

__all__ = [
    "BusError",
    "Delivery",
    "NatsClient",
    "Subscription",
    "deliver",
    "deliveries",
    "mapped_errors",
    "publish",
    "stream_prefix",
    "subscribe",
    "unsubscribe",
]


class BusError(SttError):
    """NATS failed under a publish, subscribe, flush or unsubscribe (closed, lost, ...)."""

    code = ErrorCode.NATS_UNAVAILABLE


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """NATS' exceptions as `BusError`: the one place that converts them."""
    try:
        yield
    except nats.errors.Error as exc:
        raise BusError(f"NATS: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class Delivery:
    """One payload taken off the bus: its subject, its bytes, when it was taken
    (``time.time()``, the clock `StreamStats` uses), and the output message it holds, or
    the `ProtocolError` saying why it holds none (garbage, or a newer worker's new type)."""

    subject: str
    payload: bytes
    received_at: float
    message: ServerMessage | ProtocolError


def deliver(subject: str, payload: bytes, received_at: float | None = None) -> Delivery:
    """`payload` decoded once, as received on `subject` now (or at `received_at`)."""
    try:
        message: ServerMessage | ProtocolError = decode_server_message(payload)
    except ProtocolError as exc:
        message = exc
    return Delivery(subject, payload, time.time() if received_at is None else received_at, message)


async def publish(nc: NatsClient, subject: str, message: ClientMessage) -> None:
    with mapped_errors():
        await nc.publish(subject, encode_client_message(message))


async def subscribe(
    nc: NatsClient, subject: str, on_delivery: Callable[[Delivery], None]
) -> Subscription:
    """Call `on_delivery` with each message on `subject`, in order, from the client's
    dispatch task (so it must not block). Returns once the server has the subscription:
    nothing published after this returns is missed."""

    async def dispatch(msg: Msg) -> None:
        on_delivery(deliver(msg.subject, msg.data))

    with mapped_errors():
        subscription = await nc.subscribe(subject, cb=dispatch)
        await nc.flush()
    return subscription


@contextlib.asynccontextmanager
async def deliveries(nc: NatsClient, subject: str) -> AsyncIterator[AsyncIterator[Delivery]]:
    """The messages on `subject` as an async iterator, subscribed (as `subscribe`) until the
    block ends. They wait in the subscription's queue, bounded by nats-py's pending limits."""
    with mapped_errors():
        subscription = await nc.subscribe(subject)
        await nc.flush()
    try:
        yield _delivered(subscription)
    finally:
        if not nc.is_closed:  # a closed connection has no subscription left to end
            await unsubscribe(subscription)


async def _delivered(subscription: Subscription) -> AsyncIterator[Delivery]:
    with mapped_errors():
        async for msg in subscription.messages:
            yield deliver(msg.subject, msg.data)


async def unsubscribe(subscription: Subscription) -> None:
    with mapped_errors():
        await subscription.unsubscribe()


def stream_prefix(settings: Settings) -> str:
    """Where publishers send: the worker subscribes to e.g. ``ai.voice.stream.*``, clients
    publish to ``ai.voice.stream.{session_id}``."""
    return settings.stream_subject.removesuffix(".*").removesuffix(".>")
