from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appliance.config import Settings, load_settings
from appliance.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_file_documents_exactly_the_code_defaults() -> None:
    assert load_settings(REPO / "config" / "appliance.toml", environ={}) == Settings()


def test_every_key_of_the_settings_tree_appears_in_the_shipped_file() -> None:
    text = (REPO / "config" / "appliance.toml").read_text()
    for section_name, section in Settings.model_fields.items():
        assert f"[{section_name}]" in text
        assert section.annotation is not None
        for key in section.annotation.model_fields:  # type: ignore[union-attr]
            assert f"\n{key} = " in text, f"{section_name}.{key} is not documented"


def test_environment_overrides_file_values_and_parses_types(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[broker]\nport = 1884\n[workers]\ndevices = ["cpu"]\n')
    settings = load_settings(path, environ={
        "APPLIANCE_BROKER__PORT": "1999",
        "APPLIANCE_WORKERS__DEVICES": '["0", "1"]',
        "APPLIANCE_NODE__ID": "lobby",
        "APPLIANCE_BROKER__EMBEDDED": "false",
    })
    assert settings.broker.port == 1999
    assert settings.workers.devices == ["0", "1"]
    assert settings.node.node_id == "lobby"
    assert settings.broker.embedded is False


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("[broker]\nport = 70000\n", {}, "broker.port"),
        ("[broker]\nprot = 1\n", {}, "broker.prot"),
        ("", {"APPLIANCE_WORKERS__DEVICES": '["gpu0"]'}, "workers.devices"),
        ("[generation]\nmax_duration_s = 60\n", {}, "generation.max_duration_s"),
        ("[node]\nbase_topic = \"a/#\"\n", {}, "node.base_topic"),
        ("[broker\n", {}, "not valid TOML"),
    ],
)
def test_invalid_configuration_names_the_key(tmp_path: Path, text: str, env: dict[str, str],
                                             expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=env)
    assert expected in info.value.message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_environment_values_stay_the_strings_their_keys_expect() -> None:
    # each of these parsed as TOML once: an int, a bool or a date, and failed validation
    settings = load_settings(None, environ={
        "APPLIANCE_BROKER__PASSWORD": "12345678",
        "APPLIANCE_BROKER__USERNAME": "true",
        "APPLIANCE_NODE__ID": "0042",
        "APPLIANCE_NODE__SHARE_GROUP": "2024-01-02",
        "APPLIANCE_HTTP__AUDIO_TOKEN": "1234567890123456",
    })
    assert settings.broker.password == "12345678"
    assert settings.broker.username == "true"
    assert settings.node.node_id == "0042"
    assert settings.node.share_group == "2024-01-02"
    assert settings.http.audio_token == "1234567890123456"


def test_a_bad_environment_value_is_blamed_on_its_variable_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text("[broker]\nport = 1884\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"APPLIANCE_BROKER__PORT": "70000"})
    assert "APPLIANCE_BROKER__PORT" in info.value.message
    assert str(path) not in info.value.message
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"APPLIANCE_WORKERS__DEVICES": "cpu"})  # a list is JSON
    assert "APPLIANCE_WORKERS__DEVICES" in info.value.message


def test_unknown_appliance_variables_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="appliance.config"):
        settings = load_settings(None, environ={
            "APPLIANCE_BROKER_PORT": "1884",  # one underscore: no such key
            "APPLIANCE_BROKER__PORT": "1885",
            "APPLIANCE_CONFIG": "/nowhere.toml",
            "OTHER_BROKER_PORT": "1",
        })
    assert settings.broker.port == 1885
    [warning] = [record.getMessage() for record in caplog.records]  # one: the unknown one
    assert warning.startswith("environment variable APPLIANCE_BROKER_PORT ")
