"""`appliance cache …` and `appliance request` as a newcomer reads them (issue 11 item 9).

The commands run as their own processes (stderr as a user sees it, with no logging set up) on a
real LMDB cache in a temp dir; the table layout is rendered as on an 80-column terminal.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import cli_cache
from appliance.cache.store import CacheStore
from appliance.cli import _progress
from tests.test_cache_maintenance import add


def _appliance(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run([sys.executable, "-m", "appliance", "cache", *argv, "--config", str(config)],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    return path


def test_removals_say_what_they_removed_and_nothing_when_nothing_went(config: Path, tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    add(store, "rain on a tin roof")
    store.close()
    nothing = _appliance(config, "clean", "--older-than", "1000")
    assert nothing.returncode == 0 and "cache maintenance" not in nothing.stderr  # was: "… removed items"
    removed = _appliance(config, "remove-pattern", "rain")
    assert removed.returncode == 0
    assert "cache maintenance: remove-pattern removed 1 items (100 bytes)" in removed.stderr


def test_show_prints_dates_and_messages_name_the_options(config: Path, tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    key = add(store, "rain on a tin roof").key
    store.close()
    shown = _appliance(config, "show", key)
    [stamp] = [line for line in shown.stdout.splitlines() if "generation_timestamp" in line]
    assert re.search(r"generation_timestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$", stamp), stamp  # was 1.796e+09
    zero = _appliance(config, "clean", "--older-than", "0")
    assert zero.returncode == 2 and "--older-than" in zero.stderr and "older_than_days" not in zero.stderr
    (tmp_path / "rain.wav").write_bytes(b"")
    kept = _appliance(config, "export", key, str(tmp_path / "rain.wav"))
    assert kept.returncode == 2 and "pass --overwrite" in kept.stderr, kept.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_keys_stay_whole_on_an_80_column_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    items = [add(store, "rain on a tin roof with distant thunder and a dog barking far away"),
             add(store, "wind in pine trees")]
    store.close()
    monkeypatch.setenv("COLUMNS", "80")
    screen = _Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    config = tmp_path / "appliance.toml"
    config.write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    from appliance.config import load_settings

    args = argparse.Namespace(json=False, cache_command="list", sort=None, limit=None, prompt=None,
                              pattern=None, model=None, loop=None, min_clap=None, max_clap=None,
                              ascending=False, case_sensitive=False, all=False)
    assert cli_cache._list(load_settings(config, environ={}), args) == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue())
    assert all(item.key in text for item in items), text  # was: each key folded over 3-4 lines
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_progress_bar_says_it_decodes_after_the_last_step() -> None:
    assert _progress(3, 25)["description"] == "generating"
    last = _progress(25, 25)
    assert last["description"].startswith("decoding and scoring") and last["total"] is None  # pulses
