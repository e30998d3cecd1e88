"""The HTTP port: ``/healthz``, ``/readyz``, ``/metrics`` and ``/audio/<key>``.

Served by waitress, a maintained pure-Python WSGI server, because media players and slow or
hostile clients need what a hand-rolled server lacks: requests are read without a thread
(a client that never finishes its request line holds no worker thread and is closed after
``timeout_s`` of silence), a fixed number of threads run complete requests, and open
connections are capped. werkzeug serves the files: streamed from disk, ``HEAD``, a single
``Range`` (``206``, or ``416`` when it cannot be satisfied), ETag and Last-Modified. A
request for several ranges gets the whole file (``200``), which RFC 9110 allows.
``/audio/<key>`` is the cached master (WAV); ``/audio/<key>.<format>`` the clip in one of the
request formats (``flac``, ``ogg``, ``mp3``, ``wav``), encoded on first use and kept
(appliance/cache/encoded.py), each with its own Content-Type.
Binds to 127.0.0.1 unless configured otherwise; another address without ``http.audio_token``
serves every cached clip to anyone who can reach it, which is allowed (a container must bind
0.0.0.0 and publishes the port on the host's loopback) but said loudly at start and in
``appliance status`` (:func:`network_exposure`).

The token is taken from ``Authorization: Bearer`` and, for media players that cannot set a
header (Home Assistant's ``media_player.play_media``, ESPHome speakers, a browser's
``<audio src>``), from ``?token=``. Nothing here logs a request line or a query string.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import waitress
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from appliance.audio import AUDIO_FORMATS, MEDIA_TYPES
from appliance.cache.contract import Store
from appliance.cache.encoded import EncodedClips
from appliance.cache.keys import is_item_key
from appliance.errors import ConfigError, NotFound
from appliance.metrics import Metrics

log = logging.getLogger(__name__)

HealthProbe = Callable[[], tuple[bool, dict[str, Any]]]
StartResponse = Callable[..., Any]


class HttpServer:
    """Serves the HTTP endpoints on a background thread.

    ``timeout_s``: a connection silent this long (a slow or stalled client) is closed;
    ``threads``: requests handled at once; ``max_connections``: open connections at once
    (beyond it, new ones wait in the listen backlog).
    """

    def __init__(
        self, host: str, port: int, *, cache: Store, metrics: Metrics,
        health: HealthProbe, readiness: HealthProbe, audio_token: str = "",
        timeout_s: int = 30, threads: int = 4, max_connections: int = 100,
        encoded: EncodedClips | None = None,
    ) -> None:
        encoded = encoded or EncodedClips(cache, max_bytes=256 * 1024**2)
        exposure = network_exposure(host, audio_token)
        if exposure is not None:
            log.warning("AUDIO OPEN TO THE NETWORK: %s", exposure, extra={"host": host, "port": port})
        app = _Endpoints(cache, encoded, metrics, health, readiness, audio_token)
        try:
            self._server = waitress.create_server(
                app, host=host, port=port, threads=threads, channel_timeout=timeout_s,
                cleanup_interval=max(1, min(timeout_s, 30)), connection_limit=max_connections,
                max_request_header_size=32 * 1024, ident="audiogen", expose_tracebacks=False,
            )
        except OSError as exc:
            raise ConfigError(
                f"http.host/http.port {host}:{port}: cannot listen there ({exc.strerror}); "
                "another process may hold the port: stop it or set http.port to a free one"
            ) from exc
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Close every connection on the server's own loop thread, then stop its threads."""
        server: Any = self._server
        sockets = server._map  # waitress's socket map: the listener, the channels, the trigger

        def close_all() -> None:
            for dispatcher in list(sockets.values()):
                dispatcher.close()

        if self._thread.is_alive():
            server.trigger.pull_trigger(close_all)
            self._thread.join(timeout=10)
        else:
            close_all()
        server.task_dispatcher.shutdown(timeout=5)


@dataclass(frozen=True)
class _Endpoints:
    """The WSGI application: four read-only endpoints."""

    _cache: Store
    _encoded: EncodedClips
    _metrics: Metrics
    _health: HealthProbe
    _readiness: HealthProbe
    _audio_token: str

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if "," in environ.get("HTTP_RANGE", ""):
            del environ["HTTP_RANGE"]  # several ranges: the whole file instead (RFC 9110 14.2)
        request = Request(environ)
        try:
            response = self._route(request)
        except HTTPException as exc:  # 416 from the range handling
            response = exc.get_response(environ)
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(status=405, headers={"Allow": "GET, HEAD"})
        path = request.path
        if path == "/healthz":
            return _probe(self._health)
        if path == "/readyz":
            return _probe(self._readiness)
        if path == "/metrics":
            return Response(generate_latest(self._metrics.registry), content_type=CONTENT_TYPE_LATEST)
        if path.startswith("/audio/"):
            return self._audio(request, path[len("/audio/"):])
        return _json(404, {"error": "not_found", "path": path})

    def _audio(self, request: Request, name: str) -> Response:
        if self._audio_token and not self._token_ok(request):
            return _json(401, {"error": "unauthorized", "message": "audio needs the token"})
        key, _, audio_format = name.partition(".")
        if not is_item_key(key):
            return _json(404, {"error": "not_found", "message": "not a cache key"})
        if audio_format and audio_format not in AUDIO_FORMATS:
            return _json(404, {"error": "not_found", "message": f"no format {audio_format!r}; "
                               f"choose one of {', '.join(AUDIO_FORMATS)}"})
        try:
            item = self._cache.get(key)
            audio_format = audio_format or item.audio_format
            path = self._encoded.path(item, audio_format)  # encoded on first use
            return send_file(path, request.environ, mimetype=MEDIA_TYPES.get(audio_format,
                             "application/octet-stream"), conditional=True, max_age=86_400)
        except NotFound as exc:
            return _json(404, {"error": "not_found", "message": exc.message})
        except FileNotFoundError:  # evicted between the lookup and the open
            return _json(404, {"error": "not_found", "message": f"audio of cache item {key} is gone"})

    def _token_ok(self, request: Request) -> bool:
        """``Authorization: Bearer <token>`` or ``?token=<token>`` (for players)."""
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            given = request.args.get("token", "")
        return hmac.compare_digest(given.strip().encode(), self._audio_token.encode())


def network_exposure(host: str, audio_token: str) -> str | None:
    """A warning when ``/audio`` answers beyond this machine without a token, else None."""
    if audio_token or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name: it resolves to something other than loopback, presumably
        pass
    return (f"http.host is {host!r} and http.audio_token is empty: anyone who reaches this port "
            "can fetch every cached clip from /audio. Set http.audio_token (at least 16 "
            "characters), or bind http.host to 127.0.0.1 (a container: publish the port on the "
            "host's loopback only)")


def _probe(probe: HealthProbe) -> Response:
    ok, body = probe()
    return _json(200 if ok else 503, body)


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
