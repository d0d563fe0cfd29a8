"""Elastic mode: each live session's `core.continuity.SessionRecord` in a JetStream KV bucket
(`STT_SESSION_BUCKET`), so the worker that takes a session over goes on numbering it.

A failure to read or write is logged, never raised: the session then goes on as a new one
would (numbering from 1), which is what the worker did before elastic mode.
"""

from __future__ import annotations

import base64
import logging

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from stt_worker.config import Settings
from stt_worker.core.continuity import SessionRecord

logger = logging.getLogger(__name__)


def _key(session_id: str) -> str:
    # Session ids are any printable ASCII; KV keys take letters, digits and -_=./ only.
    return base64.urlsafe_b64encode(session_id.encode()).decode()


class SessionStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> SessionStore:
        """The bucket, created when missing; a record outlives its session's audio in the
        stream by nothing (`STT_JETSTREAM_MAX_AGE_S`)."""
        name = settings.session_bucket
        try:
            return cls(await js.key_value(name))
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(
                bucket=name, history=1, ttl=settings.jetstream_max_age_s, storage=StorageType.FILE
            )
            return cls(await js.create_key_value(config))

    async def load(self, session_id: str) -> SessionRecord | None:
        try:
            entry = await self._kv.get(_key(session_id))
        except nats.js.errors.KeyNotFoundError:  # a new session (or a deleted record)
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("could not read the session's record: %r", exc)
            return None
        try:
            return msgspec.msgpack.decode(entry.value or b"", type=SessionRecord)
        except msgspec.DecodeError as exc:
            logger.warning("unreadable session record, ignored: %r", exc)
            return None

    async def save(self, session_id: str, record: SessionRecord) -> None:
        try:
            await self._kv.put(_key(session_id), msgspec.msgpack.encode(record))
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("could not write the session's record: %r", exc)

    async def forget(self, session_id: str) -> None:
        """The session ended: a later one with its id starts afresh."""
        try:
            await self._kv.delete(_key(session_id))
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("could not delete the session's record: %r", exc)
