"""`/audio` served beyond this machine without a token is said loudly (issue 11 item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.app import Appliance
from appliance.config import Settings
from appliance.http import network_exposure

TOKEN = "0123456789abcdef-token"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "appliance.local"])
def test_a_network_address_without_a_token_is_warned_about_naming_both_settings(host: str) -> None:
    warning = network_exposure(host, "")
    assert warning is not None and "http.host" in warning and "http.audio_token" in warning
    assert network_exposure(host, TOKEN) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    assert network_exposure(host, "") is None


def test_appliance_status_notes_an_open_audio_port(tmp_path: Path) -> None:
    """The same line reaches `appliance status` and /readyz (their `notes`)."""
    def notes(host: str) -> list[str]:
        settings = Settings.model_validate({"http": {"host": host},
                                            "cache": {"dir": str(tmp_path / "cache")}})
        return Appliance(settings).notes()

    assert any("http.audio_token is empty" in note for note in notes("0.0.0.0"))
    assert not any("http.audio_token" in note for note in notes("127.0.0.1"))
