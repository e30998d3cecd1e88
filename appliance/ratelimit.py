"""Per-client request rate limit: a token bucket for each reply address.

MQTT does not tell a subscriber who published a message, so a "client" here is the address
its replies go to (the MQTT 5 Response Topic or the ``reply_to`` field). That is what a
runaway device loop keeps constant; a hostile device that rotates reply topics is the
broker's to stop (ACL, per-listener limits: docs/security.md). The table of buckets is
bounded: the least recently seen clients are forgotten first, so a flood of fresh topics
cannot grow memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_TRACKED_CLIENTS = 10_000


class RateLimiter:
    """``allow(client)`` is True while that client stays within ``rate_per_s`` (burst ``burst``)."""

    def __init__(
        self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        if rate_per_s < 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate_per_s must be ≥ 0, burst and max_clients ≥ 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, updated
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def allow(self, client: str) -> bool:
        """Take one token from ``client``'s bucket; False when it is empty."""
        if not self.enabled:
            return True
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - updated) * self.rate_per_s)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
            return allowed

    def tracked(self) -> int:
        with self._lock:
            return len(self._buckets)
