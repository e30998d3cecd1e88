"""How worker failures are classified: device errors restart the worker, bad scores are dropped."""

from __future__ import annotations

import torch

from appliance.worker.__main__ import _is_device_error
from appliance.worker.client import _finite_or_none


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
