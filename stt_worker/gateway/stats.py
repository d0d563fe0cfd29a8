"""GatewayStats: what the gateway counts over all its connections."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class GatewayStats:
    """Counters over all connections, shown by /health."""

    connections_total: int = 0
    dropped_partials: int = 0
    overflow_closes: int = 0
    idle_closes: int = 0
    errors_withheld: int = 0
