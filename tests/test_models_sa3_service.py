"""Both generator families in one appliance: a mixed pool of real worker subprocesses, over MQTT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.client import RequestClient
from testkit.services import ServiceProcess, service_sections
from tests.conftest import Broker

MIXED_POOL = '[{"device": "cpu", "model": "tangoflux"}, {"device": "cpu", "model": "sa3"}]'


@pytest.fixture
def mixed(tmp_path: Path, broker: Broker, models_dir: Path) -> Iterator[ServiceProcess]:
    """A tiny TangoFlux worker and a tiny SA3 worker (built by the worker on first start)."""
    service = ServiceProcess.start(tmp_path, service_sections(tmp_path, broker, models_dir),
                                   extra_env={"APPLIANCE_WORKERS__POOL": MIXED_POOL})
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


def test_a_request_chooses_its_model_and_the_cache_never_crosses_models(
    mixed: ServiceProcess, broker: Broker,
) -> None:
    client = RequestClient(broker.settings("5"), mixed.topics)
    client.connect()
    try:
        sa3 = client.request({"prompt": "rain on a tin roof", "duration_s": 1, "model": "sa3"})
        default = client.request({"prompt": "rain on a tin roof", "duration_s": 1})
        again = client.request({"prompt": "Rain on a tin roof.", "duration_s": 1,
                                "model": "tiny-sa3"})
        unknown = client.request({"prompt": "rain on a tin roof", "model": "tangoflux-xl"})
    finally:
        client.close()
    body = sa3.body
    assert body["status"] == "ok", body
    assert body["model"] == "tiny-sa3" and body["cached"] is False
    # SA3's own defaults (distilled: 8 steps, no guidance), progress from its worker
    assert body["steps"] == 8 and body["guidance_scale"] == 1.0 and sa3.progress[-1] == (8, 8)
    # the same prompt for the default model is a new generation: no exact or semantic hit
    # from the SA3 clip, though the prompt is identical
    assert default.body["status"] == "ok", default.body
    assert default.body["model"] == "tiny-tangoflux" and default.body["cached"] is False
    assert default.body["steps"] == 4 and default.body["key"] != body["key"]
    assert {sa3.body["worker"], default.body["worker"]} == {"cpu", "cpu1"}
    # by its name instead of its config key: the SA3 clip, from the cache
    assert again.body["cached"] is True and again.body["key"] == body["key"]
    assert again.body["model"] == "tiny-sa3" and again.body["current_config"]["model"] == "tiny-sa3"
    error = unknown.body
    assert error["status"] == "error" and error["code"] == "invalid_request"
    assert error["field"] == "model" and "tiny-sa3" in error["message"]
    assert "tiny-tangoflux" in error["message"]


def test_appliance_request_model_option_reaches_the_sa3_worker_and_status_warns_of_both_tiny_models(
        mixed: ServiceProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    status = subprocess.run([sys.executable, "-m", "appliance", "status", "--json", "--config",
                             str(mixed.config_path)], capture_output=True, env=env, timeout=60,
                            check=False)
    notes = json.loads(status.stdout)["notes"]  # /readyz's body
    assert any(note.startswith("TINY random-weight TangoFlux") for note in notes), notes
    assert any(note.startswith("TINY random-weight Stable Audio 3") for note in notes), notes
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "request", "wind through pine trees", "--duration", "1",
         "--model", "sa3", "--steps", "2", "--json", "--config", str(mixed.config_path)],
        capture_output=True, env=env, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    reply = json.loads(done.stdout)
    assert reply["status"] == "ok" and reply["model"] == "tiny-sa3" and reply["steps"] == 2
