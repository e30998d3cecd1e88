"""The HTTP port: ``/healthz``, ``/readyz``, ``/metrics`` and ``/audio/<key>``.

A standard-library threading server: the endpoints are few and small, and the appliance
should not carry a web framework for them. Binds to 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appliance.cache.keys import is_item_key
from appliance.cache.store import CacheStore
from appliance.errors import NotFound
from appliance.metrics import Metrics

log = logging.getLogger(__name__)

HealthProbe = Callable[[], tuple[bool, dict[str, Any]]]


class HttpServer:
    """Serves the HTTP endpoints on a background thread."""

    def __init__(
        self, host: str, port: int, *, cache: CacheStore, metrics: Metrics,
        health: HealthProbe, readiness: HealthProbe, audio_token: str = "",
    ) -> None:
        handler = _make_handler(cache, metrics, health, readiness, audio_token=audio_token)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(
    cache: CacheStore, metrics: Metrics, health: HealthProbe, readiness: HealthProbe,
    *, audio_token: str = "",
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "audiogen"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._probe(health)
            elif path == "/readyz":
                self._probe(readiness)
            elif path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path.startswith("/audio/"):
                self._audio(path[len("/audio/"):])
            else:
                self._json(404, {"error": "not_found", "path": path})

        def _audio(self, name: str) -> None:
            if audio_token and not self._audio_token_ok():
                self._json(401, {"error": "unauthorized", "message": "audio needs the token"})
                return
            key = name.rsplit(".", 1)[0] if name.endswith(".wav") else name
            if not is_item_key(key):
                self._json(404, {"error": "not_found", "message": "not a cache key"})
                return
            try:
                item = cache.get(key)
                data = cache.read_audio(item)
            except NotFound as exc:
                self._json(404, {"error": "not_found", "message": exc.message})
                return
            self._send(200, data, "audio/wav")

        def _audio_token_ok(self) -> bool:
            """``Authorization: Bearer <token>`` or ``?token=<token>`` (for players)."""
            scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer":
                query = urllib.parse.parse_qs(self.path.partition("?")[2])
                given = (query.get("token") or [""])[0]
            return hmac.compare_digest(given.strip().encode(), audio_token.encode())

        def _probe(self, probe: HealthProbe) -> None:
            ok, body = probe()
            self._json(200 if ok else 503, body)

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http " + format % args)

    return Handler
