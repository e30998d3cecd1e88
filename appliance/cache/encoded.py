"""Encoded copies of cached clips: one file per (item, format), made on first use.

The store keeps one canonical clip per item (16-bit WAV, appliance/cache/store.py). A request
for FLAC, Ogg Opus or MP3 is answered from a copy encoded once and kept here, in
``<cache dir>/encoded/``: beside the store's audio directory, not in it, so that the store's
sweep and integrity check keep seeing masters only. An item's audio never changes (a forced
regeneration makes a new item), so a copy is good for as long as its item exists.

Why keep copies at all: encoding a 10 s stereo clip costs 30-700 ms of CPU (MP3 and Opus are
the slow ones; docs/audio-formats.md), and a hit is otherwise answered in about a millisecond.
The copies are bounded by bytes: beyond the cap, copies of items no longer cached go first,
then the least recently used (a read touches the file's mtime). Losing one costs only a new
encoding.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from appliance.audio import transcode
from appliance.cache.contract import Store
from appliance.cache.keys import is_item_key
from appliance.cache.store import CacheItem, write_file_durably
from appliance.errors import NotFound

log = logging.getLogger(__name__)


class EncodedClips:
    """A bounded directory of encoded copies of the store's clips. Thread-safe."""

    def __init__(self, store: Store, *, max_bytes: int) -> None:
        self._store = store
        self.directory = store.directory / "encoded"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._prune_lock = threading.Lock()
        # one encoding of a given copy at a time (they share a temporary file name); striped
        # so that different clips encode in parallel
        self._encode_locks = [threading.Lock() for _ in range(16)]

    def path(self, item: CacheItem, audio_format: str, master: bytes | None = None) -> Path:
        """A file holding ``item``'s clip in ``audio_format``: the master itself, a kept copy,
        or a copy encoded now (from ``master`` when the caller has it in memory)."""
        if audio_format == item.audio_format:
            return self._store.audio_path(item.key, item.audio_format)
        if not is_item_key(item.key):
            raise NotFound(f"{item.key!r} is not a cache key")
        path = self.directory / f"{item.key}.{audio_format}"
        with self._encode_locks[hash(path.name) % len(self._encode_locks)]:
            try:
                os.utime(path)  # recently used: pruned last
                return path
            except FileNotFoundError:
                pass
            data = transcode(master if master is not None else self._store.read_audio(item),
                             audio_format)
            write_file_durably(path, data)
        log.info("encoded a cached clip", extra={"key": item.key, "format": audio_format,
                                                 "bytes": len(data)})
        self._prune(keep=path)
        return path

    def size(self, item: CacheItem, audio_format: str) -> int:
        """Bytes of the clip in ``audio_format`` (encoding it when no copy exists yet)."""
        if audio_format == item.audio_format:
            return item.audio_bytes
        return self.path(item, audio_format).stat().st_size

    def read(self, item: CacheItem, audio_format: str, master: bytes | None = None) -> bytes:
        """The clip's bytes in ``audio_format``; ``NotFound`` when the master is gone."""
        if audio_format == item.audio_format:
            return master if master is not None else self._store.read_audio(item)
        for _ in range(2):  # a copy pruned between path() and the read is encoded again
            try:
                return self.path(item, audio_format, master).read_bytes()
            except FileNotFoundError:
                continue
        raise NotFound(f"could not keep an encoded copy of cache item {item.key}")

    def sweep(self) -> int:
        """Remove copies of items no longer cached, and unfinished writes. Returns the count."""
        removed = 0
        for path in self.directory.iterdir():
            if path.name.startswith(".tmp-") or not self._cached(path.name.split(".", 1)[0]):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _cached(self, key: str) -> bool:
        try:
            self._store.get(key)
        except NotFound:
            return False
        return True

    def _prune(self, keep: Path) -> None:
        """Stay under ``max_bytes``: copies of removed items first, then the oldest used."""
        with self._prune_lock:
            files = []
            for path in self.directory.iterdir():
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                files.append((path, stat.st_size, stat.st_mtime))
            total = sum(size for _, size, _ in files)
            if total <= self.max_bytes:
                return
            order = sorted(files, key=lambda f: (self._cached(f[0].name.split(".", 1)[0]), f[2]))
            removed = 0
            for path, size, _ in order:
                if total <= self.max_bytes:
                    break
                if path != keep:
                    path.unlink(missing_ok=True)
                    total -= size
                    removed += 1
            log.info("pruned encoded copies", extra={"removed": removed, "bytes": total})
