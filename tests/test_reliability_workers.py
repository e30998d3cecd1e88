"""A worker whose model cannot be found (issue 11 item 9): named, backed off, tried again."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.errors import Unavailable
from appliance.metrics import Metrics
from appliance.protocol import GenerationParameters
from appliance.worker.pool import WorkerPool


def _eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 180  # a guard against hanging, not a speed check
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_a_missing_model_directory_names_its_setting_backs_off_and_is_tried_again(
        models_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "weights"  # models.tangoflux names a directory that is not there (yet)
    settings = Settings.model_validate({
        "models": {"dir": str(models_dir), "tangoflux": str(weights)},
        "workers": {"restart_backoff_initial_s": 0.05, "restart_backoff_max_s": 0.2},
        "logging": {"format": "text", "level": "WARNING"},
    })
    pool = WorkerPool(settings, Metrics())
    pool.start()
    try:
        _eventually(lambda: pool.states()[0]["failed_starts"] >= 3, "three failed starts")
        state = pool.states()[0]
        assert state["last_error"].startswith(f"models.tangoflux = '{weights}': no such directory")
        assert state["pid"] is None  # nothing spawned only to print a traceback
        [problem] = pool.start_problems()  # what /readyz lists among its reasons
        assert problem.startswith("worker cpu: models.tangoflux = ") and "failed starts" in problem
        params = GenerationParameters(prompt="rain", duration_s=1.0, loop=False, steps=2,
                                      guidance_scale=3.0, candidates=1, seed=1)
        with pytest.raises(Unavailable, match=r"models\.tangoflux = "):
            pool.submit("r-1", params)
        weights.symlink_to(models_dir / "tiny-tangoflux")  # the operator puts the model there
        _eventually(lambda: pool.ready_count() == 1, "the worker starts once the model is there")
        assert pool.start_problems() == [] and pool.states()[0]["failed_starts"] == 0
    finally:
        pool.stop(timeout_s=5)
