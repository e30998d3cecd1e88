"""Random-weight generators are named in the operator's notes, so none ships by accident."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.config import Settings
from appliance.models.generator import random_weight_notes


def _settings(tmp_path: Path, models: dict[str, Any], pool: list[dict[str, str]]) -> Settings:
    return Settings.model_validate({"models": {"dir": str(tmp_path), **models},
                                    "workers": {"pool": pool}})


def _snapshot(directory: Path, marker: dict[str, Any]) -> str:
    directory.mkdir(parents=True)
    (directory / "model_index.json").write_text('{"_class_name": "StableAudio3Pipeline"}')
    (directory / "appliance.json").write_text(json.dumps(marker))
    return str(directory)


def test_each_served_tiny_generator_gets_a_note(tmp_path: Path) -> None:
    notes = random_weight_notes(_settings(tmp_path, {}, [{"device": "cpu", "model": "tangoflux"},
                                                         {"device": "cpu", "model": "sa3"}]))
    assert len(notes) == 2
    assert notes[0].startswith("TINY random-weight TangoFlux 'tiny-tangoflux'")
    assert notes[1].startswith("TINY random-weight Stable Audio 3 'tiny-sa3'")
    assert "models.sa3" in notes[1]


def test_a_generator_no_worker_serves_gets_no_note(tmp_path: Path) -> None:
    notes = random_weight_notes(_settings(tmp_path, {}, [{"device": "cpu", "model": "sa3"}]))
    assert len(notes) == 1 and "Stable Audio 3" in notes[0]


def test_a_full_size_random_build_is_named_and_real_weights_are_not(tmp_path: Path) -> None:
    random_full = _snapshot(tmp_path / "random-sa3", {"model_name": "random-full-sa3-small",
                                                      "random_weights": True})
    real = _snapshot(tmp_path / "stable-audio-3-small-sfx", {"model_name": "stabilityai/x"})
    pool = [{"device": "cpu", "model": "sa3"}, {"device": "cpu", "model": "sfx"}]
    notes = random_weight_notes(_settings(tmp_path, {"sa3": random_full,
                                                     "generators": {"sfx": real}}, pool))
    assert len(notes) == 1
    assert notes[0].startswith("full-size random-weight Stable Audio 3 'random-full-sa3-small'")
    only_real = _settings(tmp_path, {"sa3": real}, [{"device": "cpu", "model": "sa3"}])
    assert random_weight_notes(only_real) == []
