"""``appliance.Client`` and ``appliance.AsyncClient``: one call per sound, for scripts.

Both are thin shells over :class:`appliance.client.RequestClient` (the engine the CLI uses):
they add the typed request parameters, the :class:`Result`, errors raised instead of
returned, and the fail-fast rule — a request to a node whose retained status is ``offline``
or absent raises :class:`NodeOffline` at once instead of waiting out its timeout, and a node
that goes offline while a request waits fails that request the moment the broker says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypedDict, Unpack

from pydantic import ValidationError

from appliance.audio import AudioFormat
from appliance.client import AUDIO_GRACE_S, PendingRequest, ProgressCallback, RequestClient
from appliance.config import BrokerSettings, NodeSettings
from appliance.errors import ApplianceError, ConfigError, GenerationTimeout, NotFound, Unavailable
from appliance.topics import Topics

__all__ = ["AsyncClient", "Client", "RequestParams", "Result"]


def _error_classes() -> dict[str, type[ApplianceError]]:
    """Reply ``code`` → exception class; the most general class of each code wins."""
    classes: dict[str, type[ApplianceError]] = {}
    queue: list[type[ApplianceError]] = [ApplianceError]
    while queue:
        cls = queue.pop(0)
        classes.setdefault(cls.code, cls)
        queue.extend(cls.__subclasses__())
    return classes


class RequestParams(TypedDict, total=False):
    """The optional fields of a request (docs/mqtt-api.md); ``prompt`` is the first argument."""

    duration_s: float
    loop: bool
    steps: int
    guidance_scale: float
    candidates: int
    seed: int
    force: bool
    deliver: Literal["url", "mqtt", "both"]
    format: AudioFormat
    request_id: str


@dataclass(frozen=True)
class Result:
    """One answered request: the reply's metadata and where its audio is.

    ``audio`` holds the encoded clip when it came over MQTT (``deliver`` ``mqtt`` or
    ``both``, the client's default); ``audio_url`` is set when the appliance serves it over
    HTTP (``url`` or ``both``, for clips it stored).
    """

    request_id: str
    metadata: Mapping[str, Any]
    audio: bytes | None
    audio_url: str | None
    progress: tuple[tuple[int, int], ...]

    @property
    def key(self) -> str:
        """The cache key of the clip (``Cache.show(key)`` and ``/audio/<key>``)."""
        return str(self.metadata.get("key", ""))

    @property
    def cached(self) -> bool:
        return bool(self.metadata.get("cached"))

    def save(self, path: str | Path, *, token: str | None = None) -> Path:
        """Write the clip to ``path``: the MQTT bytes, else a download of ``audio_url``
        (``token``: the appliance's ``http.audio_token``, when it has one)."""
        data = self.audio if self.audio is not None else self._download(token)
        target = Path(path)
        target.write_bytes(data)
        return target

    def _download(self, token: str | None) -> bytes:
        if not self.audio_url:
            raise NotFound(f"reply {self.request_id} has neither audio bytes nor an audio_url")
        request = urllib.request.Request(self.audio_url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            error = NotFound if exc.code == 404 else Unavailable
            raise error(f"GET {self.audio_url}: HTTP {exc.code}") from exc
        except OSError as exc:
            raise Unavailable(f"GET {self.audio_url}: {exc}") from exc


class _ClientBase:
    """What the sync and async clients share: settings, request bodies, results, errors."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 1883, node: str | None = None, *,
        base_topic: str = "audiogen", username: str = "", password: str = "", tls: bool = False,
        ca_file: str = "", timeout_s: float = 600.0, connect_timeout_s: float = 10.0,
    ) -> None:
        try:
            broker = BrokerSettings.model_validate({
                "host": host, "port": port, "embedded": False, "protocol": "5",
                "username": username, "password": password, "tls": tls, "ca_file": ca_file})
            node_settings = NodeSettings.model_validate({"id": node or "", "base_topic": base_topic})
        except ValidationError as exc:
            raise ConfigError(f"invalid client settings: {exc}") from exc
        self.node = node_settings.node_id
        self.timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._engine = RequestClient(broker, Topics.from_settings(node_settings),
                                     client_id=f"audiogen-py-{uuid.uuid4().hex[:8]}")
        self._start()

    def _start(self) -> None:
        """Sync clients connect here; async ones when entered."""

    @property
    def node_status(self) -> str | None:
        """The node's last retained status: ``online``, ``offline``, or None (none yet)."""
        return self._engine.node_status

    @staticmethod
    def _body(prompt: str, params: RequestParams) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt, "deliver": "both", **params}
        return body

    @staticmethod
    def _result(pending: PendingRequest, timeout_s: float) -> Result:
        if pending.error is not None:
            raise pending.error
        body = pending.body
        if body is None:
            raise GenerationTimeout(f"no reply to {pending.request_id} within {timeout_s:.0f} s")
        if body.get("status") != "ok":
            code = str(body.get("code", "internal_error"))
            error = _error_classes().get(code, ApplianceError)(str(body.get("message", "no message")))
            error.code = code
            raise error
        return Result(
            request_id=pending.request_id, metadata=body, audio=pending.audio,
            audio_url=body.get("audio_url"), progress=tuple(pending.progress),
        )


class Client(_ClientBase):
    """A connection to one appliance node over MQTT 5; ``request`` blocks until the reply.

    Connects in the constructor and raises :class:`NodeOffline` there when the node is not
    online. ``on_progress(step, total)`` runs on the MQTT network thread: keep it short.
    Thread-safe; use it as a context manager or call :meth:`close`.
    """

    def _start(self) -> None:
        self._engine.connect(self._connect_timeout_s, require_online=True)

    def request(self, prompt: str, *, on_progress: ProgressCallback | None = None,
                timeout_s: float | None = None, **params: Unpack[RequestParams]) -> Result:
        """Generate (or fetch from the cache) one clip; raises the reply's error as an
        :class:`~appliance.errors.ApplianceError` subclass with its ``code``."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        self._engine.check_online()
        pending = self._engine.submit(self._body(prompt, params), on_progress=on_progress)
        self._engine.wait(pending, timeout)
        return self._result(pending, timeout)

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class AsyncClient(_ClientBase):
    """The asyncio twin of :class:`Client`: ``async with AsyncClient(...) as client``.

    Connects on entering (or on :meth:`connect`); ``on_progress`` runs on the event loop.
    """

    _connected = False

    async def connect(self) -> None:
        if not self._connected:
            await asyncio.to_thread(self._engine.connect, self._connect_timeout_s, require_online=True)
            self._connected = True

    async def request(self, prompt: str, *, on_progress: ProgressCallback | None = None,
                      timeout_s: float | None = None, **params: Unpack[RequestParams]) -> Result:
        """As :meth:`Client.request`, without blocking the event loop."""
        await self.connect()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        self._engine.check_online()
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def from_mqtt_thread(callback: Any, *args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed after a cancel
                loop.call_soon_threadsafe(callback, *args)

        def progress(step: int, total: int) -> None:
            if on_progress is not None:
                from_mqtt_thread(on_progress, step, total)

        pending = self._engine.submit(self._body(prompt, params), on_progress=progress,
                                      on_change=lambda: from_mqtt_thread(changed.set))
        try:
            if not await _wait(pending.done, changed, timeout) and pending.replied.is_set():
                await _wait(pending.done, changed, AUDIO_GRACE_S)
        finally:
            self._engine.forget(pending)
        return self._result(pending, timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.close)
        self._connected = False

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()


async def _wait(flag: threading.Event, changed: asyncio.Event, timeout_s: float) -> bool:
    """Wait until the threading.Event ``flag`` is set (``changed`` wakes us); False on timeout."""
    try:
        async with asyncio.timeout(timeout_s):
            while not flag.is_set():
                changed.clear()
                if flag.is_set():
                    break
                await changed.wait()
    except TimeoutError:
        return flag.is_set()
    return True
