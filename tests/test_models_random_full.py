"""The benchmarks' full-size random TangoFlux has the published shapes (checked on meta)."""

from __future__ import annotations

from pathlib import Path

from appliance.models.random_full import FULL_CONFIG, flan_t5_large_config
from appliance.models.tangoflux import CONFIG_FILE, TIED_EMBEDDING_KEY, _build_core, _build_vae, _parse_config


def test_full_size_build_has_the_published_parameter_count_and_keys() -> None:
    core = _build_core(_parse_config(FULL_CONFIG, Path(CONFIG_FILE)), flan_t5_large_config())
    vae = _build_vae({})
    keys = [k for k in core.state_dict() if k != TIED_EMBEDDING_KEY]
    assert len(keys) == 684 and len(vae.state_dict()) == 365
    parameters = sum(p.numel() for p in core.parameters()) + sum(p.numel() for p in vae.parameters())
    assert parameters == 1_015_353_154  # NOTES-ml.md: 1.015 B (transformer 517 M, T5 341 M, VAE 156 M)
