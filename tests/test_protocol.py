from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import GenerationSettings
from appliance.errors import InvalidRequest, PayloadTooLarge
from appliance.protocol import (
    FieldError,
    InvalidJson,
    error_reply,
    parse_request,
    resolve_parameters,
    salvage_reply_fields,
)

LIMITS = GenerationSettings()


def parse(body: object, max_bytes: int = 65536):  # type: ignore[no-untyped-def]
    return resolve_parameters(parse_request(json.dumps(body).encode(), max_bytes), LIMITS)


def test_defaults_come_from_configuration() -> None:
    request = parse({"prompt": "  rain   on a roof "})
    assert request.params.prompt == "rain on a roof"
    assert request.params.duration_s == LIMITS.default_duration_s
    assert request.params.steps == LIMITS.default_steps
    assert request.params.guidance_scale == LIMITS.default_guidance_scale
    assert request.params.candidates == 1 and request.params.loop is False
    assert request.deliver == "url" and len(request.request_id) == 32


def test_integer_duration_and_guidance_are_accepted() -> None:
    request = parse({"prompt": "x", "duration_s": 4, "guidance_scale": 1, "request_id": "a:b-1"})
    assert request.params.duration_s == 4.0 and request.request_id == "a:b-1"


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_request(b"{" + b" " * 100 + b"}", max_bytes=50)


def test_error_reply_names_the_field() -> None:
    with pytest.raises(FieldError) as info:
        parse({"prompt": "x", "steps": 0})
    body = error_reply("r1", info.value)
    assert body["code"] == "invalid_request" and body["field"] == "steps"
    assert body["request_id"] == "r1" and body["status"] == "error"


def test_salvage_finds_reply_fields_of_an_invalid_request() -> None:
    assert salvage_reply_fields(b'{"prompt": 5, "request_id": "r-1", "reply_to": "d/1"}') == ("r-1", "d/1")
    assert salvage_reply_fields(b'{"request_id": "bad id", "reply_to": "d/#"}') == (None, None)
    assert salvage_reply_fields(b"garbage") == (None, None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children,
                                                                      max_size=5),
    max_leaves=20,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "prompt": json_values | st.text(max_size=600),
        "duration_s": json_values,
        "steps": json_values,
        "guidance_scale": json_values,
        "candidates": json_values,
        "loop": json_values,
        "seed": json_values,
        "deliver": json_values | st.sampled_from(["url", "mqtt", "both"]),
        "request_id": json_values,
        "reply_to": json_values,
        "extra": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_either_parse_or_raise_invalid_request(payload: bytes) -> None:
    try:
        resolve_parameters(parse_request(payload, 65536), LIMITS)
    except InvalidRequest as error:
        assert error.code in ("invalid_json", "invalid_request", "payload_too_large")


@settings(max_examples=600, deadline=None)
@given(request_like)
def test_request_shaped_json_either_resolves_within_limits_or_raises_invalid_request(
    body: dict[str, object],
) -> None:
    try:
        payload = json.dumps(body).encode()
    except ValueError:
        return
    try:
        request = resolve_parameters(parse_request(payload, 65536), LIMITS)
    except InvalidJson:
        return
    except InvalidRequest as error:
        assert error.code == "invalid_request"
        if isinstance(error, FieldError):
            assert error.field in body or error.field == "prompt"
        return
    params = request.params
    assert 0 < params.duration_s <= LIMITS.max_duration_s
    assert 1 <= params.steps <= LIMITS.max_steps
    assert 1 <= params.candidates <= LIMITS.max_candidates
    assert 0 < len(params.prompt) <= LIMITS.max_prompt_chars
