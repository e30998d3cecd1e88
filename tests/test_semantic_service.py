"""The semantic cache in the running service, with the real MiniLM embedder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.client import RequestClient
from appliance.models.tiny_clap import build_tiny_clap
from testkit.services import ServiceProcess, service_sections
from tests.conftest import Broker, Service


def _ask(client: RequestClient, prompt: str, **fields: object) -> dict[str, object]:
    reply = client.request({"prompt": prompt, "duration_s": 2, **fields}, timeout_s=120)
    assert reply.body["status"] == "ok", reply.body
    return reply.body


def test_paraphrase_hits_and_compatibility_rules_and_cli_deletion(service: Service, broker: Broker) -> None:
    client = RequestClient(broker.settings(), service.topics)
    client.connect()
    try:
        original = _ask(client, "a dog barking in the distance")
        assert original["cached"] is False and original["stored"] is True

        paraphrase = _ask(client, "a dog barks far away")
        assert paraphrase["cached"] is True and paraphrase["match_type"] == "semantic"
        assert paraphrase["cache_type"] == "semantic"
        assert paraphrase["key"] == original["key"]
        assert 0.6 <= float(paraphrase["similarity"]) < 1.0  # type: ignore[arg-type]
        assert paraphrase["prompt"] == "a dog barking in the distance"
        assert "reuse_score" in paraphrase
        assert str(paraphrase["reuse_reason"]).startswith("reuse probability")

        unrelated = _ask(client, "a cat meowing")
        assert unrelated["cached"] is False

        same_words_other_sound = _ask(client, "a cat hisses at a dog")
        assert same_words_other_sound["cached"] is False

        looped = _ask(client, "a dog barks far away", loop=True)
        assert looped["cached"] is False, "a loop must not reuse a clip made without the loop treatment"

        longer = _ask(client, "a dog barks far away", duration_s=6)
        assert longer["cached"] is False, "duration beyond the tolerance must not reuse"

        # another process deletes the original; the service notices without a restart
        code = (
            "import sys; from appliance.cache.store import CacheStore; "
            "s = CacheStore(sys.argv[1]); s.delete([sys.argv[2]]); s.close()"
        )
        subprocess.run([sys.executable, "-c", code, str(service.settings.cache.dir), str(original["key"])],
                       check=True, cwd=service.config_path.parent)
        after_delete = _ask(client, "a dog barking far off")
        assert after_delete["cached"] is False
    finally:
        client.close()
    _, metrics = service.http_bytes("/metrics")
    assert b'audiogen_cache_lookups_total{result="semantic"} 1.0' in metrics
    assert b'audiogen_requests_total{outcome="semantic_hit",source="mqtt5"} 1.0' in metrics


def test_force_bypasses_exact_and_semantic_hits(service: Service, broker: Broker) -> None:
    client = RequestClient(broker.settings(), service.topics)
    client.connect()
    try:
        first = _ask(client, "church bells ringing")
        forced = _ask(client, "church bells ringing", force=True)
        again = _ask(client, "church bells ringing")
    finally:
        client.close()
    assert forced["cached"] is False and forced["key"] != first["key"]
    assert again["cached"] is True and again["key"] == forced["key"], "the exact key names the newest clip"


def _clap_verified_service(tmp_path: Path, broker: Broker, models_dir: Path, tau: float) -> ServiceProcess:
    clap_dir = tmp_path / "clap"
    build_tiny_clap(clap_dir)
    sections = service_sections(tmp_path, broker, models_dir)
    sections["models"]["clap"] = str(clap_dir)
    sections["cache"]["clap_check"] = "on"  # a random scorer: "auto" would leave it off
    sections["cache"]["tau_clap_reuse"] = tau
    service = ServiceProcess.start(tmp_path, sections)
    service.wait_ready()
    return service


@pytest.mark.parametrize(("tau", "reused"), [(-1.0, True), (1.0, False)])
def test_semantic_hit_is_verified_by_clap(
    tmp_path: Path, broker: Broker, models_dir: Path, tau: float, reused: bool
) -> None:
    service = _clap_verified_service(tmp_path, broker, models_dir, tau)
    client = RequestClient(broker.settings(), service.topics)
    client.connect()
    try:
        original = _ask(client, "a dog barking in the distance")
        paraphrase = _ask(client, "a dog barks far away")
    finally:
        client.close()
        service.stop()
    assert original["stored"] is True
    assert paraphrase["cached"] is reused, paraphrase
    if reused:  # the CLAP text-audio cosine was computed and passed the threshold
        assert isinstance(paraphrase["clap_reuse_score"], float)
        assert -1.0 <= paraphrase["clap_reuse_score"] <= 1.0
    assert "semantic hits are not verified by CLAP" not in service.log()
