"""The public Python API (docs/python-api.md) against one real broker and `appliance serve`.

One service is shared by every test here (starting one costs seconds); each test uses its
own prompts, so the order does not matter.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import appliance
from appliance import (
    AsyncClient,
    Cache,
    Client,
    InvalidRequest,
    ListReport,
    NodeOffline,
    NotFound,
    RemovalReport,
    Result,
    StatsReport,
    Unavailable,
)
from appliance.admin import ARG_MODELS
from testkit.services import BrokerProcess, ServiceProcess, free_port, service_sections
from tests.mqtt_helpers import RawClient

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Live:
    broker: BrokerProcess
    service: ServiceProcess

    @property
    def node(self) -> str:
        return self.service.topics.node

    @property
    def cache_dir(self) -> Path:
        return self.service.settings.cache.dir

    def client(self, node: str | None = None) -> Client:
        return Client(self.broker.host, self.broker.port, node=node or self.node)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Live]:
    state = tmp_path_factory.mktemp("python-api")
    broker = BrokerProcess.start(state / "broker")
    service = ServiceProcess.start(state, service_sections(state, broker, models_dir))
    try:
        service.wait_ready()
        yield Live(broker, service)
    finally:
        service.stop()
        broker.stop()


# -- the client -------------------------------------------------------------------------------


def test_request_returns_metadata_audio_url_and_progress_then_an_exact_hit(
    live: Live, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    with live.client() as client:
        assert client.node_status == "online"
        first = client.request("a creaking wooden door", duration_s=2,
                               on_progress=lambda step, total: seen.append((step, total)))
        again = client.request("A creaking  wooden door.", duration_s=2)
    assert isinstance(first, Result)
    assert first.metadata["status"] == "ok" and first.cached is False
    assert first.metadata["request_id"] == first.request_id
    assert first.audio is not None and first.audio[:4] == b"RIFF"
    assert first.audio_url is not None and first.audio_url.endswith(f"/audio/{first.key}")
    assert first.progress and first.progress[-1] == (4, 4) and seen == list(first.progress)
    assert again.cached is True and again.key == first.key and again.audio == first.audio
    assert not again.progress
    assert first.save(tmp_path / "door.wav").read_bytes() == first.audio
    url_only = Result(first.request_id, first.metadata, None, first.audio_url, ())
    assert url_only.save(tmp_path / "over-http.wav").read_bytes() == first.audio


def test_async_client_runs_requests_concurrently_and_reports_progress_on_the_loop(live: Live) -> None:
    progress_threads: set[int] = set()

    async def main() -> tuple[list[Result], int]:
        async with AsyncClient(live.broker.host, live.broker.port, node=live.node) as client:
            results = await asyncio.gather(
                client.request("a dog barking twice", duration_s=2, deliver="url",
                               on_progress=lambda s, t: progress_threads.add(threading.get_ident())),
                client.request("wind through pine trees", duration_s=2),
            )
        return list(results), threading.get_ident()

    (url_only, both), loop_thread = asyncio.run(main())
    assert url_only.metadata["status"] == "ok" and url_only.audio is None and url_only.audio_url
    assert both.audio is not None and both.audio[:4] == b"RIFF"
    assert url_only.request_id != both.request_id and url_only.key != both.key
    assert progress_threads == {loop_thread}


def test_a_rejected_request_raises_the_reply_error_with_its_code(live: Live) -> None:
    with live.client() as client:
        with pytest.raises(InvalidRequest, match="steps") as bad_steps:
            client.request("a door slams", steps=0)
        with pytest.raises(InvalidRequest, match="colour"):
            client.request("a door slams", **{"colour": "red"})  # type: ignore[arg-type]
    assert bad_steps.value.code == "invalid_request"


def test_client_fails_fast_when_the_node_is_absent_or_offline(live: Live) -> None:
    with pytest.raises(NodeOffline, match="no status"):
        live.client(node="nobody-here")
    with pytest.raises(Unavailable, match="cannot reach the broker"):
        Client("127.0.0.1", free_port(), node=live.node)
    setter = RawClient(live.broker.host, live.broker.port, "audiogen/ghost-off/status")
    try:
        setter.client.publish("audiogen/ghost-off/status", b"offline", qos=1, retain=True).wait_for_publish(5)
        setter.next()
        with pytest.raises(NodeOffline, match="offline"):
            live.client(node="ghost-off")
    finally:
        setter.close()


def test_a_waiting_request_fails_as_soon_as_the_node_goes_offline(live: Live) -> None:
    """A node that never answers: only the offline status can end the wait before its timeout."""
    node = RawClient(live.broker.host, live.broker.port, "audiogen/ghost/request")
    node.client.publish("audiogen/ghost/status", b"online", qos=1, retain=True).wait_for_publish(5)
    outcome: list[BaseException | Result] = []
    try:
        with live.client(node="ghost") as client:
            def ask() -> None:
                try:
                    outcome.append(client.request("a ghostly moan", timeout_s=600))
                except BaseException as exc:
                    outcome.append(exc)

            asker = threading.Thread(target=ask)
            asker.start()
            request = node.next()  # the request reached the node, with its correlation data
            assert request.json()["prompt"] == "a ghostly moan" and request.correlation_data
            node.client.publish("audiogen/ghost/status", b"offline", qos=1, retain=True).wait_for_publish(5)
            asker.join(timeout=60)
            assert not asker.is_alive()
            with pytest.raises(NodeOffline):
                client.request("another moan")
    finally:
        node.close()
    assert len(outcome) == 1 and isinstance(outcome[0], NodeOffline), outcome


# -- the cache --------------------------------------------------------------------------------


def test_cache_calls_while_the_service_runs_and_the_service_sees_removals(live: Live, tmp_path: Path) -> None:
    with live.client() as client:
        kettle = client.request("a kettle boiling over", duration_s=2)
        cache = Cache(live.cache_dir)
        stats = cache.stats()
        assert isinstance(stats, StatsReport) and stats.items >= 1
        listing = cache.list(prompt="kettle boiling", limit=10)
        assert isinstance(listing, ListReport)
        assert [item.key for item in listing.items] == [kettle.key]
        shown = cache.show(kettle.key)
        assert shown.audio_exists and shown.item["prompt"] == "a kettle boiling over"
        exported = cache.export(kettle.key, tmp_path)
        assert Path(exported.audio_path).read_bytes() == kettle.audio

        preview = cache.remove_pattern(r"^a kettle boiling")
        assert isinstance(preview, RemovalReport)
        assert preview.dry_run and preview.removed == [kettle.key]
        assert cache.show(kettle.key).audio_exists
        removed = cache.remove_pattern(r"^a kettle boiling", dry_run=False)
        assert not removed.dry_run and removed.removed == [kettle.key]
        with pytest.raises(NotFound):
            cache.show(kettle.key)

        regenerated = client.request("a kettle boiling over", duration_s=2)
    assert regenerated.cached is False, "the running service still served the removed item"

    before = cache.stats().items
    cleared = cache.clear()
    assert cleared.dry_run and cleared.removed_count == before and cache.stats().items == before
    assert cache.clean(older_than_days=1).removed_count == 0
    assert cache.duplicates().removal is None


def test_cache_results_are_what_the_cli_prints_as_json(live: Live) -> None:
    with live.client() as client:
        client.request("a cat purring on a sofa", duration_s=2)
    cli = subprocess.run(
        [sys.executable, "-m", "appliance", "cache", "remove-pattern", "purring", "--dry-run", "--json",
         "--config", str(live.service.config_path)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    cache = Cache.from_config(live.service.config_path)
    assert cache.path == live.cache_dir
    from_api = cache.remove_pattern("purring")
    assert json.loads(cli.stdout) == {"command": "remove-pattern", **from_api.to_dict()}
    assert from_api.removed_count == 1


def test_cache_on_a_plain_directory_names_its_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not a cache directory"):
        Cache(tmp_path / "typo")
    cache = Cache(tmp_path / "fresh", create=True)
    assert cache.stats().items == 0 and Cache(tmp_path / "fresh").list().items == []
    with pytest.raises(NotFound):
        cache.show("0" * 32)
    with pytest.raises(InvalidRequest, match="sort"):
        cache.list(sort="loudness")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="pattern"):
        cache.remove_pattern("(unclosed")


def test_cache_method_defaults_are_the_dispatchers_defaults() -> None:
    """The API spells defaults out for readers; they must stay those of the admin commands."""
    methods = {"stats": Cache.stats, "list": Cache.list, "clean": Cache.clean,
               "duplicates": Cache.duplicates, "remove-pattern": Cache.remove_pattern}
    for command, method in methods.items():
        fields = ARG_MODELS[command].model_fields
        for name, parameter in inspect.signature(method).parameters.items():
            if name in fields and parameter.default is not inspect.Parameter.empty and name != "dry_run":
                assert parameter.default == fields[name].default, (command, name)


# -- the package surface and its documentation -------------------------------------------------


def test_public_surface_is_explicit_and_versioned() -> None:
    for name in appliance.__all__:
        assert getattr(appliance, name) is not None, name
    assert not [name for name in appliance.__all__ if name.startswith("_") and name != "__version__"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert appliance.__version__ == project["version"]
    assert f"## {appliance.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    assert "docs/python-api.md" in (ROOT / "README.md").read_text()


def _examples(live: Live, out: Path) -> Path:
    """The python blocks of docs/python-api.md as one script, aimed at the live service."""
    text = (ROOT / "docs" / "python-api.md").read_text()
    script = "\n\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL))
    settings: dict[str, Any] = {
        "HOST, PORT, NODE = ": f"{live.broker.host!r}, {live.broker.port}, {live.node!r}",
        "CACHE_DIR = ": repr(str(live.cache_dir)),
    }
    for prefix, value in settings.items():
        script, count = re.subn(rf"^{re.escape(prefix)}.*$", prefix + value, script, flags=re.MULTILINE)
        assert count == 1, f"docs/python-api.md must set {prefix.strip(' =')} exactly once"
    path = out / "python_api_examples.py"
    path.write_text(script)
    return path


def test_documented_examples_type_check_and_run_against_a_real_service(live: Live, tmp_path: Path) -> None:
    script = _examples(live, tmp_path)
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--strict",
         "--follow-imports=silent", "--cache-dir", str(ROOT / ".mypy_cache" / "docs-examples"), str(script)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "rain.wav").read_bytes()[:4] == b"RIFF"
