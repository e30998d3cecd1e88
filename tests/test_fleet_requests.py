"""The fleet request journal on a real PostgreSQL, without appliance processes (fast)."""

from __future__ import annotations

import queue
import time

import psycopg

from appliance.fleet_requests import FleetRequests
from appliance.mqtt import InboundMessage
from appliance.topics import Topics
from tests.test_pg_sync import wait_for


class _Sent:
    """A publisher that keeps what it was given."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                correlation_data: bytes | None = None, qos: int = 1) -> None:
        self.topics.append(topic)


def _journaled(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT owner, reply_topic FROM fleet_requests ORDER BY id").fetchall()
    return [(str(owner), str(topic)) for owner, topic in rows]


def _request(prompt: str) -> InboundMessage:
    return InboundMessage("audiogen/request", f'{{"prompt": "{prompt}"}}'.encode(), f"dev/{prompt}",
                          prompt.encode(), time.perf_counter())


def test_unanswered_fleet_requests_of_a_silent_node_are_served_by_another(postgres_dsn: str) -> None:
    offered: queue.Queue[InboundMessage] = queue.Queue()
    a = FleetRequests(postgres_dsn, Topics("audiogen", "node-a", "fleet"), lambda m: None)
    b = FleetRequests(postgres_dsn, Topics("audiogen", "node-b", "fleet"), offered.put)
    a.start()
    b.start()
    try:
        wait_for(lambda: a.connected and b.connected, 30)
        sent_a = a.publisher(_Sent())

        def hit(message: InboundMessage) -> None:  # answered inside the handler: never journaled
            assert message.response_topic is not None
            sent_a.publish(message.response_topic, b"{}", correlation_data=message.correlation_data)

        a.dispatcher(hit)(_request("rain"))
        a.dispatcher(lambda m: None)(_request("storm"))  # a miss: answered later, or never
        a.dispatcher(lambda m: None)(_request("wind"))
        sent_a.publish("dev/wind", b"{}", correlation_data=b"wind")  # wind's reply: its row goes
        hail = b'{"prompt": "hail", "request_id": "r-1"}'
        named = InboundMessage("audiogen/request", hail, None, None, 0.0)
        a.dispatcher(lambda m: None)(named)  # answered on the reply topic of the node serving it
        assert _journaled(postgres_dsn) == [("node-a", "dev/storm"), ("node-a", "audiogen/node-a/reply/r-1")]

        a.close()  # silent from now on, as a node killed with -9 is
        taken = [offered.get(timeout=30), offered.get(timeout=30)]
        assert (taken[0].topic, taken[0].response_topic, taken[0].correlation_data) == (
            "audiogen/request", "dev/storm", b"storm")
        assert taken[0].payload == b'{"prompt": "storm"}'
        assert (taken[1].payload, taken[1].response_topic, taken[1].correlation_data) == (hail, None, None)
        assert [owner for owner, _ in _journaled(postgres_dsn)] == ["node-b", "node-b"] and b.handed_over == 2
        b.dispatcher(lambda m: None)(taken[1])  # b's intake: journaled already, not again
        sent_b = b.publisher(_Sent())
        sent_b.publish("dev/storm", b"{}", correlation_data=b"storm")
        sent_b.publish("audiogen/node-b/reply/r-1", b"{}")
        assert _journaled(postgres_dsn) == []
        assert offered.empty()
    finally:
        a.close()
        b.close()
