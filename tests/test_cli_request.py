"""`appliance request` as a newcomer meets it: fails fast when nobody serves, says what it
waits for, refuses a bad --out before generating, asks for the audio format that --format or
the --out file's extension names; --version and plain, complete --help."""

from __future__ import annotations

import argparse
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import paho.mqtt.publish as publish
import pytest

import appliance
from appliance.cli import _build_parser, main
from testkit.services import free_port, write_config
from tests.conftest import Broker
from tests.mqtt_helpers import RawClient

NODE = "cli-node"
STATUS = f"audiogen/{NODE}/status"


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("APPLIANCE_")]:
        monkeypatch.delenv(name)


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "appliance.toml"
    write_config(path, {"node": {"id": NODE},
                        "broker": {"host": "127.0.0.1", "port": port, "embedded": False}})
    return path


@pytest.mark.parametrize("retained", [None, "offline"])
def test_request_fails_at_once_when_the_node_is_offline_or_has_no_status(
        broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        retained: str | None) -> None:
    if retained is not None:
        publish.single(STATUS, retained, qos=1, retain=True, hostname=broker.host, port=broker.port)
    # before the fix this waited out its whole timeout and answered `timeout`
    code = main(["request", "a bell", "--config", str(_config(tmp_path, broker.port)),
                 "--timeout", "20"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error [unavailable]" in err
    assert ("is offline" if retained else "has published no status") in err


def test_request_says_what_it_waits_for(broker: Broker, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    publish.single(STATUS, "online", qos=1, retain=True, hostname=broker.host, port=broker.port)
    code = main(["request", "a bell", "--config", str(_config(tmp_path, broker.port)),
                 "--timeout", "1"])  # nobody answers: the status is a stale "online"
    err = capsys.readouterr().err
    assert code == 1 and "error [timeout]" in err
    assert f"waiting for node '{NODE}' (audiogen/{NODE}/request" in err


def test_out_into_a_missing_directory_is_refused_before_anything_is_sent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(SystemExit) as info:  # no broker listens: it must not get that far
        main(["request", "a bell", "--config", str(_config(tmp_path, free_port())),
              "--out", str(missing / "bell.wav")])
    assert info.value.code == 2
    assert f"directory {missing} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "asked"), [
    (["--out", "clip.flac"], "flac"),
    (["--out", "clip.OGG"], "ogg"),
    (["--format", "mp3", "--out", "clip.bin"], "mp3"),
    (["--format", "ogg", "--out", "clip.mp3"], "ogg"),  # said outright: it wins
    (["--out", "clip.raw"], None),  # the node's default (wav)
])
def test_request_asks_for_the_format_of_its_option_or_of_the_out_file(
        broker: Broker, tmp_path: Path, options: list[str], asked: str | None) -> None:
    """A stand-in node on the real broker answers with bytes that name the format it was asked."""
    publish.single(STATUS, "online", qos=1, retain=True, hostname=broker.host, port=broker.port)
    config = tmp_path / "appliance.toml"  # MQTT 3.1.1: the reply address is in the body (reply_to)
    write_config(config, {"node": {"id": NODE}, "broker": {
        "host": "127.0.0.1", "port": broker.port, "embedded": False, "protocol": "3.1.1"}})
    node = RawClient(broker.host, broker.port, f"audiogen/{NODE}/request", protocol=paho.MQTTv311)
    requests: queue.Queue[dict[str, object]] = queue.Queue()

    def answer() -> None:
        body = node.next(30).json()
        requests.put(body)
        audio_format = str(body.get("format", "wav"))
        audio_topic = f"{body['reply_to']}/audio"
        node.publish(audio_topic, f"{audio_format} bytes")
        node.publish(body["reply_to"], json.dumps({"request_id": body["request_id"], "status": "ok",
                                                   "format": audio_format, "audio_topic": audio_topic}))

    responder = threading.Thread(target=answer, daemon=True)
    responder.start()
    try:
        out = tmp_path / options[-1]
        code = main(["request", "a bell", "--config", str(config), "--timeout", "30",
                     *options[:-1], str(out)])
    finally:
        responder.join(30)
        node.close()
    assert code == 0
    assert requests.get_nowait().get("format") == asked
    assert out.read_bytes() == f"{asked or 'wav'} bytes".encode()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"appliance {appliance.__version__}"


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_help_is_plain_text_and_explains_every_request_option() -> None:
    parsers = list(_parsers(_build_parser()))
    for parser in parsers:
        assert "``" not in parser.format_help(), parser.prog
    [request] = [p for p in parsers if p.prog.endswith(" request")]
    unexplained = [a.option_strings[0] for a in request._actions if a.option_strings and not a.help]
    assert unexplained == []
