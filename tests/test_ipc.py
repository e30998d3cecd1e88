from __future__ import annotations

import io

import pytest

from appliance.worker.ipc import ChannelClosed, Frame, ProtocolViolation, read_frame, write_frame


def test_frames_round_trip_with_binary_payload() -> None:
    stream = io.BytesIO()
    write_frame(stream, Frame({"type": "result", "id": "a"}, b"\x00\x01" * 1000))
    write_frame(stream, Frame({"type": "progress", "step": 1}))
    stream.seek(0)
    first, second = read_frame(stream), read_frame(stream)
    assert first.type == "result" and first.payload == b"\x00\x01" * 1000
    assert second.header == {"type": "progress", "step": 1} and second.payload == b""


def test_truncated_frame_is_channel_closed() -> None:
    stream = io.BytesIO()
    write_frame(stream, Frame({"type": "result"}, b"x" * 100))
    truncated = io.BytesIO(stream.getvalue()[:-10])
    with pytest.raises(ChannelClosed):
        read_frame(truncated)
    with pytest.raises(ChannelClosed):
        read_frame(io.BytesIO(b""))


def test_garbage_header_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        read_frame(io.BytesIO(b"\x00\x00\x00\x03\x00\x00\x00\x00abc"))
    with pytest.raises(ProtocolViolation):
        read_frame(io.BytesIO(b"\xff\xff\xff\xff\x00\x00\x00\x00"))
