"""The loop seam that SA3's inpainting regenerates (the alternative to the cross-fade)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliance.models.generator import SAMPLE_RATE, load_generator
from appliance.models.sa3_loop import inpaint_loop_seam
from appliance.models.stable_audio3 import StableAudio3Generator
from appliance.models.tiny_sa3 import build_tiny_sa3

HOP = 4096  # samples a latent frame


def test_inpainting_regenerates_the_wrap_around_and_keeps_the_clip_shape(tmp_path: Path) -> None:
    generator = load_generator(build_tiny_sa3(tmp_path / "tiny-sa3"))
    assert isinstance(generator, StableAudio3Generator)
    clip = generator.generate("rain on a roof", duration_s=1.0, steps=2, guidance_scale=1.0,
                              seed=0)[0]
    masks: list[torch.Tensor] = []

    def capture(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        masks.append(kwargs["local_add_cond"][0, 0].clone())  # channel 0: 1 keep, 0 regenerate

    hook = generator.pipeline.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        loop = inpaint_loop_seam(generator, clip, "rain on a roof", seam_s=0.3, steps=2, seed=3)
    finally:
        hook.remove()
    assert loop.shape == clip.shape and loop.dtype == np.float32 and np.isfinite(loop).all()
    # the rotated clip's joint (the original's last sample -> first) is what is regenerated
    joint_frame = (clip.shape[-1] - clip.shape[-1] // 2) // HOP
    regenerated = torch.nonzero(masks[0] == 0).flatten().tolist()
    assert joint_frame in regenerated
    assert regenerated == list(range(regenerated[0], regenerated[-1] + 1))  # one region
    assert len(regenerated) * HOP <= 0.3 * SAMPLE_RATE + HOP
    assert masks[0][0] == 1 and masks[0][-1] == 1  # the clip's own ends are kept
    again = inpaint_loop_seam(generator, clip, "rain on a roof", seam_s=0.3, steps=2, seed=3)
    assert np.array_equal(loop, again)
