"""The HTTP port against hostile and media-player clients: stalled request lines, many idle
connections, HEAD, single and multiple Range requests, large files streamed from disk."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.cache.keys import exact_key, new_item_key
from appliance.cache.store import CacheItem, CacheStore
from appliance.errors import ConfigError
from appliance.http import HttpServer
from appliance.metrics import Metrics


@dataclass
class Served:
    server: HttpServer
    cache: CacheStore
    key: str
    audio: bytes

    @property
    def port(self) -> int:
        return self.server.port


def _put(cache: CacheStore, audio: bytes) -> str:
    key = new_item_key()
    item = CacheItem(
        key=key, exact_key=exact_key(key, model="m", duration_s=2.0, loop=False),
        prompt=key, model="m", duration_s=2.0, requested_duration_s=2.0, is_loop=False,
        steps=4, guidance_scale=4.5, candidates=1, seed=None, sample_rate=44100, channels=2,
        audio_format="wav", audio_bytes=0, generation_timestamp=time.time(), generation_s=0.1,
    )
    cache.put(item, audio, max_items=10, max_bytes=10**10)
    return key


def _serve(tmp_path: Path, **options: int) -> Iterator[Served]:
    cache = CacheStore(tmp_path / "cache")
    audio = bytes(range(256)) * 40
    key = _put(cache, audio)
    server = HttpServer("127.0.0.1", 0, cache=cache, metrics=Metrics(),
                        health=lambda: (True, {"status": "ok"}),
                        readiness=lambda: (True, {"status": "ready"}), **options)  # type: ignore[arg-type]
    server.start()
    try:
        yield Served(server, cache, key, audio)
    finally:
        server.stop()
        cache.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path)


def _exchange(port: int, method: str, target: str, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), parsed, body


def _stalled_client(port: int) -> socket.socket:
    """Sends half a request line and then nothing, ever."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /aud")
    return sock


def test_stalled_clients_hold_no_thread_and_others_are_served(served: Served) -> None:
    threads_before = threading.active_count()
    stalled = [_stalled_client(served.port) for _ in range(40)]
    try:
        status, _, body = _exchange(served.port, "GET", f"/audio/{served.key}")
        assert (status, body) == (200, served.audio)
        # the server's threads are a fixed pool, not one per connection
        assert threading.active_count() <= threads_before + 1
    finally:
        for sock in stalled:
            sock.close()


def test_a_client_that_never_finishes_its_request_line_is_disconnected(tmp_path: Path) -> None:
    for served in _serve(tmp_path, timeout_s=1):
        sock = _stalled_client(served.port)
        with sock:
            # the server closes it: recv reaches the end (a 30 s socket timeout would raise)
            while sock.recv(1024):
                pass


def test_single_ranges_are_206_and_unsatisfiable_ones_416(served: Served) -> None:
    size, url = len(served.audio), f"/audio/{served.key}.wav"
    for header, start, end in [("bytes=0-9", 0, 9), ("bytes=100-", 100, size - 1),
                               ("bytes=-5", size - 5, size - 1), (f"bytes=10-{size * 2}", 10, size - 1)]:
        status, headers, body = _exchange(served.port, "GET", url, {"Range": header})
        assert status == 206, header
        assert headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert body == served.audio[start:end + 1]
        assert int(headers["content-length"]) == len(body)
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}"):
        status, headers, _ = _exchange(served.port, "GET", url, {"Range": header})
        assert status == 416, header
        assert headers["content-range"] == f"bytes */{size}"
    status, _, body = _exchange(served.port, "GET", url, {"Range": "bytes=0-1,5-6"})
    assert (status, body) == (200, served.audio)  # several ranges: the whole file


def test_head_gives_the_headers_without_the_body(served: Served) -> None:
    status, headers, body = _exchange(served.port, "HEAD", f"/audio/{served.key}")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == len(served.audio)
    assert headers["accept-ranges"] == "bytes" and headers["content-type"] == "audio/wav"
    status, headers, body = _exchange(served.port, "HEAD", f"/audio/{served.key}", {"Range": "bytes=0-3"})
    assert (status, headers["content-length"], body) == (206, "4", b"")
    assert _exchange(served.port, "POST", "/healthz")[0] == 405


def test_a_large_file_is_streamed_not_read_whole(served: Served) -> None:
    size = 32 * 1024 * 1024
    key = _put(served.cache, b"\x01" * size)
    tracemalloc.start()
    try:
        received = 0
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
            sock.sendall(f"GET /audio/{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            buffer = bytearray(65536)
            while count := sock.recv_into(buffer):
                received += count
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received > size
    assert peak < size // 2, f"peak Python allocation {peak} bytes for a {size}-byte file"


def test_a_port_already_taken_names_the_setting(served: Served) -> None:
    with pytest.raises(ConfigError, match=rf"http.port.*127.0.0.1:{served.port}"):
        HttpServer("127.0.0.1", served.port, cache=served.cache, metrics=Metrics(),
                   health=lambda: (True, {}), readiness=lambda: (True, {}))
