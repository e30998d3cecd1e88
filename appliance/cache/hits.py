"""Hits counted in memory and written in batches: a hit must not cost a write transaction."""

from __future__ import annotations

import threading
import time


class PendingHits:
    """Per key, hits not yet written and the time of the last one. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[int, float]] = {}

    def record(self, key: str, timestamp: float | None = None) -> None:
        self.restore({key: (1, time.time() if timestamp is None else timestamp)})

    def take(self) -> dict[str, tuple[int, float]]:
        """Everything counted so far; the caller writes it, or gives it back with :meth:`restore`."""
        with self._lock:
            taken, self._pending = self._pending, {}
        return taken

    def restore(self, counts: dict[str, tuple[int, float]]) -> None:
        with self._lock:
            for key, (count, last) in counts.items():
                before, before_last = self._pending.get(key, (0, last))
                self._pending[key] = (before + count, max(last, before_last))
