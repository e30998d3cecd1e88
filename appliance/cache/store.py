"""Cache storage: item metadata and indexes in one LMDB environment, audio as files.

Write order (DESIGN.md): the audio file is written to a temporary name, fsynced and renamed
into place, then one LMDB transaction adds the item, its exact-index entry and the new
totals. A crash between the two leaves an orphan file, which the start-up sweep deletes;
a crash inside the transaction leaves the old state. Audio stays out of LMDB because LMDB
files never shrink, while deleting a file gives its space back at once.

The environment is shared with other processes (the CLI): LMDB serialises writers, and a
``generation`` counter bumped by every write lets a reader notice changes made elsewhere.

The map size is fixed while the cache is in use. Growing it online hung processes: LMDB may
only change the map with no transaction open in the process, and a process that meets a map
grown by another process at the start of a write transaction kept LMDB's writer lock and
waited on itself (reproduced with three reader threads and a CLI writing). So every process
opens the map at the size recorded beside it (``map_size``, written when the cache is
created), nobody writes past anybody's map, and a full map is a clear :class:`CacheFull`
error; :func:`resize_map` changes the size offline (``appliance cache resize``). The
default map (16 GiB of address space) holds millions of items' metadata: audio is not in it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import lmdb
import numpy as np
import numpy.typing as npt

from appliance.cache.keys import is_item_key
from appliance.errors import CacheError, CacheFull, NotFound

log = logging.getLogger(__name__)

_ITEMS = b"items"
_EXACT = b"exact"
_META = b"meta"
_VECTORS = b"vectors"  # item key -> prompt embedding (float32 bytes)
_CLAP = b"clap"  # item key -> CLAP audio embedding (float32 bytes)
_EMBEDDER = b"embedder"
_GENERATION = b"generation"
_TOTAL_BYTES = b"total_bytes"
_T = TypeVar("_T")
_MAP_SIZE_FILE = "map_size"  # beside the LMDB files: the map size every process opens with


@dataclass
class CacheItem:
    """Metadata of one cached clip (its audio lives in ``audio/<key>.wav``)."""

    key: str
    exact_key: str
    prompt: str
    model: str
    duration_s: float
    requested_duration_s: float
    is_loop: bool
    steps: int
    guidance_scale: float
    candidates: int
    seed: int | None
    sample_rate: int
    channels: int
    audio_format: str
    audio_bytes: int
    generation_timestamp: float
    generation_s: float
    clap_similarity: float | None = None
    candidate_scores: list[float] = field(default_factory=list)
    hits: int = 0
    last_hit_timestamp: float | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | memoryview) -> CacheItem:
        return cls(**json.loads(bytes(data)))


@dataclass(frozen=True)
class CacheTotals:
    items: int
    bytes: int
    generation: int


@dataclass(frozen=True)
class PutResult:
    """What a put changed: the items evicted, and the generation before and after it.

    ``generation_after == generation_before + 1`` means nobody else wrote in between.
    """

    evicted: list[str]
    generation_before: int
    generation_after: int


@dataclass(frozen=True)
class IntegrityReport:
    """What :meth:`CacheStore.verify` found; ``ok`` when nothing disagrees.

    ``orphan_files`` are expected after a crash between a file write and its transaction
    (the start-up sweep removes them); everything else is damage.
    """

    items: int
    orphan_files: list[str]
    items_without_audio: list[str]
    audio_size_mismatch: list[str]
    dangling_exact_entries: list[str]
    dangling_vectors: list[str]
    bad_vectors: list[str]
    total_bytes_recorded: int
    total_bytes_actual: int

    @property
    def damaged(self) -> bool:
        return bool(self.items_without_audio or self.audio_size_mismatch or self.dangling_exact_entries
                    or self.dangling_vectors or self.bad_vectors
                    or self.total_bytes_recorded != self.total_bytes_actual)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.orphan_files


@dataclass(frozen=True)
class EmbedderInfo:
    """Which sentence embedder made the stored prompt vectors."""

    name: str
    dimension: int


class CacheStore:
    """The cache on disk. Thread-safe; safe to share with other processes."""

    def __init__(self, directory: Path, *, map_size_bytes: int = 256 * 1024**2) -> None:
        self.directory = Path(directory)
        self.audio_dir = self.directory / "audio"
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        self.map_size = _agreed_map_size(self.directory / "index.lmdb", map_size_bytes)
        try:
            self._env = lmdb.open(
                str(self.directory / "index.lmdb"), map_size=self.map_size, max_dbs=8,
                subdir=True, lock=True,
            )
        except lmdb.Error as exc:
            raise CacheError(f"cannot open the cache at {self.directory}: {exc}") from exc
        self._env.reader_check()  # readers killed with -9 must not pin old pages
        self._items = self._env.open_db(_ITEMS)
        self._exact = self._env.open_db(_EXACT)
        self._meta = self._env.open_db(_META)
        self._vectors = self._env.open_db(_VECTORS)
        self._clap = self._env.open_db(_CLAP)
        self._pending_hits: dict[str, tuple[int, float]] = {}
        self._hits_lock = threading.Lock()
        self._closed = False

    # -- reading -----------------------------------------------------------------------

    def lookup_exact(self, exact_key: str) -> CacheItem | None:
        """The item stored under an exact-match key, if any (one read transaction)."""
        def read(txn: lmdb.Transaction) -> CacheItem | None:
            key = txn.get(exact_key.encode(), db=self._exact)
            raw = txn.get(key, db=self._items) if key else None
            return CacheItem.from_json(raw) if raw else None

        return self._read(read)

    def get(self, key: str) -> CacheItem:
        if not is_item_key(key):
            raise NotFound(f"{key!r} is not a cache key")
        raw = self._read(lambda txn: txn.get(key.encode(), db=self._items))
        if raw is None:
            raise NotFound(f"no cache item {key}")
        return CacheItem.from_json(raw)

    def items(self) -> list[CacheItem]:
        def read(txn: lmdb.Transaction) -> list[CacheItem]:
            return [CacheItem.from_json(v) for _, v in txn.cursor(db=self._items)]

        return self._read(read)

    def totals(self) -> CacheTotals:
        def read(txn: lmdb.Transaction) -> CacheTotals:
            return CacheTotals(
                items=txn.stat(self._items)["entries"],
                bytes=_int(txn.get(_TOTAL_BYTES, db=self._meta)),
                generation=_int(txn.get(_GENERATION, db=self._meta)),
            )

        return self._read(read)

    def generation(self) -> int:
        """The change counter: bumped by every write from any process."""
        return self._read(lambda txn: _int(txn.get(_GENERATION, db=self._meta)))

    def prompt_vectors(self) -> tuple[list[str], npt.NDArray[np.float32]]:
        """Every stored prompt embedding: ``(keys, matrix)`` for rebuilding the index."""
        def read(txn: lmdb.Transaction) -> tuple[list[str], list[npt.NDArray[np.float32]]]:
            keys, rows = [], []
            for key, value in txn.cursor(db=self._vectors):
                keys.append(bytes(key).decode())
                rows.append(np.frombuffer(bytes(value), dtype=np.float32))
            return keys, rows

        keys, rows = self._read(read)
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return keys, np.vstack(rows)

    def prompt_vector(self, key: str) -> npt.NDArray[np.float32] | None:
        raw = self._read(lambda txn: txn.get(key.encode(), db=self._vectors))
        return np.frombuffer(bytes(raw), dtype=np.float32) if raw else None

    def clap_vector(self, key: str) -> npt.NDArray[np.float32] | None:
        raw = self._read(lambda txn: txn.get(key.encode(), db=self._clap))
        return np.frombuffer(bytes(raw), dtype=np.float32) if raw else None

    def embedder_info(self) -> EmbedderInfo | None:
        raw = self._read(lambda txn: txn.get(_EMBEDDER, db=self._meta))
        if not raw:
            return None
        data = json.loads(bytes(raw))
        return EmbedderInfo(str(data["name"]), int(data["dimension"]))

    def set_embedder_info(self, info: EmbedderInfo) -> None:
        """Record which embedder made the vectors (a new one needs a re-embed first)."""
        payload = json.dumps({"name": info.name, "dimension": info.dimension}).encode()
        self._write(lambda txn: txn.put(_EMBEDDER, payload, db=self._meta))

    def replace_prompt_vectors(self, vectors: dict[str, npt.NDArray[np.float32]], info: EmbedderInfo) -> None:
        """Swap in vectors from another embedder, all in one transaction."""
        def write(txn: lmdb.Transaction) -> None:
            txn.drop(self._vectors, delete=False)
            for key, vector in vectors.items():
                if txn.get(key.encode(), db=self._items) is not None:
                    txn.put(key.encode(), _vector_bytes(vector), db=self._vectors)
            txn.put(_EMBEDDER, json.dumps({"name": info.name, "dimension": info.dimension}).encode(),
                    db=self._meta)
            self._bump_generation(txn)

        self._write(write)

    def audio_path(self, key: str, audio_format: str = "wav") -> Path:
        if not is_item_key(key):
            raise NotFound(f"{key!r} is not a cache key")
        return self.audio_dir / f"{key}.{audio_format}"

    def read_audio(self, item: CacheItem) -> bytes:
        try:
            return self.audio_path(item.key, item.audio_format).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"audio of cache item {item.key} is gone") from exc

    # -- writing -----------------------------------------------------------------------

    def put(
        self, item: CacheItem, audio: bytes, *, max_items: int, max_bytes: int,
        prompt_vector: npt.NDArray[np.float32] | None = None,
        clap_vector: npt.NDArray[np.float32] | None = None,
    ) -> PutResult:
        """Store a clip (file first, then metadata and vectors); evict to stay under the caps."""
        path = self.audio_path(item.key, item.audio_format)
        write_file_durably(path, audio)
        item.audio_bytes = len(audio)

        def write(txn: lmdb.Transaction) -> PutResult:
            before = _int(txn.get(_GENERATION, db=self._meta))
            txn.put(item.key.encode(), item.to_json(), db=self._items)
            if prompt_vector is not None:
                txn.put(item.key.encode(), _vector_bytes(prompt_vector), db=self._vectors)
            if clap_vector is not None:
                txn.put(item.key.encode(), _vector_bytes(clap_vector), db=self._clap)
            # a forced regeneration re-points the exact key; the older item stays until
            # eviction or maintenance removes it
            txn.put(item.exact_key.encode(), item.key.encode(), db=self._exact)
            total = _int(txn.get(_TOTAL_BYTES, db=self._meta)) + item.audio_bytes
            txn.put(_TOTAL_BYTES, str(total).encode(), db=self._meta)
            evicted = self._evict_in(txn, max_items, max_bytes, keep=item.key)
            return PutResult(evicted, before, self._bump_generation(txn))

        try:
            result = self._write(write)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self._unlink_audio(result.evicted)
        return result

    def delete(self, keys: list[str]) -> int:
        """Remove items (metadata, index entries, audio). Returns bytes freed."""
        def write(txn: lmdb.Transaction) -> tuple[int, list[str]]:
            freed, removed = 0, []
            for key in keys:
                item = self._delete_in(txn, key)
                if item is not None:
                    freed += item.audio_bytes
                    removed.append(key)
            if removed:
                self._bump_generation(txn)
            return freed, removed

        freed, removed = self._write(write)
        self._unlink_audio(removed)
        return freed

    def record_hit(self, key: str, timestamp: float | None = None) -> None:
        """Count a hit in memory; :meth:`flush_hits` writes the counts in one transaction."""
        now = time.time() if timestamp is None else timestamp
        with self._hits_lock:
            count, _ = self._pending_hits.get(key, (0, now))
            self._pending_hits[key] = (count + 1, now)

    def flush_hits(self) -> int:
        with self._hits_lock:
            pending, self._pending_hits = self._pending_hits, {}
        if not pending:
            return 0

        def write(txn: lmdb.Transaction) -> int:
            updated = 0
            for key, (count, last) in pending.items():
                raw = txn.get(key.encode(), db=self._items)
                if raw is None:
                    continue  # removed meanwhile
                item = CacheItem.from_json(raw)
                item.hits += count
                item.last_hit_timestamp = max(last, item.last_hit_timestamp or 0.0)
                txn.put(key.encode(), item.to_json(), db=self._items)
                updated += 1
            return updated

        return self._write(write)

    def sweep(self) -> tuple[int, int]:
        """Delete audio files no item names and items whose audio is gone.

        Returns ``(orphan_files_removed, broken_items_removed)``.
        """
        items = {item.key: item for item in self.items()}
        orphans = 0
        for path in self.audio_dir.iterdir():
            key = path.name.split(".", 1)[0]
            if path.name.startswith(".tmp-") or key not in items:
                path.unlink(missing_ok=True)
                orphans += 1
        broken = [
            key for key, item in items.items()
            if not self.audio_path(key, item.audio_format).is_file()
        ]
        if broken:
            self.delete(broken)
        if orphans or broken:
            log.warning("cache sweep", extra={"orphan_files": orphans, "broken_items": len(broken)})
        return orphans, len(broken)

    def verify(self) -> IntegrityReport:
        """Check that metadata, audio files, the exact index and the vectors agree."""
        def read(txn: lmdb.Transaction) -> IntegrityReport:
            items = {bytes(k).decode(): CacheItem.from_json(v) for k, v in txn.cursor(db=self._items)}
            files = {path.name: path for path in self.audio_dir.iterdir()}
            named = {f"{key}.{item.audio_format}" for key, item in items.items()}
            missing, mismatch = [], []
            for key, item in items.items():
                path = files.get(f"{key}.{item.audio_format}")
                if path is None:
                    missing.append(key)
                elif path.stat().st_size != item.audio_bytes:
                    mismatch.append(key)
            dangling_exact = [bytes(k).decode() for k, v in txn.cursor(db=self._exact)
                              if bytes(v).decode() not in items]
            dangling, bad = [], []
            dimension = None
            for db in (self._vectors, self._clap):
                for raw_key, value in txn.cursor(db=db):
                    key = bytes(raw_key).decode()
                    if key not in items:
                        dangling.append(key)
                    elif len(value) == 0 or len(value) % 4:
                        bad.append(key)
                    elif db is self._vectors:
                        dimension = dimension or len(value)
                        if len(value) != dimension:
                            bad.append(key)
            return IntegrityReport(
                items=len(items), orphan_files=sorted(set(files) - named),
                items_without_audio=missing, audio_size_mismatch=mismatch,
                dangling_exact_entries=dangling_exact, dangling_vectors=dangling, bad_vectors=bad,
                total_bytes_recorded=_int(txn.get(_TOTAL_BYTES, db=self._meta)),
                total_bytes_actual=sum(item.audio_bytes for item in items.values()),
            )

        return self._read(read)

    def close(self) -> None:
        if not self._closed:
            self.flush_hits()
            self._env.close()
            self._closed = True

    # -- internals ---------------------------------------------------------------------

    def _evict_in(self, txn: lmdb.Transaction, max_items: int, max_bytes: int, keep: str) -> list[str]:
        count = txn.stat(self._items)["entries"]
        total = _int(txn.get(_TOTAL_BYTES, db=self._meta))
        if count <= max_items and total <= max_bytes:
            return []
        candidates = sorted(
            (CacheItem.from_json(v) for _, v in txn.cursor(db=self._items)), key=_eviction_rank
        )
        evicted = []
        for item in candidates:
            if count <= max_items and total <= max_bytes:
                break
            if item.key == keep:
                continue
            self._delete_in(txn, item.key)
            count, total = count - 1, total - item.audio_bytes
            evicted.append(item.key)
        return evicted

    def _delete_in(self, txn: lmdb.Transaction, key: str) -> CacheItem | None:
        raw = txn.get(key.encode(), db=self._items)
        if raw is None:
            return None
        item = CacheItem.from_json(raw)
        txn.delete(key.encode(), db=self._items)
        txn.delete(key.encode(), db=self._vectors)
        txn.delete(key.encode(), db=self._clap)
        if txn.get(item.exact_key.encode(), db=self._exact) == key.encode():
            txn.delete(item.exact_key.encode(), db=self._exact)
        total = max(0, _int(txn.get(_TOTAL_BYTES, db=self._meta)) - item.audio_bytes)
        txn.put(_TOTAL_BYTES, str(total).encode(), db=self._meta)
        return item

    def _bump_generation(self, txn: lmdb.Transaction) -> int:
        generation = _int(txn.get(_GENERATION, db=self._meta)) + 1
        txn.put(_GENERATION, str(generation).encode(), db=self._meta)
        return generation

    def _unlink_audio(self, keys: list[str]) -> None:
        for key in keys:
            for path in self.audio_dir.glob(f"{key}.*"):
                path.unlink(missing_ok=True)

    def _read(self, body: Callable[[lmdb.Transaction], _T]) -> _T:
        return self._transaction(body, write=False)

    def _write(self, body: Callable[[lmdb.Transaction], _T]) -> _T:
        return self._transaction(body, write=True)

    def _transaction(self, body: Callable[[lmdb.Transaction], _T], *, write: bool) -> _T:
        """Run ``body`` in one transaction; the map never changes size here (module docstring)."""
        try:
            with self._env.begin(write=write) as txn:
                return body(txn)
        except lmdb.MapFullError as exc:
            raise CacheFull(
                f"the cache index at {self.directory} is full ({self.map_size} bytes of map): stop "
                "the appliance and run `appliance cache resize --map-size-bytes N` with a larger N"
            ) from exc
        except lmdb.MapResizedError as exc:
            raise CacheError(
                f"the cache map at {self.directory} was resized while in use; restart this process"
            ) from exc
        except lmdb.Error as exc:
            raise CacheError(f"cache {'write' if write else 'read'} failed: {exc}") from exc


def _agreed_map_size(index_dir: Path, configured: int) -> int:
    """The size recorded for this cache, else ``configured``, recorded now (first opener wins)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    record = index_dir / _MAP_SIZE_FILE
    try:
        with open(record, "x", encoding="ascii") as handle:
            handle.write(f"{configured}\n")
        return configured
    except FileExistsError:
        pass
    try:
        recorded = int(record.read_text(encoding="ascii").strip() or 0)
    except ValueError:
        recorded = 0
    if recorded <= 0:  # an opener that crashed between create and write: adopt ours
        write_file_durably(record, f"{configured}\n".encode())
        return configured
    if recorded != configured:
        log.warning("the cache keeps its map size; cache.map_size_bytes applies to new caches and "
                    "to `appliance cache resize`", extra={"map_size": recorded, "configured": configured})
    return recorded


