"""The worker's HTTP side: /healthz (alive), /readyz (can take sessions now), /metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# Each check: name -> None when fine, else why not (shown to whoever probes).
Checks = Callable[[], Mapping[str, str | None]]


def create_probe_app(checks: Checks, registry: CollectorRegistry) -> Starlette:
    async def healthz(_: Request) -> Response:
        # The loop answered: the process is alive. Readiness says whether it can work.
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        results = dict(checks())
        failing = {name: why for name, why in results.items() if why is not None}
        body = {
            "status": "not ready" if failing else "ready",
            "checks": {name: why or "ok" for name, why in results.items()},
        }
        return JSONResponse(body, status_code=503 if failing else 200)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )
