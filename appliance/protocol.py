"""Request and reply messages of the MQTT API: parse, validate, serialise.

A request is a JSON object; unknown fields are rejected so that a typo in a device's
firmware shows up as an error instead of a silently ignored setting. Parameters a request
leaves out take the configured defaults (:func:`resolve_parameters`).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from appliance.audio import AUDIO_FORMATS, AudioFormat
from appliance.config import GenerationSettings
from appliance.errors import ApplianceError, InvalidRequest, PayloadTooLarge

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_TOPIC_BYTES = 1024
Number = StrictInt | StrictFloat


class InvalidJson(InvalidRequest):
    """The payload is not a UTF-8 JSON object."""

    code = "invalid_json"


class FieldError(InvalidRequest):
    """One named field of an otherwise well-formed request is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RequestMessage(BaseModel):
    """The JSON body of a generation request, exactly as a device may send it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: StrictStr
    duration_s: Number | None = None
    loop: StrictBool = False
    steps: StrictInt | None = None
    guidance_scale: Number | None = None
    candidates: StrictInt | None = None
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    force: StrictBool = False
    deliver: Literal["url", "mqtt", "both"] = "url"
    format: AudioFormat = "wav"
    model: StrictStr | None = None
    request_id: StrictStr | None = None
    reply_to: StrictStr | None = None


@dataclass(frozen=True)
class GenerationParameters:
    """A request with every default filled in and every limit checked."""

    prompt: str
    duration_s: float
    loop: bool
    steps: int
    guidance_scale: float
    candidates: int
    seed: int | None
    model: str = ""  # the generator's name; "" until the supervisor resolves it


@dataclass(frozen=True)
class Request:
    """A validated request: what to generate, and how to answer."""

    request_id: str
    params: GenerationParameters
    force: bool
    deliver: Literal["url", "mqtt", "both"]
    audio_format: AudioFormat


def new_request_id() -> str:
    return uuid.uuid4().hex


def check_payload_size(payload: bytes, max_bytes: int) -> None:
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"payload is {len(payload)} bytes; the limit is {max_bytes}")


def decode_json_object(payload: bytes) -> dict[str, Any]:
    """Decode a UTF-8 JSON object, rejecting NaN/Infinity and duplicate keys."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError as exc:
        raise InvalidJson("payload is nested too deeply") from exc
    except ValueError as exc:
        raise InvalidJson(f"payload is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidJson(f"payload must be a JSON object, not {type(value).__name__}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def salvage_reply_fields(payload: bytes) -> tuple[str | None, str | None]:
    """Best-effort ``(request_id, reply_to)`` from a payload that failed validation.

    Lets an invalid request still be answered where it said where to.
    """
    try:
        data = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    request_id = data.get("request_id")
    reply_to = data.get("reply_to")
    request_id = request_id if isinstance(request_id, str) and _REQUEST_ID.match(request_id) else None
    reply_to = reply_to if isinstance(reply_to, str) and is_valid_publish_topic(reply_to) else None
    return request_id, reply_to


def is_valid_publish_topic(topic: str) -> bool:
    return (
        0 < len(topic.encode("utf-8")) <= MAX_TOPIC_BYTES
        and not any(c in topic for c in "#+\0")
        and not topic.startswith("$")
    )


def parse_request(payload: bytes, max_bytes: int) -> RequestMessage:
    """Parse a request payload; raises a typed InvalidRequest subclass on any problem."""
    check_payload_size(payload, max_bytes)
    data = decode_json_object(payload)
    try:
        message = RequestMessage.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "request"
        kind = first["type"]
        if kind == "extra_forbidden":
            raise FieldError(field, "unknown field") from exc
        if kind == "missing":
            raise FieldError(field, "is required") from exc
        if field == "format":
            raise FieldError(field, f"must be one of {', '.join(AUDIO_FORMATS)}") from exc
        if len(first["loc"]) > 1:  # a union (int | float) reports one error per member
            raise FieldError(field, "must be a number") from exc
        raise FieldError(field, first["msg"]) from exc
    if message.request_id is not None and not _REQUEST_ID.match(message.request_id):
        raise FieldError("request_id", "must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    if message.reply_to is not None and not is_valid_publish_topic(message.reply_to):
        raise FieldError("reply_to", "must be a topic without wildcards, '$' prefix or NUL")
    return message


def resolve_parameters(message: RequestMessage, limits: GenerationSettings) -> Request:
    """Fill defaults from the configuration and check every limit."""
    prompt = " ".join(message.prompt.split())
    if not prompt:
        raise FieldError("prompt", "must not be empty")
    if len(prompt) > limits.max_prompt_chars:
        raise FieldError("prompt", f"is longer than {limits.max_prompt_chars} characters")
    if any(ord(c) < 32 for c in prompt):
        raise FieldError("prompt", "must not contain control characters")
    duration = _number("duration_s", message.duration_s, limits.default_duration_s)
    if not 0 < duration <= limits.max_duration_s:
        raise FieldError("duration_s", f"must be > 0 and <= {limits.max_duration_s}")
    steps = message.steps if message.steps is not None else limits.default_steps
    if not 1 <= steps <= limits.max_steps:
        raise FieldError("steps", f"must be between 1 and {limits.max_steps}")
    guidance = _number("guidance_scale", message.guidance_scale, limits.default_guidance_scale)
    if not 0 <= guidance <= limits.max_guidance_scale:
        raise FieldError("guidance_scale", f"must be between 0 and {limits.max_guidance_scale}")
    candidates = message.candidates if message.candidates is not None else 1
    if not 1 <= candidates <= limits.max_candidates:
        raise FieldError("candidates", f"must be between 1 and {limits.max_candidates}")
    params = GenerationParameters(
        prompt=prompt,
        duration_s=round(duration, 3),
        loop=message.loop,
        steps=steps,
        guidance_scale=guidance,
        candidates=candidates,
        seed=message.seed,
    )
    return Request(
        request_id=message.request_id or new_request_id(),
        params=params,
        force=message.force,
        deliver=message.deliver,
        audio_format=message.format,
    )


def _number(field: str, value: float | None, default: float) -> float:
    result = float(default if value is None else value)
    if not math.isfinite(result):
        raise FieldError(field, "must be a finite number")
    return result


def error_reply(request_id: str | None, error: ApplianceError) -> dict[str, Any]:
    """The JSON body answering a request that could not be served."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "status": "error",
        "code": error.code,
        "message": error.message,
    }
    if isinstance(error, FieldError):
        body["field"] = error.field
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
