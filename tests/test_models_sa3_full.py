"""The full-size SA3 shapes used by the benchmarks match the published parameter counts."""

from __future__ import annotations

import torch

from appliance.models.random_full_sa3 import full_size_sa3_components, parameter_counts


def test_small_architecture_has_the_published_433m_dit_and_medium_the_1_4b() -> None:
    with torch.device("meta"):  # shapes only: no 3.4 GB of random weights
        small = full_size_sa3_components("small")
        medium = full_size_sa3_components("medium")
    counts = parameter_counts(small)
    inpainting = sum(p.numel() for name, p in small["transformer"].named_parameters()
                     if ".to_local_embed." in name)
    assert round((counts["transformer"] - inpainting) / 1e6) == 433  # the published figure
    assert round(counts["text_encoder"] / 1e6) == 282  # T5Gemma-b encoder
    assert round(counts["vae"] / 1e6) == 107  # SAME-S
    assert 1_400 <= parameter_counts(medium)["transformer"] / 1e6 < 1_500  # "1.4 B"
    assert not small["transformer"].config.use_differential_attention
