"""Sender: the frames going to one client, written as fast as it reads them, then the close.

Frames wait in a bounded `Outbox` (outbox.py); a task writes them to the socket. A client too
slow to take its finals overflows the outbox and is closed with 1013. Whatever closes the
connection (`end`, an error, an idle socket) sets the close first, so the task can send what is
queued and then stop; `abort` closes without sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from stt_worker.gateway.close_codes import CLOSE_NORMAL, CLOSE_TRY_AGAIN_LATER
from stt_worker.gateway.outbox import Outbox
from stt_worker.gateway.stats import GatewayStats

logger = logging.getLogger(__name__)


class Sender:
    """One connection's outgoing frames and its close."""

    def __init__(
        self,
        websocket: WebSocket,
        stats: GatewayStats,
        *,
        max_queue: int,
        close_timeout_s: float,
        session_id: str,
    ) -> None:
        self.outbox = Outbox(max_queue)
        # The close that ends the connection once the queued frames are sent; None while open.
        self.close: tuple[int, str] | None = None
        self._websocket = websocket
        self._stats = stats
        self._close_timeout_s = close_timeout_s
        self._session_id = session_id
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._send_frames())
        return self._task

    def push(self, frames: list[tuple[str, bool]]) -> None:
        """Queue each frame (with whether it is a droppable partial); 1013 on overflow."""
        for frame, partial in frames:
            dropped = self.outbox.dropped_partials
            accepted = self.outbox.push(frame, partial=partial)
            self._stats.dropped_partials += self.outbox.dropped_partials - dropped
            if not accepted:
                self.too_slow(f"{self.outbox.max_frames} results unsent")
                return
        self._wake.set()

    def too_slow(self, detail: str) -> None:
        """Close with 1013: the client reads slower than its results come, and a final would
        otherwise be lost."""
        self._stats.overflow_closes += 1
        logger.warning("gateway: client of session %s too slow; closing", self._session_id)
        self.abort(CLOSE_TRY_AGAIN_LATER, f"client too slow: {detail}")

    def close_after_sending(self, code: int, reason: str) -> None:
        if self.close is None:
            self.close = (code, reason)
        self._wake.set()

    def abort(self, code: int, reason: str) -> None:
        """Close now: queued frames are not sent."""
        if self.close is None:
            self.close = (code, reason)
        if self._task is not None:
            self._task.cancel()

    async def close_socket(self) -> None:
        ws = self._websocket
        if WebSocketState.DISCONNECTED in (ws.client_state, ws.application_state):
            return
        code, reason = self.close or (CLOSE_NORMAL, "")
        # A client that never reads holds the close frame back; do not wait for it forever.
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect, TimeoutError):
            await asyncio.wait_for(ws.close(code, reason), self._close_timeout_s)

    async def _send_frames(self) -> None:
        while True:
            frame = self.outbox.pop()
            if frame is None:
                if self.close is not None:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._websocket.send_text(frame)
