from __future__ import annotations

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
