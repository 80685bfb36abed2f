"""Counters the node exposes on /api/stats: plain integers, cheap to bump per message."""

from __future__ import annotations

from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self.requests_received: Counter[str] = Counter()  # by method
        self.responses_sent: Counter[int] = Counter()  # by status
        self.responses_received: Counter[int] = Counter()  # by status
        self.dropped: Counter[str] = Counter()  # malformed, oversized, flooded, overloaded ...
        self.bad_requests = 0  # malformed requests answered 400
        self.auth_failures = 0
        self.auth_rate_limited = 0
        self.retransmissions_absorbed = 0
        self.tcp_connections_accepted = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_received": dict(self.requests_received),
            "responses_sent": {str(k): v for k, v in sorted(self.responses_sent.items())},
            "responses_received": {str(k): v for k, v in sorted(self.responses_received.items())},
            "dropped": dict(self.dropped),
            "bad_requests": self.bad_requests,
            "auth_failures": self.auth_failures,
            "auth_rate_limited": self.auth_rate_limited,
            "retransmissions_absorbed": self.retransmissions_absorbed,
            "tcp_connections_accepted": self.tcp_connections_accepted,
        }
