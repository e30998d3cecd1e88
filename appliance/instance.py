"""One appliance per state directory: an advisory lock that names the running one's pid.

A second ``appliance serve`` on the same state (cache, embedded broker) would fight the
first for its ports and its broker; it stops at start and says which process already runs,
instead of reporting a taken port. The lock is ``flock`` on a file, so the kernel releases
it when the holder dies, ``kill -9`` included: no stale lock to clean up by hand.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from appliance.errors import Unavailable


class InstanceLock:
    """Held for the life of ``appliance serve``; :meth:`release` on a clean exit."""

    def __init__(self, handle: IO[str], path: Path) -> None:
        self._handle = handle
        self.path = path

    @classmethod
    def acquire(cls, state_dir: Path) -> InstanceLock:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "appliance.pid"
        handle = open(path, "a+", encoding="ascii")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise Unavailable(
                f"the appliance is already running for {state_dir} (pid {holder}); stop it "
                "first (or give this one another cache.dir)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(handle, path)

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.truncate(0)
            self._handle.close()
