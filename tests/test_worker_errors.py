"""How worker failures are classified: device errors restart the worker, anything else is
answered and the worker serves on; bad scores are dropped."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO, Any

import torch

from appliance.config import Settings
from appliance.worker.__main__ import _is_device_error
from appliance.worker.client import _finite_or_none
from appliance.worker.ipc import Frame, read_frame, write_frame
from appliance.worker.pool import worker_command


def test_gpu_memory_and_cuda_errors_are_device_errors() -> None:
    assert _is_device_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert _is_device_error(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert _is_device_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not _is_device_error(ValueError("duration_s must be positive"))
    assert not _is_device_error(RuntimeError("shapes cannot be multiplied"))


def test_non_finite_scores_become_none() -> None:
    assert _finite_or_none(0.42) == 0.42 and _finite_or_none(1) == 1.0
    for bad in (float("nan"), float("inf"), -float("inf"), None, "0.4", True):
        assert _finite_or_none(bad) is None


def test_an_ordinary_generation_error_is_answered_and_the_same_worker_serves_on(
    models_dir: Path, tmp_path: Path
) -> None:
    """Run as the supervisor runs it (``python -m appliance.worker``), not imported."""
    settings = Settings.model_validate({
        "models": {"dir": str(models_dir)}, "logging": {"format": "text", "level": "WARNING"}})
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(worker_command(settings, "cpu", "e0"), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=log)
    assert worker.stdin is not None and worker.stdout is not None
    try:
        ready = read_frame(worker.stdout).header
        assert ready["type"] == "ready" and ready["pid"] == worker.pid
        job = {"type": "generate", "prompt": "a bell", "duration_s": 1.0, "steps": 2,
               "guidance_scale": 3.0, "candidates": 1, "seed": 1}
        write_frame(worker.stdin, Frame({**job, "id": "bad", "duration_s": "not a number"}))
        worker.stdin.flush()
        error = _next_final(worker.stdout)
        assert (error["type"], error["id"], error["fatal"]) == ("error", "bad", False), error
        write_frame(worker.stdin, Frame({**job, "id": "good"}))
        worker.stdin.flush()
        result = _next_final(worker.stdout)
        assert (result["type"], result["id"]) == ("result", "good"), result
        assert worker.poll() is None  # the same process, never restarted
    finally:
        worker.kill()
        worker.wait()


def _next_final(stream: IO[bytes]) -> dict[str, Any]:
    """The next frame that ends a job (progress frames skipped)."""
    while (frame := read_frame(stream)).type == "progress":
        pass
    return frame.header
