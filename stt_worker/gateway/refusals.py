"""Refusals: the error frames a connection is sent for frames of its that were not used.

They are spent from an `ErrorBudget` (limits.py), so bad frames sent as fast as a client can
earn replies at a bounded rate; the count of those withheld rides on the next one sent.
Frames after ``end`` are refused once, not once per frame.
"""

from __future__ import annotations

import logging
import time

from stt_worker.core.errors import ErrorCode, OverloadedError, ProtocolError
from stt_worker.gateway.dialect import GatewayError
from stt_worker.gateway.limits import ErrorBudget
from stt_worker.gateway.stats import GatewayStats

logger = logging.getLogger(__name__)


class Refusals:
    """One connection's error frames for unused frames."""

    def __init__(self, budget: ErrorBudget, stats: GatewayStats, session_id: str) -> None:
        self._budget = budget
        self._stats = stats
        self._session_id = session_id
        self._told_ended = False

    def after_end(self) -> None:
        """Raise the `session_ended` error for the first frame after `end` (or shutdown)."""
        if not self._told_ended:
            self._told_ended = True
            raise ProtocolError(
                "the session has ended; frames after 'end' are not used",
                code=ErrorCode.SESSION_ENDED,
            )

    def frame_for(
        self, exc: ProtocolError | OverloadedError, client_id: str | None
    ) -> GatewayError | None:
        """The error frame for `exc`, or None when the budget is spent (counted instead)."""
        if not self._budget.spend(time.monotonic()):
            self._stats.errors_withheld += 1
            if self._budget.withheld == 1:
                logger.info(
                    "gateway: error frames past the budget; counting, not sending",
                    extra={"session_id": self._session_id},
                )
            return None
        message = exc.message
        withheld = self._budget.take_withheld()
        if withheld:
            message = f"{message} ({withheld} earlier error frames not sent: too many)"
        return GatewayError(code=exc.code, message=message, session_id=client_id)
