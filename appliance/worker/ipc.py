"""Framing of the messages between the supervisor and a worker subprocess.

A frame is an 8-byte header (big-endian lengths of the JSON part and of the binary part),
a UTF-8 JSON object, then raw bytes (PCM audio for results, empty otherwise). No pickles:
a worker that crashes mid-frame leaves a truncated frame, which the reader reports as
:class:`ChannelClosed` instead of deserialising garbage.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import IO, Any

_HEADER = struct.Struct(">II")
MAX_JSON_BYTES = 1024 * 1024
MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024


class ChannelClosed(Exception):
    """The other side closed the pipe (or died) before a whole frame arrived."""


class ProtocolViolation(Exception):
    """A frame arrived that cannot be a valid frame."""


@dataclass(frozen=True)
class Frame:
    """One message: a JSON header (always with ``type``) and an optional binary payload."""

    header: dict[str, Any]
    payload: bytes = field(default=b"", repr=False)

    @property
    def type(self) -> str:
        return str(self.header.get("type", ""))


def write_frame(stream: IO[bytes], frame: Frame) -> None:
    """Write one frame and flush it; raises ChannelClosed if the reader is gone."""
    body = json.dumps(frame.header, separators=(",", ":")).encode("utf-8")
    try:
        stream.write(_HEADER.pack(len(body), len(frame.payload)))
        stream.write(body)
        if frame.payload:
            stream.write(frame.payload)
        stream.flush()
    except (BrokenPipeError, ValueError, OSError) as exc:
        raise ChannelClosed(str(exc)) from exc


def read_frame(stream: IO[bytes]) -> Frame:
    """Read one whole frame; raises ChannelClosed at end of stream."""
    json_len, payload_len = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    if json_len > MAX_JSON_BYTES or payload_len > MAX_PAYLOAD_BYTES:
        raise ProtocolViolation(f"frame too large: {json_len} + {payload_len} bytes")
    try:
        header = json.loads(_read_exactly(stream, json_len))
    except ValueError as exc:
        raise ProtocolViolation(f"frame header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolViolation("frame header must be an object with a string 'type'")
    payload = _read_exactly(stream, payload_len) if payload_len else b""
    return Frame(header, payload)


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise ChannelClosed(f"stream ended with {remaining} of {size} bytes missing")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
