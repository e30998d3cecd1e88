"""Hostile input: the parser and every admin command under adversarial data; rate limits.

Property tests (hypothesis) run well over 10,000 examples in all; each input must end in a
result or a typed ApplianceError with a stable code, never another exception. The last
tests send hostile payloads through the real broker to the real service.
"""

from __future__ import annotations

import json
import string
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.admin import COMMANDS, AdminDispatcher
from appliance.cache.keys import exact_key, new_item_key
from appliance.cache.store import CacheItem, CacheStore
from appliance.config import GenerationSettings
from appliance.errors import ApplianceError, InvalidRequest, NotFound
from appliance.protocol import parse_request, resolve_parameters
from appliance.ratelimit import RateLimiter
from testkit.services import ServiceProcess, service_sections
from tests.conftest import Broker, Service
from tests.mqtt_helpers import RawClient

LIMITS = GenerationSettings()
MAX_PAYLOAD = 65536
REQUEST_CODES = {"invalid_json", "invalid_request", "payload_too_large"}

edgy_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Z", "C")), max_size=80,
) | st.sampled_from([
    "\u202egnp.exe", "a\u0000b", "\ufeffrain", "e\u0301" * 50, "\U0001f30a" * 100, "\u200b" * 10,
    "../../etc/passwd", "$share/x/y", "#", "+", "a/+/b", " " * 600, "x" * 10_000,
])
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | edgy_text)
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(edgy_text, children, max_size=4),
    max_leaves=15,
)
FIELDS = ["prompt", "duration_s", "loop", "steps", "guidance_scale", "candidates", "seed", "force",
          "deliver", "format", "request_id", "reply_to"]


def _payload(value: Any) -> bytes:
    # allow_nan: NaN / Infinity literals are exactly what a hostile device would send
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def _parse(payload: bytes) -> None:
    try:
        resolve_parameters(parse_request(payload, MAX_PAYLOAD), LIMITS)
    except ApplianceError as error:
        assert error.code in REQUEST_CODES, error.code


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_parse_or_fail_with_a_request_code(payload: bytes) -> None:
    _parse(payload)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS) | edgy_text, json_like, max_size=8))
def test_request_shaped_objects_parse_or_fail_with_a_request_code(body: dict[str, Any]) -> None:
    _parse(_payload(body))


@settings(max_examples=1000, deadline=None)
@given(json_like)
def test_any_json_value_parses_or_fails_with_a_request_code(value: Any) -> None:
    _parse(_payload(value))


@pytest.mark.parametrize("payload", [
    b"[" * 60_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000, b'{"prompt": "' + b"x" * 70_000 + b'"}',
    b'{"prompt": "rain", "duration_s": NaN}', b'{"prompt": "rain", "duration_s": Infinity}',
    b'{"prompt": "rain", "steps": 1e400}', b'{"prompt": "rain", "seed": 123456789012345678901234567890}',
    b'{"prompt": "\\ud800"}', b'{"prompt": "rain", "prompt": "snow"}', b"\xff\xfe\x00\x00",
    b'{"prompt": "rain"}' + b" " * 70_000, "{\"prompt\": \"\u202erain\"}".encode(),
])
def test_adversarial_payloads_fail_cleanly(payload: bytes) -> None:
    started = time.perf_counter()
    _parse(payload)
    assert time.perf_counter() - started < 5.0, "parsing must stay cheap whatever arrives"


# --- every admin command, as over MQTT -------------------------------------------------------

@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> AdminDispatcher:
    store = CacheStore(tmp_path_factory.mktemp("hostile-cache"))
    for index, prompt in enumerate(["rain on a roof", "a dog barking", "aaaaaaaaaaaaaaaaaaaaaaaa!"]):
        item = CacheItem(
            key=new_item_key(), exact_key=exact_key(prompt, model="m", duration_s=2.0, loop=False),
            prompt=prompt, model="m", duration_s=2.0, requested_duration_s=2.0, is_loop=False, steps=4,
            guidance_scale=4.5, candidates=1, seed=None, sample_rate=44100, channels=2,
            audio_format="wav", audio_bytes=0, generation_timestamp=time.time() - index, generation_s=0.1,
        )
        store.put(item, b"RIFF" + bytes(100), max_items=100, max_bytes=10**9,
                  prompt_vector=np.eye(8, dtype=np.float32)[index])
    return AdminDispatcher(store)


ADMIN_ARGS = ["top", "sort", "descending", "limit", "prompt", "pattern", "ignore_case", "model", "loop",
              "min_clap", "max_clap", "key", "out", "overwrite", "older_than_days", "by", "threshold",
              "audio_threshold", "remove", "dry_run", "confirm"]
regexes = st.sampled_from(["(a+)+$", "(a|a)*$", "([a-z]+)*!$", "(.*a){25}", "\\", "[", "(?<=a+)b",
                           "a{999999999}", "(?P<x>a)(?P=x)" * 50]) | st.text(string.printable, max_size=40)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([*COMMANDS, "../stats", "", "x" * 300]),
       st.dictionaries(st.sampled_from(ADMIN_ARGS) | edgy_text, json_like | regexes, max_size=5))
