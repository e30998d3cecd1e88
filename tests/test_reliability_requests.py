"""Faults on the request path found by review (issue 11 item 8), each placed exactly.

The supervisor runs in the test process with a real LMDB cache in a temp dir and the real
metrics; the worker pool is replaced by futures the test resolves, and the publisher records
what would go on the wire, so that a failure can be put between two given steps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from appliance.admin import AdminDispatcher
from appliance.admin_topics import MAX_WAITING_COMMANDS, AdminTopicHandler
from appliance.cache.prompt_vectors import PromptVectors
from appliance.cache.reuse import ReuseJudge
from appliance.cache.semantic import SemanticCache
from appliance.cache.store import CacheItem, CacheStore, PutResult
from appliance.config import Settings
from appliance.metrics import Metrics
from appliance.mqtt import InboundMessage
from appliance.supervisor import Supervisor
from appliance.topics import Topics
from appliance.worker.client import GenerationResult

MODEL = "tiny-test"
TOPICS = Topics(base="audiogen", node="n1")


@dataclass
class Sent:
    topic: str
    payload: bytes

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.payload))


class Recorder:
    """The publisher: records what it sends; a topic in ``failing`` raises, as a broken
    connection or a bad topic would."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.failing: set[str] = set()
        self._changed = threading.Condition()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                correlation_data: bytes | None = None, qos: int = 1) -> None:
        if topic in self.failing:
            raise OSError(f"cannot publish to {topic}")
        with self._changed:
            self.sent.append(Sent(topic, payload))
            self._changed.notify_all()

    def replies(self, topic: str) -> list[dict[str, Any]]:
        return [sent.body for sent in self.sent if sent.topic == topic]

    def wait_for_reply(self, topic: str) -> dict[str, Any]:
        with self._changed:
            self._changed.wait_for(lambda: bool(self.replies(topic)), timeout=30)
        [reply] = self.replies(topic)
        return reply


class Pool:
    """Generations the test completes by hand."""

    def __init__(self) -> None:
        self.futures: list[Future[GenerationResult]] = []

    def submit(self, request_id: str, params: Any, on_progress: Any = None) -> Future[GenerationResult]:
        future: Future[GenerationResult] = Future()
        self.futures.append(future)
        return future

    @staticmethod
    def complete(future: Future[GenerationResult]) -> None:
        waveform = np.zeros((2, 4410), dtype=np.float32)
        future.set_result(GenerationResult(waveform=waveform, sample_rate=44100, generation_s=0.1,
                                           model=MODEL, worker="cpu", gpu="cpu"))


