"""A bounded directory of audio files on local disk, least recently used removed first.

With the PostgreSQL backend the database holds every clip, and each node keeps the clips it
serves here: the HTTP server, the encoder and the MQTT replies read files, and a node that
loses the database still serves what it holds. Files are written durably (temporary name,
fsync, rename) so a crash never leaves half a clip under a real name; their modification
time is their last use.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from appliance.cache.keys import is_item_key
from appliance.cache.store import write_file_durably
from appliance.errors import NotFound

log = logging.getLogger(__name__)


class LocalAudio:
    """Audio files named ``<key>.<format>``, pruned to ``max_bytes``. Thread-safe."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        for stale in self.directory.glob(".tmp-*"):
            stale.unlink(missing_ok=True)
        self._total = sum(path.stat().st_size for path in self.directory.iterdir())

    def path(self, key: str, audio_format: str) -> Path:
        if not is_item_key(key):
            raise NotFound(f"{key!r} is not a cache key")
        return self.directory / f"{key}.{audio_format}"

    def read(self, key: str, audio_format: str) -> bytes | None:
        """The file's bytes (and it counts as used), or None when this node does not hold it."""
        path = self.path(key, audio_format)
        try:
            data = path.read_bytes()
            os.utime(path)
        except FileNotFoundError:
            return None
        return data

    def write(self, key: str, audio_format: str, data: bytes) -> Path:
        path = self.path(key, audio_format)
        with self._lock:
            old = path.stat().st_size if path.exists() else 0
            write_file_durably(path, data)
            self._total += len(data) - old
            self._prune(keep=path)
        return path

    def remove(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                for path in self.directory.glob(f"{key}.*"):
                    self._unlink(path)

    def keys(self) -> set[str]:
        return {path.name.split(".", 1)[0] for path in self.directory.iterdir()
                if not path.name.startswith(".")}

    def files_not_named(self, keys: set[str]) -> list[str]:
        return sorted(path.name for path in self.directory.iterdir()
                      if path.name.split(".", 1)[0] not in keys)

    @property
    def total_bytes(self) -> int:
        return self._total

    def _prune(self, keep: Path) -> None:
        if self._total <= self._max_bytes:
            return
        files = sorted(self.directory.iterdir(), key=lambda p: p.stat().st_mtime)
        for path in files:
            if self._total <= self._max_bytes:
                break
            if path != keep:
                self._unlink(path)
        log.info("local audio pruned", extra={"bytes": self._total})

    def _unlink(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        self._total -= size
