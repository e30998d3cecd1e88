"""LMDB map growth under concurrent transactions: it must never hang the service.

The "service" here is a separate process (so that a hang can be killed and reported): three
reader threads and a writer thread use one small-map cache, while another process (the CLI),
configured with a larger map, writes past the service's map. Growing online hung the
service; now every process maps the size recorded with the cache, a full map is `cache_full`,
and the size changes only offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from appliance.cache.store import CacheItem, CacheStore
from appliance.errors import CacheFull
from appliance.instance import InstanceLock
from testkit.items import make_item

REPO = Path(__file__).resolve().parents[1]
SMALL_MAP = 1024 * 1024


def _item(prompt: str) -> CacheItem:
    return make_item(prompt, steps=2, guidance_scale=3.0)


def _write_until_full(store: CacheStore, tag: str, count: int) -> str:
    try:
        for index in range(count):
            store.put(_item(f"{tag} {index} " + "p" * 4000), b"a", max_items=10**6, max_bytes=10**9)
    except CacheFull:
        return "full"
    return "room"


def service(directory: str) -> None:
    """Readers in three threads and a writer, until the writer is done; prints how it ended."""
    store = CacheStore(Path(directory), map_size_bytes=SMALL_MAP)
    finished = threading.Event()

    def read() -> None:  # short transactions, back to back: one is open at almost any instant
        while not finished.is_set():
            store.totals()
            store.lookup_exact("none")
            time.sleep(0.0005)  # let the writer thread have the interpreter too

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    outcome = _write_until_full(store, "service", 1500)
    finished.set()
    for thread in readers:
        thread.join()
    print(outcome, flush=True)
    store.close()


def cli(directory: str) -> None:
    """Configured with a map 64 times larger: before, it grew the map under the service."""
    store = CacheStore(Path(directory), map_size_bytes=64 * SMALL_MAP)
    print(_write_until_full(store, "cli", 1500), flush=True)
    store.close()


def _run(function: str, directory: Path) -> subprocess.Popen[str]:
    code = f"from tests.test_cache_map_growth import {function}; {function}({str(directory)!r})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)


def test_a_process_with_a_larger_map_cannot_hang_readers_and_a_full_map_is_a_clear_error(
    tmp_path: Path
) -> None:
    CacheStore(tmp_path / "cache", map_size_bytes=SMALL_MAP).close()
    service_process = _run("service", tmp_path / "cache")
    cli_process = _run("cli", tmp_path / "cache")
    try:
        cli_out, _ = cli_process.communicate(timeout=120)
        service_out, _ = service_process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError("a process hung on the cache map") from None
    finally:
        for process in (service_process, cli_process):
            process.kill()
            process.wait()
    # both ran into the one agreed map, and were told so
    assert (service_process.returncode, service_out.split()) == (0, ["full"])
    assert (cli_process.returncode, cli_out.split()) == (0, ["full"])
    store = CacheStore(tmp_path / "cache", map_size_bytes=SMALL_MAP)
    try:
        assert store.map_size == SMALL_MAP and store.verify().ok
    finally:
        store.close()


def test_resize_is_offline_and_makes_room(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    store = CacheStore(tmp_path / "cache", map_size_bytes=SMALL_MAP)
    assert _write_until_full(store, "x", 1500) == "full"
    store.close()
    resize = [sys.executable, "-m", "appliance", "cache", "resize", "--config", str(config), "--json"]
    lock = InstanceLock.acquire(tmp_path)  # the appliance "running" on this state
    refused = subprocess.run([*resize, "--map-size-bytes", str(8 * SMALL_MAP)],
                             capture_output=True, text=True, timeout=120)
    lock.release()
    assert refused.returncode == 1 and f"pid {os.getpid()}" in refused.stdout + refused.stderr
    done = subprocess.run([*resize, "--map-size-bytes", str(8 * SMALL_MAP)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    store = CacheStore(tmp_path / "cache", map_size_bytes=SMALL_MAP)  # the recorded size wins
    try:
        assert store.map_size == 8 * SMALL_MAP
        assert _write_until_full(store, "y", 100) == "room" and store.verify().ok
    finally:
        store.close()
