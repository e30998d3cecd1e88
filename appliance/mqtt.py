"""The MQTT adapter: one paho-mqtt 2.x client with the appliance's conventions.

QoS 1 everywhere, a retained ``status`` topic (``online`` on every connect, ``offline`` as
the will and on clean exit), resubscription in ``on_connect`` (paho does not resubscribe by
itself), reconnection with back-off, and TCP_NODELAY on the socket: without it a small
reply waits ~40-90 ms for Nagle's algorithm.

Flow control (docs/performance.md): on MQTT 5 the CONNECT carries a Receive Maximum (how many
unacknowledged QoS 1 requests the broker may push to us; they then count against no queue limit
of the broker) and a Maximum Packet Size (so a payload far beyond ``requests.max_payload_bytes``
never reaches Python). The message handler runs on paho's network thread and must only enqueue.
Bytes published and not yet acknowledged are counted, so that audio replies can be refused
(``busy``) before a slow broker connection grows memory without bound.

The fleet queue (``$share/<group>/…``) lives on a second, clean session (expiry 0): a node that
drains unsubscribes at once, and a node that is gone leaves no session behind for the broker to
keep queuing its share of fleet requests into.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.config import BrokerSettings
from appliance.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundMessage:
    """A received message with its MQTT 5 reply properties (None under 3.1.1)."""

    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    received_at: float


MessageHandler = Callable[[InboundMessage], None]

# A request a little over ``requests.max_payload_bytes`` still reaches the parser and gets its
# ``payload_too_large`` reply; the topic and properties need room beside the payload too.
PACKET_HEADROOM_BYTES = 16 * 1024


class RedeliveryFilter:
    """Recognises a QoS 1 message that the broker delivers again after it was handled.

    A message handled just before a disconnect may not have been acknowledged; after the
    reconnect the broker sends it again with the DUP flag. Answering it again would answer a
    request twice, so a DUP message whose fingerprint (topic, payload, reply properties) was
    seen recently is dropped. Messages without DUP are never dropped: a device may send the
    same request twice on purpose. The memory is bounded to the last ``capacity`` messages.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()  # the node's and the fleet's network threads share it

    def seen_before(self, message: InboundMessage, *, dup: bool) -> bool:
        fingerprint = hashlib.blake2b(digest_size=16)
        for part in (message.topic.encode(), message.payload, (message.response_topic or "").encode(),
                     message.correlation_data or b""):
            fingerprint.update(len(part).to_bytes(4, "big"))
            fingerprint.update(part)
        key = fingerprint.digest()
        with self._lock:
            if dup and key in self._seen:
                return True
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return False


def enable_tcp_nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho ``on_socket_open`` hook: disable Nagle on the broker connection."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(settings: BrokerSettings, client_id: str, *, persistent_session: bool = False) -> paho.Client:
    """A paho client configured as the appliance's clients are (also used by the CLI).

    ``persistent_session`` matters under 3.1.1 only (``clean_session`` is a constructor
    argument there); MQTT 5 chooses at connect time (see :meth:`MqttAdapter.start`).
    """
    v5 = settings.protocol == "5"
    if v5:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    else:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
            clean_session=not persistent_session,
        )
    if settings.username:
        client.username_pw_set(settings.username, settings.password or None)
    if settings.tls:  # verify the broker's certificate (and its host name unless tls_insecure)
        client.tls_set(ca_certs=settings.ca_file or None, certfile=settings.cert_file or None,
                       keyfile=settings.key_file or None)
        client.tls_insecure_set(settings.tls_insecure)

    def connect_failed(_client: paho.Client, _userdata: Any) -> None:
        # paho calls this inside its ``except OSError``: say why (refused, TLS, DNS), or an
        # untrusted certificate would only show as "not ready"
        log.warning("cannot connect to the broker", extra={
            "host": settings.host, "port": settings.port, "tls": settings.tls,
            "error": str(sys.exc_info()[1] or "unknown")})

    client.on_connect_fail = connect_failed
    client.on_socket_open = enable_tcp_nodelay
    client.max_inflight_messages_set(256)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(
        min_delay=max(1, round(settings.reconnect_min_s)), max_delay=round(settings.reconnect_max_s)
    )
    return client


