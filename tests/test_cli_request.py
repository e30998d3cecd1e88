"""`appliance request` as a newcomer meets it: fails fast when nobody serves, says what it
waits for, refuses a bad --out before generating; --version and plain, complete --help."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

import appliance
from appliance.cli import _build_parser, main
from appliance.testing import free_port, write_config
from tests.conftest import Broker

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
