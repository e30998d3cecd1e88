"""The MQTT side of a request: publish it, match its reply, audio and progress (the engine
under ``appliance request``, :class:`appliance.Client`, the tests and the benchmarks).

Under MQTT 5 every request names one Response Topic per client and its own Correlation
Data, and the reply and its ``/audio`` message are matched by that Correlation Data (the
appliance copies it), so replies cannot be confused even when request ids repeat. Under
3.1.1 the reply address goes in the body (``reply_to``) with the request id in it.

The reply topic sits under ``<base>/<node>/reply/<username>/`` when the broker account has a
user name: the ACL in docs/security.md lets a device read only that namespace.

The node's retained ``status`` is followed from the first connect. It is known, or known to
be absent, once the broker acknowledges the second of two subscriptions (status first,
replies second): mosquitto sends a subscription's retained message before it handles the next
packet of the same client, so no timed wait is needed to tell "offline" from "no status yet".
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.config import BrokerSettings
from appliance.errors import ApplianceError, GenerationTimeout, Unavailable
from appliance.mqtt import make_client
from appliance.topics import Topics

#: How long the audio message may trail its reply before the reply is returned without it.
AUDIO_GRACE_S = 10.0

ProgressCallback = Callable[[int, int], None]


class NodeOffline(Unavailable):
    """The appliance's retained status is ``offline`` or absent: a request would go unanswered."""


@dataclass
class Reply:
    body: dict[str, Any]
    audio: bytes | None = None
    progress: list[tuple[int, int]] = field(default_factory=list)


class PendingRequest:
    """One published request until its reply (and audio) arrive, or the node goes offline.

    Fields are written on the MQTT thread and read after ``replied``/``done`` are set;
    ``on_change`` (when given) is called on the MQTT thread after each change, for waiters
    that are not threads (asyncio).
    """

    def __init__(self, request_id: str, token: str, *, on_progress: ProgressCallback | None,
                 on_change: Callable[[], None] | None) -> None:
        self.request_id = request_id
        self.token = token
        self.body: dict[str, Any] | None = None
        self.audio: bytes | None = None
        self.error: ApplianceError | None = None
        self.progress: list[tuple[int, int]] = []
        self.replied = threading.Event()  # a reply or an error
        self.done = threading.Event()  # the reply and, when it announced one, its audio
        self._on_progress = on_progress
        self._on_change = on_change

    @property
    def expects_audio(self) -> bool:
        return self.body is not None and bool(self.body.get("audio_topic"))

    def _changed(self) -> None:
        if self.error is not None or (self.body is not None and (
                self.audio is not None or not self.expects_audio)):
            self.done.set()
        if self.error is not None or self.body is not None:
            self.replied.set()
        if self._on_change is not None:
            self._on_change()

    def set_body(self, body: dict[str, Any]) -> None:
        self.body = body
        self._changed()

    def set_audio(self, audio: bytes) -> None:
        self.audio = audio
        self._changed()

    def fail(self, error: ApplianceError) -> None:
        if self.body is None:
            self.error = error
            self._changed()

    def add_progress(self, step: int, total: int) -> None:
        self.progress.append((step, total))
        if self._on_progress is not None:
            self._on_progress(step, total)


