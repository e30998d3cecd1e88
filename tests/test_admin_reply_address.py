"""The admin topics answer where the supervisor would: one reply-address rule for both, and
a `busy` answer that keeps the command's `reply_to` and `request_id`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.admin import AdminDispatcher, Source
from appliance.admin_topics import MAX_WAITING_COMMANDS, AdminTopicHandler
from appliance.cache.store import CacheStore
from appliance.mqtt import InboundMessage
from appliance.topics import Topics

TOPICS = Topics(base="audiogen", node="n1", share_group="")


@dataclass
class Sent:
    topic: str
    body: dict[str, Any]
    correlation_data: bytes | None


class Recorder:
    """The publisher side of the handler: what it would put on the wire."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.changed = threading.Condition()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                correlation_data: bytes | None = None, qos: int = 1) -> None:
        with self.changed:
            self.sent.append(Sent(topic, json.loads(payload), correlation_data))
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[Sent]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.sent) >= count)
            return list(self.sent)


class GatedDispatcher(AdminDispatcher):
    """The real dispatcher, held at the gate so that commands pile up behind it."""

    def __init__(self, store: CacheStore) -> None:
        super().__init__(store)
        self.gate = threading.Event()

    def dispatch(self, command: str, args: Mapping[str, Any], *, source: Source,
                 client_id: str | None = None) -> dict[str, Any]:
        self.gate.wait()
        return super().dispatch(command, args, source=source, client_id=client_id)


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[AdminTopicHandler, GatedDispatcher, Recorder]]:
    dispatcher = GatedDispatcher(CacheStore(tmp_path / "cache"))
    recorder = Recorder()
    handler = AdminTopicHandler(dispatcher, recorder, TOPICS, max_payload_bytes=65536)
    yield handler, dispatcher, recorder
    dispatcher.gate.set()
    handler.close()


def _message(body: dict[str, Any], response_topic: str | None = None) -> InboundMessage:
    return InboundMessage(TOPICS.admin("stats"), json.dumps(body).encode(), response_topic,
                          b"c-1" if response_topic else None, 0.0)


def test_a_busy_admin_reply_goes_to_reply_to_and_names_the_request_id(
        admin: tuple[AdminTopicHandler, GatedDispatcher, Recorder]) -> None:
    handler, dispatcher, recorder = admin
    for n in range(MAX_WAITING_COMMANDS):  # the first runs (held at the gate), the rest wait
        handler.handle(_message({"request_id": f"q-{n}", "reply_to": "ops/replies/queued"}))
    handler.handle(_message({"request_id": "one-too-many", "reply_to": "ops/replies/late"}))
    [busy] = recorder.wait_for(1)
    assert busy.body["code"] == "busy"
    assert (busy.topic, busy.body["request_id"]) == ("ops/replies/late", "one-too-many")
    dispatcher.gate.set()
    replies = recorder.wait_for(1 + MAX_WAITING_COMMANDS)
    assert {r.topic for r in replies[1:]} == {"ops/replies/queued"}


@pytest.mark.parametrize(("response_topic", "reply_to", "field"), [
    (TOPICS.request, None, "response_topic"),
    (None, TOPICS.status, "reply_to"),
])
def test_admin_refuses_a_reply_address_naming_the_appliance_itself_as_the_supervisor_does(
        admin: tuple[AdminTopicHandler, GatedDispatcher, Recorder],
        response_topic: str | None, reply_to: str | None, field: str) -> None:
    handler, dispatcher, recorder = admin
    dispatcher.gate.set()
    body: dict[str, Any] = {"request_id": "r-1"}
    if reply_to is not None:
        body["reply_to"] = reply_to
    handler.handle(_message(body, response_topic))
    [reply] = recorder.wait_for(1)
    assert reply.topic == TOPICS.admin_reply("stats")  # never the appliance's own topic
    assert reply.body["code"] == "invalid_request" and reply.body["request_id"] == "r-1"
    assert reply.body["message"].startswith(f"{field}: names a topic of an appliance")
