"""The admin topics of the running service: same commands as the CLI, confirm over MQTT."""

from __future__ import annotations

import json

from appliance.client import RequestClient
from tests.conftest import Broker, Service
from tests.mqtt_helpers import RawClient


def _generate(service: Service, broker: Broker, prompt: str) -> dict[str, object]:
    client = RequestClient(broker.settings(), service.topics)
    client.connect()
    try:
        reply = client.request({"prompt": prompt, "duration_s": 2}, timeout_s=120)
    finally:
        client.close()
    assert reply.body["status"] == "ok", reply.body
    return reply.body


def test_admin_commands_over_mqtt_need_confirm_and_the_service_sees_the_change(
    service: Service, broker: Broker
) -> None:
    first = _generate(service, broker, "a kettle whistling")
    assert first["cached"] is False
    admin = service.topics.admin
    ops = RawClient(broker.host, broker.port, "ops/replies/#")
    try:
        ops.publish(admin("stats"), b"{}", response_topic="ops/replies/stats", correlation_data=b"s-1")
        stats = ops.next()
        assert stats.correlation_data == b"s-1"
        assert stats.json()["status"] == "ok" and stats.json()["items"] == 1

        ops.publish(admin("clear"), json.dumps({"client_id": "ops-console"}),
                    response_topic="ops/replies/clear")
        preview = ops.next().json()
        assert preview["status"] == "ok" and preview["dry_run"] is True
        assert preview["confirm_required"] is True and preview["removed_count"] == 1

        ops.publish(admin("clear"), json.dumps({"confirm": True, "request_id": "wipe-1"}),
                    response_topic="ops/replies/clear")
        done = ops.next().json()
        assert done["request_id"] == "wipe-1" and done["dry_run"] is False
        assert (done["before_items"], done["after_items"]) == (1, 0)

        ops.publish(admin("export"), json.dumps({"key": first["key"], "out": "/tmp/x.wav"}),
                    response_topic="ops/replies/export")
        refused = ops.next().json()
        assert refused["status"] == "error" and refused["code"] == "invalid_request"

        ops.publish(admin("stats"), b"[1, 2", response_topic="ops/replies/bad")
        bad = ops.next().json()
        assert bad["status"] == "error" and bad["code"] == "invalid_json"

        ops.publish(admin("no-such-command"), b"{}", response_topic="ops/replies/unknown")
        unknown = ops.next().json()
        assert unknown["code"] == "invalid_request" and "stats" in unknown["message"]
    finally:
        ops.close()

    again = _generate(service, broker, "a kettle whistling")
    assert again["cached"] is False, "the cleared item must not be served any more"
    _, metrics = service.http_bytes("/metrics")
    assert b"audiogen_cache_items 1.0" in metrics


def test_admin_reply_without_response_topic_goes_to_the_admin_reply_topic(
    service: Service, broker: Broker
) -> None:
    reply_topic = service.topics.admin_reply("list")
    ops = RawClient(broker.host, broker.port, reply_topic, protocol=4)
    try:
        ops.publish(service.topics.admin("list"), json.dumps({"limit": 5, "request_id": "l-1"}))
        body = ops.next().json()
    finally:
        ops.close()
    assert body["request_id"] == "l-1" and body["status"] == "ok" and body["items"] == []
