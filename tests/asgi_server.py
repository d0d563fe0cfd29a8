"""Run an ASGI app on a real uvicorn server on 127.0.0.1, in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


@contextlib.asynccontextmanager
async def serving(app: Any, *, startup_timeout_s: float = 60.0) -> AsyncIterator[str]:
    """Serve `app` on a free port (lifespan on) and yield its base URL; stop it on exit."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        # uvicorn offers no event for "listening", only the `started` flag; wake early if the
        # server task ends (a failed lifespan) rather than wait out the timeout.
        async with asyncio.timeout(startup_timeout_s):
            while not server.started:
                await asyncio.wait({task}, timeout=0.01)
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started serving")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
