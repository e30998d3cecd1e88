"""The redelivery filter: a DUP copy of a handled message is dropped, a deliberate repeat is not."""

from __future__ import annotations

from appliance.mqtt import InboundMessage, RedeliveryFilter


def _message(payload: bytes, correlation: bytes | None = b"c-1") -> InboundMessage:
    return InboundMessage("audiogen/n/request", payload, "dev/replies", correlation, 0.0)


def test_dup_copy_of_a_handled_message_is_recognised() -> None:
    seen = RedeliveryFilter()
    assert not seen.seen_before(_message(b'{"prompt": "rain"}'), dup=False)
    assert seen.seen_before(_message(b'{"prompt": "rain"}'), dup=True)


def test_repeats_without_dup_and_dups_of_unseen_messages_are_handled() -> None:
    seen = RedeliveryFilter()
    assert not seen.seen_before(_message(b'{"prompt": "rain"}'), dup=False)
    assert not seen.seen_before(_message(b'{"prompt": "rain"}'), dup=False), "a device may repeat itself"
    assert not seen.seen_before(_message(b'{"prompt": "snow"}'), dup=True), "first copy arrived as DUP"
    assert not seen.seen_before(_message(b'{"prompt": "rain"}', b"c-2"), dup=True), "other correlation"


def test_memory_is_bounded() -> None:
    seen = RedeliveryFilter(capacity=2)
    for payload in (b"a", b"b", b"c"):
        seen.seen_before(_message(payload), dup=False)
    assert not seen.seen_before(_message(b"a"), dup=True), "the oldest fingerprint was forgotten"
    assert seen.seen_before(_message(b"c"), dup=True)
