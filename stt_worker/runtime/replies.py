"""Error replies to rejected messages: counted every time, answered within a share.

Each session (or subject, for messages that open none) gets a few replies at once and then
a steady trickle (`core/replies.py: ReplyLimiter`); what is held back is counted and summed
into the next reply. No reply carries more than `MAX_ECHO_CHARS` of client input, and an id
unfit for a subject is never put in one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

from opentelemetry.trace import Span

from stt_worker.config import Settings
from stt_worker.core.errors import ErrorCode, ProtocolError, SttError
from stt_worker.core.protocol import MAX_ECHO_CHARS, Error, ServerMessage, check_session_id
from stt_worker.core.replies import ReplyLimiter
from stt_worker.runtime.observation import Observer
from stt_worker.runtime.sessions import Stream

logger = logging.getLogger(__name__)

Publish = Callable[[str, ServerMessage, Span | None], Awaitable[None]]

# An error reply's message: our own words plus at most MAX_ECHO_CHARS of client input.
MAX_ERROR_MESSAGE_CHARS = 1024
# Error-reply keys remembered at once (`ReplyLimiter`): about 200 bytes each.
MAX_REPLY_KEYS = 10_000


def reply_limiter(settings: Settings) -> ReplyLimiter:
    """The worker's limit on error replies, from its settings."""
    overall_per_s = settings.error_replies_overall_per_s
    return ReplyLimiter(
        per_s=settings.error_replies_per_s,
        burst=settings.error_reply_burst,
        overall_per_s=overall_per_s,
        overall_burst=max(1, round(2 * overall_per_s)),
        max_keys=MAX_REPLY_KEYS,
    )


def _reply_key(session_id: str) -> str:
    """Whose share of error replies a rejection takes: its session id (the subject's last
    token), or for ids past any sane length a digest, so that no key holds kilobytes."""
    if len(session_id) <= MAX_ECHO_CHARS:
        return session_id
    return f"{len(session_id)}:{hashlib.blake2b(session_id.encode(), digest_size=16).hexdigest()}"


class ErrorReplies:
    """Counts, logs and answers rejections for the worker, within each key's share."""

    def __init__(self, settings: Settings, observer: Observer, publish: Publish) -> None:
        self.settings = settings
        self._observer = observer
        self._publish = publish
        self._limiter = reply_limiter(settings)

    async def reject(
        self, session_id: str, stream: Stream | None, exc: SttError, now: float
    ) -> bool:
        """Count a rejected message; answer it unless its session (or subject) had its share
        of replies (`core/replies.py`): then the next reply sums it. True when answered."""
        self._observer.rejected(exc.code)
        if stream is not None:
            stream.observer.rejected(exc.code)
        reply = self._limiter.allow(_reply_key(session_id), now, exc.code, exc.messages)
        if reply is None:
            self._observer.reply_held_back(exc.code)
            return False
        message = exc.message[:MAX_ERROR_MESSAGE_CHARS]
        if reply.held_back:
            message += f" (and {reply.held_back} more rejected since the last error reply)"
        await self._answer(session_id, stream, exc.code, message, reply.held_back, now)
        return True

    async def tell_held_back(self, now: float) -> None:
        """Answer the rejections held back from keys whose flood stopped (every tick): one
        reply each with their count, since no next reply would carry it."""
        for held in self._limiter.overdue(now):
            code = held.code or ErrorCode.INVALID_MESSAGE
            message = (
                f"{held.count} more message(s) rejected since the last error reply, "
                f"the last with {code}"
            )
            # The key is the session id, or a digest of one too long for any subject.
            await self._answer(held.key, None, code, message, held.count, now)

    async def _answer(
        self,
        session_id: str,
        stream: Stream | None,
        code: str,
        message: str,
        held_back: int,
        now: float,
    ) -> None:
        shown = session_id[: self.settings.max_session_id_chars]
        logger.warning(
            "rejected message: %s",
            message,
            extra={"session_id": shown, "code": code, "held_back": held_back},
        )
        speaker = stream.session.speaker_id if stream else None
        prefix = self.settings.transcription_subject_prefix
        try:
            check_session_id(session_id, self.settings.max_session_id_chars)
        except ProtocolError:
            # An id unfit for a subject is never put in one: its error goes to the bare
            # prefix, which no session's subject equals, with the id cut to a safe length.
            await self._publish(prefix, Error(shown, code, message, now))
        else:
            error = Error(session_id, code, message, now, speaker)
            span = stream.observer.span if stream else None
            await self._publish(f"{prefix}.{session_id}", error, span)
        self._observer.error_replied(code)