def connect_properties(
    session_expiry_s: int, *, receive_maximum: int, max_packet_bytes: int | None,
) -> Properties:
    """MQTT 5 CONNECT properties: session expiry and the two flow-control limits."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = session_expiry_s
    properties.ReceiveMaximum = receive_maximum
    if max_packet_bytes is not None:
        properties.MaximumPacketSize = max_packet_bytes
    return properties


class OutgoingBytes:
    """Bytes handed to paho and not yet acknowledged by the broker (QoS 1) or written (QoS 0).

    paho keeps every such message in memory until then. paho calls ``on_publish`` under its
    own message lock, so this class never holds its lock while calling paho, and a PUBACK that
    arrives before :meth:`add` learnt the message id is remembered and settled there.
    """

    _MAX_EARLY = 65536

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_mid: dict[int, int] = {}
        self._early: OrderedDict[int, None] = OrderedDict()
        self.total = 0

    def add(self, mid: int, size: int) -> None:
        with self._lock:
            if mid in self._early:  # already acknowledged
                del self._early[mid]
                return
            self._by_mid[mid] = self._by_mid.get(mid, 0) + size
            self.total += size

    def done(self, mid: int) -> None:
        with self._lock:
            size = self._by_mid.pop(mid, None)
            if size is None:
                self._early[mid] = None
                while len(self._early) > self._MAX_EARLY:
                    self._early.popitem(last=False)
                return
            self.total -= size


def publish_properties(correlation_data: bytes | None) -> Properties | None:
    if correlation_data is None:
        return None
    properties = Properties(PacketTypes.PUBLISH)
    properties.CorrelationData = correlation_data
    return properties


class MqttAdapter:
    """The supervisor's broker connection."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_id: str,
        status_topic: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        metrics: Metrics,
        fleet_subscriptions: Sequence[str] = (),
        max_payload_bytes: int | None = None,
    ) -> None:
        self._settings = settings
        self._status_topic = status_topic
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._metrics = metrics
        self._connected = threading.Event()  # connected AND the subscriptions acknowledged
        self._connections = 0
        self._subscribe_mid: int | None = None
        self._stopping = False
        self.v5 = settings.protocol == "5"
        self._max_packet_bytes = (None if max_payload_bytes is None
                                  else max_payload_bytes + PACKET_HEADROOM_BYTES)
        self._client = make_client(settings, client_id,
                                   persistent_session=settings.session_expiry_s > 0)
        self._client.will_set(status_topic, b"offline", qos=1, retain=True)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish
        self._redeliveries = RedeliveryFilter()
        self._outgoing = OutgoingBytes()
        self._fleet_topics = list(fleet_subscriptions)
        self._fleet = (FleetSession(settings, f"{client_id}-fleet", self._fleet_topics,
                                    self._handle_message, self._connect_properties)
                       if self._fleet_topics else None)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, wait_s: float = 0.0) -> bool:
        """Connect in the background (the broker may come up later); optionally wait."""
        persistent = self._settings.session_expiry_s > 0
        if self.v5:
            self._client.connect_async(
                self._settings.host, self._settings.port, keepalive=self._settings.keepalive_s,
                clean_start=not persistent,
                properties=self._connect_properties(self._settings.session_expiry_s),
            )
        else:
            self._client.connect_async(
                self._settings.host, self._settings.port, keepalive=self._settings.keepalive_s
            )
        self._client.loop_start()
        if self._fleet is not None:
            self._fleet.start()
        return self._connected.wait(wait_s) if wait_s else self.connected

    def _connect_properties(self, session_expiry_s: int) -> Properties:
        return connect_properties(session_expiry_s, receive_maximum=self._settings.receive_maximum,
                                  max_packet_bytes=self._max_packet_bytes)

    @property
    def outgoing_bytes(self) -> int:
        """Bytes published and not yet acknowledged by the broker."""
        return self._outgoing.total

    def audio_budget_allows(self, size: int) -> bool:
        """Whether ``size`` more bytes of audio fit ``broker.outgoing_audio_budget_bytes``.

        A check, not a reservation: dispatch threads that pass it together may overshoot the
        budget by one clip each, which keeps the bound and costs no lock around publish.
        """
        return self._outgoing.total + size <= self._settings.outgoing_audio_budget_bytes

    def leave_fleet(self, timeout_s: float = 2.0) -> None:
        """Drain start: stop taking fleet requests, so the broker sends them to other nodes."""
        if self._fleet is not None:
            self._fleet.leave(timeout_s)

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False,
        correlation_data: bytes | None = None, qos: int = 1,
    ) -> None:
        properties = publish_properties(correlation_data) if self.v5 else None
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc == paho.MQTT_ERR_SUCCESS or (info.rc == paho.MQTT_ERR_NO_CONN and qos > 0):
            self._outgoing.add(info.mid, len(payload))  # held by paho until acknowledged
        else:
            log.warning("publish failed", extra={"topic": topic, "rc": info.rc})
        self._metrics.mqtt_sent.inc()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish ``offline`` (retained), wait for it to leave, disconnect."""
        self._stopping = True
        if self._fleet is not None:
            self._fleet.leave(timeout_s=1.0)
        if self.connected:
            info = self._client.publish(self._status_topic, b"offline", qos=1, retain=True)
            deadline = time.monotonic() + timeout_s
            while not info.is_published() and time.monotonic() < deadline and self.connected:
                time.sleep(0.01)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._metrics.mqtt_connected.set(0)

    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if getattr(reason_code, "is_failure", False):
            log.error("broker refused the connection", extra={"reason": str(reason_code)})
            return
        self._connections += 1
        if self._connections > 1:
            self._metrics.mqtt_reconnects.inc()
        if self._fleet_topics and getattr(flags, "session_present", False):
            # a session kept from before the fleet had its own may still hold the share
            client.unsubscribe(self._fleet_topics)
        client.publish(self._status_topic, b"online", qos=1, retain=True)
        if not self._subscriptions:
            self._mark_ready()
            return
        # one SUBSCRIBE for every topic: ready (start() returns) once the broker acknowledged
        # it, so that nothing published right after start() can miss the subscription
        _, self._subscribe_mid = client.subscribe([(topic, 1) for topic in self._subscriptions])

    def _handle_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        if mid == self._subscribe_mid:
            self._mark_ready()

    def _mark_ready(self) -> None:
        self._connected.set()
        self._metrics.mqtt_connected.set(1)
        log.info("connected to broker", extra={"host": self._settings.host,
                                                "port": self._settings.port,
                                                "subscriptions": self._subscriptions})

    def _handle_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._connected.clear()
        self._metrics.mqtt_connected.set(0)
        expected = self._stopping and not getattr(reason_code, "is_failure", False)
        log.log(logging.INFO if expected else logging.WARNING, "disconnected from broker",
                extra={"reason": str(reason_code)})

    def _handle_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        self._outgoing.done(mid)

    def _handle_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._metrics.mqtt_received.inc()
        properties = getattr(message, "properties", None)
        inbound = InboundMessage(
            topic=message.topic,
            payload=bytes(message.payload),
            response_topic=getattr(properties, "ResponseTopic", None) if properties else None,
            correlation_data=getattr(properties, "CorrelationData", None) if properties else None,
            received_at=time.perf_counter(),
        )
        if self._redeliveries.seen_before(inbound, dup=bool(message.dup)):
            self._metrics.mqtt_redeliveries.inc()
            log.info("dropped a redelivered message that was already handled",
                     extra={"topic": message.topic})
            return
        try:
            self._on_message(inbound)
        except Exception:  # nothing a device sends may kill the network thread
            log.exception("unhandled error in message handler", extra={"topic": message.topic})


ConnectProperties = Callable[[int], Properties]


class FleetSession:
    """The fleet's shared subscription on its own clean session (expiry 0).

    The node's own session is persistent so that requests addressed to this node wait for it
    across a restart; the fleet's requests must not: another node can answer them. With the
    share on a clean session, a node that leaves (drain, crash, kill -9) stops receiving fleet
    requests as soon as the broker sees it go, and nothing is queued for it afterwards.
    """

    def __init__(self, settings: BrokerSettings, client_id: str, topics: Sequence[str],
                 on_message: Callable[[paho.Client, Any, paho.MQTTMessage], None],
                 properties: ConnectProperties) -> None:
        self._settings = settings
        self._topics = list(topics)
        self._properties = properties
        self._left = threading.Event()
        self._unsubscribed = threading.Event()
        self._client = make_client(settings, client_id)
        self._client.on_connect = self._handle_connect
        self._client.on_message = on_message
        self._client.on_unsubscribe = lambda *_: self._unsubscribed.set()

    def start(self) -> None:
        s = self._settings
        if s.protocol == "5":
            self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=True,
                                       properties=self._properties(0))
        else:
            self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client.loop_start()

    def leave(self, timeout_s: float) -> None:
        """Unsubscribe (waiting for the broker's UNSUBACK), then disconnect. Idempotent."""
        if self._left.is_set():
            return
        self._left.set()
        if self._client.is_connected():
            self._client.unsubscribe(self._topics)
            self._unsubscribed.wait(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        log.info("left the fleet queue", extra={"subscriptions": self._topics})

    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if getattr(reason_code, "is_failure", False):
            log.error("broker refused the fleet session", extra={"reason": str(reason_code)})
        elif not self._left.is_set():
            for topic in self._topics:
                client.subscribe(topic, qos=1)