def resize_map(directory: Path, map_size_bytes: int) -> int:
    """Change a cache's map size, with no other process using it. Returns the old size.

    The caller makes sure nothing else has the cache open (``appliance cache resize`` holds
    the appliance's instance lock). Every later opener maps the size recorded here.
    """
    index_dir = Path(directory) / "index.lmdb"
    old = _agreed_map_size(index_dir, map_size_bytes)
    env = lmdb.open(str(index_dir), map_size=old, max_dbs=8, subdir=True, lock=True)
    try:
        used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()
    if map_size_bytes <= used:
        raise CacheError(f"the cache index uses {used} bytes: a map of {map_size_bytes} bytes is too small")
    write_file_durably(index_dir / _MAP_SIZE_FILE, f"{map_size_bytes}\n".encode())
    return old


def _eviction_rank(item: CacheItem) -> tuple[float, float]:
    """Least recently used first; a clip of higher quality counts as used more recently.

    Quality (CLAP score in [-1, 1]) shifts the last-use time by up to a day, so among clips
    used around the same time the worse one goes first.
    """
    last_used = item.last_hit_timestamp or item.generation_timestamp
    quality = item.clap_similarity if item.clap_similarity is not None else 0.0
    return (last_used + quality * 86_400.0, item.generation_timestamp)


def write_file_durably(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename into place, fsync the directory."""
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a file behind
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _vector_bytes(vector: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _int(raw: bytes | memoryview | None) -> int:
    return int(bytes(raw)) if raw else 0