class RequestClient:
    """Publishes requests to one appliance and collects the replies (MQTT 5 or 3.1.1)."""

    def __init__(self, broker: BrokerSettings, topics: Topics, *, client_id: str = "") -> None:
        self._topics = topics
        self._v5 = broker.protocol == "5"
        token = f"client-{uuid.uuid4().hex[:12]}"
        self._reply_topic = topics.reply(f"{broker.username}/{token}" if broker.username else token)
        self._client = make_client(broker, client_id or f"audiogen-cli-{uuid.uuid4().hex[:8]}")
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._connected = threading.Event()
        self._status_known = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, PendingRequest] = {}  # by correlation token
        self._by_request_id: dict[str, PendingRequest] = {}  # for progress messages
        self._replies_mid: int | None = None
        self._node_status: str | None = None
        self._fail_when_offline = False
        self._host, self._port = broker.host, broker.port

    @property
    def node_status(self) -> str | None:
        """The node's retained status (``online``/``offline``), None while there is none."""
        return self._node_status

    def connect(self, timeout_s: float = 10.0, *, require_online: bool = False) -> None:
        """Connect; with ``require_online``, raise :class:`NodeOffline` unless the node is
        online now, and fail pending requests the moment it goes offline."""
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise Unavailable(f"cannot reach the broker at {self._host}:{self._port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self.close()
            raise Unavailable(f"no answer from the broker at {self._host}:{self._port}")
        if not require_online:
            return
        self._fail_when_offline = True
        if not self._status_known.wait(timeout_s):
            self.close()
            raise Unavailable(f"the broker at {self._host}:{self._port} did not confirm the subscriptions")
        try:
            self.check_online()
        except NodeOffline:
            self.close()
            raise

    def check_online(self) -> None:
        """Raise :class:`NodeOffline` unless the node's last status was ``online``."""
        status = self._node_status
        if status == "online":
            return
        if status is None:
            raise NodeOffline(
                f"node {self._topics.node!r} has published no status on {self._topics.status}: "
                "it has never run against this broker, or the node id or base topic is wrong")
        raise NodeOffline(f"node {self._topics.node!r} is {status} ({self._topics.status})")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def submit(self, body: dict[str, Any], *, on_progress: ProgressCallback | None = None,
               on_change: Callable[[], None] | None = None) -> PendingRequest:
        """Publish one request (``body`` gains a ``request_id`` if it has none); the caller
        waits on the returned handle and then calls :meth:`forget`."""
        request_id = str(body.setdefault("request_id", uuid.uuid4().hex))
        token = uuid.uuid4().hex if self._v5 else request_id
        pending = PendingRequest(request_id, token, on_progress=on_progress, on_change=on_change)
        with self._lock:
            self._pending[token] = pending
            self._by_request_id[request_id] = pending
        self._client.subscribe(self._topics.progress(request_id), qos=0)
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self._reply_topic
            properties.CorrelationData = token.encode()
        else:
            body["reply_to"] = f"{self._reply_topic}/{request_id}"
        self._client.publish(self._topics.request, json.dumps(body), qos=1, properties=properties)
        return pending

    def forget(self, pending: PendingRequest) -> None:
        """Stop following a request (its progress subscription and late messages)."""
        self._client.unsubscribe(self._topics.progress(pending.request_id))
        with self._lock:
            self._pending.pop(pending.token, None)
            if self._by_request_id.get(pending.request_id) is pending:
                del self._by_request_id[pending.request_id]

    def wait(self, pending: PendingRequest, timeout_s: float) -> None:
        """Block until the request is done, its reply came without its audio for
        :data:`AUDIO_GRACE_S`, or ``timeout_s`` passed with no reply; then forget it."""
        try:
            if not pending.done.wait(timeout_s) and pending.replied.is_set():
                pending.done.wait(AUDIO_GRACE_S)
        finally:
            self.forget(pending)

    def request(self, body: dict[str, Any], *, timeout_s: float = 600.0,
                want_audio: bool = False,
                on_progress: ProgressCallback | None = None) -> Reply:
        """Send one request and wait for its reply (and its audio, when asked for).

        ``on_progress(step, total)`` is called (on the MQTT thread) for each denoising step
        the appliance publishes. A reply with ``status: error`` is returned, not raised.
        """
        if self._fail_when_offline:
            self.check_online()
        pending = self.submit(body, on_progress=on_progress)
        self.wait(pending, timeout_s)
        if pending.error is not None:
            raise pending.error
        if pending.body is None:
            raise GenerationTimeout(f"no reply to {pending.request_id} within {timeout_s:.0f} s")
        audio = pending.audio if want_audio and pending.body.get("status") == "ok" else None
        return Reply(pending.body, audio, pending.progress)

    # -- the MQTT thread ------------------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(self._topics.status, qos=1)  # first: see the module docstring
        _, self._replies_mid = client.subscribe(f"{self._reply_topic}/#", qos=1)
        self._connected.set()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if mid == self._replies_mid:
            self._status_known.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        topic = message.topic
        if topic == self._topics.status:
            self._on_status(bytes(message.payload).decode(errors="replace").strip() or None)
        elif topic.startswith(f"{self._topics.prefix}/progress/"):
            self._on_progress(bytes(message.payload))
        elif topic == self._reply_topic or topic.startswith(self._reply_topic + "/"):
            self._on_reply(message)

    def _on_status(self, status: str | None) -> None:
        self._node_status = status
        if status == "online" or not self._fail_when_offline:
            return
        with self._lock:
            waiting = list(self._pending.values())
        for pending in waiting:
            pending.fail(NodeOffline(
                f"node {self._topics.node!r} went {status or 'away'} before answering {pending.request_id}"))

    def _on_reply(self, message: paho.MQTTMessage) -> None:
        rest = message.topic[len(self._reply_topic) + 1:]
        if self._v5:
            correlation = getattr(message.properties, "CorrelationData", None)
            token = bytes(correlation).decode(errors="replace") if correlation else ""
            is_audio = rest == "audio"
        else:
            token, _, kind = rest.partition("/")
            is_audio = kind == "audio"
        with self._lock:
            pending = self._pending.get(token)
        if pending is None:
            return
        if is_audio:
            pending.set_audio(bytes(message.payload))
            return
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(body, dict):
            pending.set_body(body)

    def _on_progress(self, payload: bytes) -> None:
        try:
            data = json.loads(payload)
            step, total, request_id = int(data["step"]), int(data["total"]), str(data["request_id"])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            pending = self._by_request_id.get(request_id)
        if pending is not None:
            pending.add_progress(step, total)
