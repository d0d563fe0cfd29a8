"""The worker as deployments run it: a real `stt-streaming serve` process, for fault tests.

`WorkerProcess` starts it with an environment, waits for its "worker ready" log line (never
a sleep), reads the probe URL from its log, and stops it the way a test needs: SIGTERM (a
rollout), SIGKILL (a crash, an OOM kill).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Self

from tests.helpers import REPO

_PROBES = re.compile(r"probes and metrics at (http://[\d.]+:\d+)")


class WorkerProcess:
    def __init__(self, env: Mapping[str, str], *, script: str = "stt_streaming_local.py") -> None:
        self.env = {**os.environ, "STT_HTTP_PORT": "0", "OTEL_ENABLED": "false", **env}
        self.script = script
        self.log: list[str] = []
        self.probe_url: str | None = None
        self.ready = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self._process is not None, "not started"
        return self._process

    @property
    def tail(self) -> str:
        return "".join(self.log[-30:])

    async def start(self, within_s: float = 120) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / self.script),
            cwd=REPO,
            env=self.env,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_log())
        waiter = asyncio.create_task(self.ready.wait())
        await asyncio.wait({waiter, self._reader}, timeout=within_s, return_when="FIRST_COMPLETED")
        waiter.cancel()
        assert self.ready.is_set(), f"worker did not become ready:\n{self.tail}"
        return self

    async def _read_log(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        async for raw in stderr:
            line = raw.decode(errors="replace")
            self.log.append(line)
            if self.probe_url is None and (match := _PROBES.search(line)):
                self.probe_url = match[1]
            if "worker ready" in line:
                self.ready.set()

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait(self, within_s: float) -> int:
        code = await asyncio.wait_for(self.process.wait(), within_s)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a lost node would."""
        if self.process.returncode is None:
            self.process.kill()
        await self.wait(30)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            await self.kill()
