"""Serving an ASGI app inside a running event loop (uvicorn without its signal handling)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import uvicorn

from stt_worker.core.errors import SttError


class _LoopServer(uvicorn.Server):
    """uvicorn inside someone else's loop: signals stay with the host program."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving_in_loop(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    lifespan: Literal["on", "off"] = "on",
    access_log: bool = True,
    startup_timeout_s: float = 120.0,
    **options: Any,
) -> AsyncIterator[str]:
    """Serve `app` in the running loop (port 0: one the OS picks); yield its URL.

    With `lifespan="on"` the app's startup (e.g. a model warm-up) completes before it yields.
    `options` go to `uvicorn.Config` as they are (e.g. ``ws_max_size``).
    """
    # log_config=None: uvicorn's records go through the host program's logging setup.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan=lifespan,
        access_log=access_log,
        log_config=None,
        **options,
    )
    server = _LoopServer(config)
    task = asyncio.create_task(server.serve())
    try:
        # uvicorn has a `started` flag but no event; a failed start ends serve() early.
        async with asyncio.timeout(startup_timeout_s):
            while not server.started:
                await asyncio.wait({task}, timeout=0.01)
                if task.done():
                    task.result()
                    raise SttError(f"the HTTP server on {host}:{port} did not start")
        bound = server.servers[0].sockets[0].getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        yield f"http://{shown}:{bound}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