class SlowCache(CacheStore):
    """A real cache whose writes wait for the test (a slow disk, a busy LMDB writer)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.writing = threading.Event()
        self.release = threading.Event()

    def put(self, *args: Any, **kwargs: Any) -> PutResult:
        self.writing.set()
        self.release.wait(30)
        return super().put(*args, **kwargs)


class EvictingCache(CacheStore):
    """A real cache in which another process evicts an item just as its audio is read."""

    def read_audio(self, item: CacheItem) -> bytes:
        self.delete([item.key])
        return super().read_audio(item)


@dataclass
class Rig:
    supervisor: Supervisor
    pool: Pool
    wire: Recorder
    cache: CacheStore


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(cache_type: type[CacheStore] = CacheStore) -> Rig:
        cache = cache_type(tmp_path / f"cache-{len(rigs)}")
        settings = Settings.model_validate({"node": {"id": "n1"}, "broker": {"embedded": False}})
        pool, wire = Pool(), Recorder()
        supervisor = Supervisor(settings, cache=cache, pool=pool, publisher=wire, metrics=Metrics(),
                                model_name=MODEL, audio_base_url="http://127.0.0.1:1")
        rigs.append(Rig(supervisor, pool, wire, cache))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.supervisor.close()
        rig.cache.close()


def _request(request_id: str, reply_to: str, **fields: Any) -> InboundMessage:
    body = {"prompt": "rain on a tin roof", "request_id": request_id, "reply_to": reply_to,
            "duration_s": 1.0, **fields}
    return InboundMessage("audiogen/n1/request", json.dumps(body).encode(), None, None, 0.0)


def test_a_failed_delivery_to_one_waiter_does_not_spoil_the_later_waiters(make_rig: Any) -> None:
    rig = make_rig()
    for name in ("first", "broken", "last"):
        rig.supervisor.handle(_request(name, f"dev/{name}", deliver="mqtt"))
    [generation] = rig.pool.futures  # the three coalesced into one generation
    rig.wire.failing = {"dev/broken/audio"}
    Pool.complete(generation)
    assert rig.wire.replies("dev/first")[0]["status"] == "ok"
    assert rig.wire.replies("dev/last")[0]["status"] == "ok"  # was worker_failed: internal error
    assert len(rig.wire.replies("dev/last")) == 1
    assert rig.supervisor.in_flight() == 0


def test_a_twin_arriving_while_the_clip_is_stored_joins_it_instead_of_generating_again(
        make_rig: Any) -> None:
    rig = make_rig(SlowCache)
    rig.supervisor.handle(_request("one", "dev/one"))
    [generation] = rig.pool.futures
    completing = threading.Thread(target=Pool.complete, args=(generation,))
    completing.start()
    assert rig.cache.writing.wait(30)  # the clip is being stored
    rig.supervisor.handle(_request("twin", "dev/twin"))
    rig.cache.release.set()
    completing.join(30)
    assert len(rig.pool.futures) == 1  # was 2: the entry was gone and the clip not yet stored
    assert rig.wire.wait_for_reply("dev/twin")["status"] == "ok"
    assert rig.wire.wait_for_reply("dev/one")["status"] == "ok"


def test_an_exact_hit_evicted_before_its_audio_is_read_is_generated(make_rig: Any) -> None:
    rig = make_rig(EvictingCache)
    rig.supervisor.handle(_request("first", "dev/first"))
    Pool.complete(rig.pool.futures[0])
    assert rig.wire.wait_for_reply("dev/first")["cached"] is False
    rig.supervisor.handle(_request("again", "dev/again", deliver="mqtt"))  # evicted as it is read
    assert len(rig.pool.futures) == 2  # was: answered not_found
    Pool.complete(rig.pool.futures[1])
    reply = rig.wire.wait_for_reply("dev/again")
    assert (reply["status"], reply["cached"]) == ("ok", False)


def _constant_embedding(prompts: Sequence[str]) -> npt.NDArray[np.float32]:
    """The lookups are never reached in the test below; a vector of the right shape will do."""
    return np.ones((len(prompts), 8), dtype=np.float32) / np.sqrt(8)


def test_a_request_admitted_as_the_lookups_shut_down_is_unavailable_and_holds_no_slot(
        tmp_path: Path) -> None:
    cache = CacheStore(tmp_path / "cache")
    settings = Settings.model_validate({"node": {"id": "n1"}, "broker": {"embedded": False}})
    wire = Recorder()
    supervisor = Supervisor(
        settings, cache=cache, pool=Pool(), publisher=wire, metrics=Metrics(), model_name=MODEL,
        audio_base_url="http://127.0.0.1:1", embed=PromptVectors(_constant_embedding),
        semantic=SemanticCache(cache, ReuseJudge(_constant_embedding), dimension=8))
    supervisor.close()  # the drain shut the lookups down after this request was admitted
    supervisor.handle(_request("late", "dev/late"))
    reply = wire.wait_for_reply("dev/late")
    assert reply["code"] == "unavailable"  # was worker_failed: "internal error: cannot schedule…"
    assert supervisor.in_flight() == 0  # no lookup slot held for a request nobody will serve
    cache.close()


@pytest.mark.parametrize("reply_to", ["audiogen/other-node/request", "audiogen/other-node/admin/clear",
                                      "audiogen/other-node/status", "audiogen/other-node/admin"])
def test_reply_to_naming_another_nodes_topics_is_refused(make_rig: Any, reply_to: str) -> None:
    rig = make_rig()
    rig.supervisor.handle(_request("r-1", reply_to))
    assert not rig.pool.futures
    assert [sent.topic for sent in rig.wire.sent] == ["audiogen/n1/reply/r-1"]
    reply = rig.wire.sent[0].body
    assert reply["code"] == "invalid_request" and "names a topic of an appliance" in reply["message"]


def test_reply_to_under_another_nodes_reply_topics_is_allowed(make_rig: Any) -> None:
    rig = make_rig()
    rig.supervisor.handle(_request("r-2", "audiogen/other-node/reply/dev-7"))
    assert len(rig.pool.futures) == 1


def test_an_admin_command_after_the_admin_thread_shut_down_is_answered_unavailable(
        tmp_path: Path) -> None:
    cache = CacheStore(tmp_path / "cache")
    wire = Recorder()
    handler = AdminTopicHandler(AdminDispatcher(cache), wire, TOPICS, max_payload_bytes=65536)
    handler.close()  # the drain closed the admin thread; the broker still delivers
    for n in range(MAX_WAITING_COMMANDS + 1):  # more than the slots: none may leak
        command = {"request_id": f"late-{n}", "reply_to": f"ops/late-{n}"}
        handler.handle(InboundMessage(TOPICS.admin("stats"), json.dumps(command).encode(),
                                      None, None, 0.0))
        assert wire.wait_for_reply(f"ops/late-{n}")["code"] == "unavailable"  # was: no reply at all
    cache.close()


def test_the_documented_reply_example_has_every_field_a_new_generation_reply_carries(
        make_rig: Any) -> None:
    rig = make_rig()
    rig.supervisor.handle(_request("doc", "devices/lamp-1/reply", deliver="both"))
    Pool.complete(rig.pool.futures[0])
    reply = rig.wire.wait_for_reply("devices/lamp-1/reply")
    text = (Path(__file__).parent.parent / "docs" / "mqtt-api.md").read_text()
    example = text.split("## Reply", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert set(reply) - set(json.loads(example)) == set()
