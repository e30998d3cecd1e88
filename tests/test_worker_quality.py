"""CLAP scores, candidates and the quality gate through the real service (broker, worker, LMDB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.cache.store import CacheStore
from appliance.client import RequestClient
from testkit.services import ServiceProcess, service_sections
from tests.conftest import Broker, Service


def _ask(service: Service, broker: Broker, body: dict[str, object]) -> dict[str, object]:
    client = RequestClient(broker.settings(), service.topics)
    client.connect()
    try:
        return client.request(body, timeout_s=120).body
    finally:
        client.close()


def test_random_scorer_switches_the_gate_off_and_the_clip_is_stored_with_its_clap_vector(
    service: Service, broker: Broker
) -> None:
    reply = _ask(service, broker, {"prompt": "waves on a pebble beach", "duration_s": 1,
                                   "candidates": 2, "loop": True})
    assert reply["status"] == "ok", reply
    assert reply["quality_gate"] == "off (random-weight scorer)"
    assert reply["stored"] is True and reply["scorer_random"] is True
    assert reply["scorer"] == "tiny-clap" and reply["is_loop"] is True
    scores = reply["candidate_scores"]
    assert isinstance(scores, list) and len(scores) == 2
    assert reply["clap_similarity"] == max(scores)
    store = CacheStore(service.settings.cache.dir)
    try:
        key = str(reply["key"])
        assert store.get(key).candidate_scores == scores
        vector = store.clap_vector(key)
        assert vector is not None and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
    finally:
        store.close()
    again = _ask(service, broker, {"prompt": "waves on a pebble beach", "duration_s": 1,
                                   "loop": True})
    assert again["cached"] is True and again["key"] == reply["key"]


def test_gate_forced_on_keeps_clips_below_tau_accept_new_out_of_the_cache(
    tmp_path: Path, broker: Broker, models_dir: Path
) -> None:
    sections = service_sections(tmp_path, broker, models_dir)
    sections["generation"].update({"quality_gate": "on", "tau_accept_new": 1.0})
    svc = ServiceProcess.start(tmp_path, sections)
    try:
        svc.wait_ready()
        body = {"prompt": "a kettle coming to the boil", "duration_s": 1}
        first = _ask(svc, broker, dict(body))
        second = _ask(svc, broker, dict(body))
    finally:
        svc.stop()
    assert first["status"] == "ok", first
    assert first["quality_gate"] == "on" and first["stored"] is False
    assert isinstance(first["clap_similarity"], float) and first["clap_similarity"] < 1.0
    assert "audio_url" not in first and "audio_topic" in first, "no URL for a clip not cached"
    assert second["cached"] is False, "a clip the gate refused must not be served from the cache"