def test_every_admin_command_answers_or_fails_with_a_code(
    admin: AdminDispatcher, command: str, args: dict[str, Any]
) -> None:
    args.pop("confirm", None)  # never destroy the fixture: MQTT without confirm is a dry run
    started = time.perf_counter()
    try:
        result = admin.dispatch(command, args, source="mqtt", client_id="fuzz")
    except (InvalidRequest, NotFound):
        pass
    else:
        assert result["command"] == command
        json.dumps(result)  # the reply must be serialisable
    assert time.perf_counter() - started < 5.0, f"{command} {args!r} took too long"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(regexes)
def test_remove_pattern_with_any_regex_is_bounded(admin: AdminDispatcher, pattern: str) -> None:
    started = time.perf_counter()
    try:
        result = admin.dispatch("remove-pattern", {"pattern": pattern}, source="mqtt")
        assert result["dry_run"] is True
    except InvalidRequest:
        pass
    assert time.perf_counter() - started < 5.0


# --- the rate limiter -----------------------------------------------------------------------

def test_rate_limiter_allows_the_burst_then_the_rate_and_forgets_old_clients() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0], max_clients=2)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert [limiter.allow("a"), limiter.allow("a")] == [True, False]
    assert limiter.allow("b") and limiter.allow("c")
    assert limiter.tracked() == 2  # "a" forgotten: bounded memory
    assert RateLimiter(0, 1).allow("anyone")


# --- through the real service ---------------------------------------------------------------

def test_hostile_payloads_over_mqtt_are_each_answered_and_the_service_keeps_serving(
    service: Service, broker: Broker
) -> None:
    payloads = [
        b"[" * 60_000, b'{"prompt": "rain", "duration_s": NaN}', b"\xff\xfe", b'{"prompt": "\\ud800"}',
        b'{"prompt": "' + b"x" * 70_000 + b'"}', b'{"prompt": "rain", "reply_to": "#"}',
        b'{"prompt": "rain", "reply_to": "$SYS/x"}', b'{"prompt": "rain", "steps": 1e400}',
        json.dumps({"prompt": "rain", "reply_to": service.topics.request}).encode(),
        json.dumps({"prompt": "a" * 501}).encode(), json.dumps({"prompt": "\u202e\u200b"}).encode(),
    ]
    device = RawClient(broker.host, broker.port, "hostile/replies/#")
    status = RawClient(broker.host, broker.port, service.topics.status)
    try:
        assert status.next(timeout_s=5).payload == b"online"
        # a Response Topic naming the appliance's own status topic must not be published to
        device.publish(service.topics.request, json.dumps({"prompt": "x", "request_id": "spoof"}),
                       response_topic=service.topics.status)
        for index, payload in enumerate(payloads):
            device.publish(service.topics.request, payload, response_topic=f"hostile/replies/{index}")
        replies = {device.next(timeout_s=30).topic: None for _ in payloads}
        good = json.dumps({"prompt": "a calm sea", "duration_s": 1})
        device.publish(service.topics.request, good, response_topic="hostile/replies/good")
        answer = device.next(timeout_s=120)
        assert status.messages.empty(), f"published on the status topic: {status.next().payload[:100]!r}"
    finally:
        device.close()
        status.close()
    assert sorted(replies) == sorted(f"hostile/replies/{i}" for i in range(len(payloads)))
    assert answer.topic == "hostile/replies/good" and answer.json()["status"] == "ok"


def test_a_client_over_its_rate_limit_gets_busy_and_others_are_served(
    tmp_path: Path, broker: Broker, models_dir: Path
) -> None:
    sections = service_sections(tmp_path, broker, models_dir)
    sections["requests"] = {"rate_limit_per_s": 1.0, "rate_limit_burst": 3}
    service = ServiceProcess.start(tmp_path, sections)
    noisy = RawClient(broker.host, broker.port, "noisy/#")
    quiet = RawClient(broker.host, broker.port, "quiet/#")
    try:
        service.wait_ready()
        body = json.dumps({"prompt": "a click", "duration_s": 1, "steps": 1})
        for _ in range(6):
            noisy.publish(service.topics.request, body, response_topic="noisy/replies")
        codes = [str(noisy.next(timeout_s=60).json().get("code", "ok")) for _ in range(6)]
        quiet.publish(service.topics.request, body, response_topic="quiet/replies")
        other = quiet.next(timeout_s=60).json()
    finally:
        noisy.close()
        quiet.close()
        service.stop()
    assert codes.count("ok") >= 3 and codes.count("busy") >= 2, codes
    assert set(codes) == {"ok", "busy"}, codes
    assert other["status"] == "ok", "one noisy client must not use up another's budget"
