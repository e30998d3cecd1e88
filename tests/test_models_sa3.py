"""Stable Audio 3 through diffusers' pipeline, on a tiny random snapshot built with the real classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.errors import ModelError
from appliance.models.generator import FAMILY_DEFAULTS, detect_family, load_generator
from appliance.models.stable_audio3 import StableAudio3Generator
from appliance.models.tangoflux import TangoFluxGenerator
from appliance.models.tiny import build_tiny_tangoflux
from appliance.models.tiny_sa3 import MODEL_NAME, build_tiny_sa3

RATE = 44100


@pytest.fixture(scope="module")
def sa3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sa3(tmp_path_factory.mktemp("sa3") / "tiny-sa3")


@pytest.fixture(scope="module")
def sa3(sa3_dir: Path) -> StableAudio3Generator:
    generator = load_generator(sa3_dir)
    assert isinstance(generator, StableAudio3Generator)
    return generator


def test_tiny_sa3_snapshot_has_the_hub_layout_and_names_itself(sa3_dir: Path) -> None:
    index = (sa3_dir / "model_index.json").read_text()
    for component in ("AutoencoderSAME", "StableAudio3DiTModel", "T5GemmaEncoderModel",
                      "GemmaTokenizer", "StableAudio3DurationEmbedder",
                      "FlowMatchEulerDiscreteScheduler"):
        assert component in index
    assert detect_family(sa3_dir) == "sa3"
    assert load_generator(sa3_dir).name == MODEL_NAME


def test_sa3_generates_stereo_44k_candidates_with_progress_per_step(sa3: StableAudio3Generator) -> None:
    steps: list[tuple[int, int]] = []
    rng_before = torch.random.get_rng_state()
    waves = sa3.generate("rain on a tin roof", duration_s=1.5, steps=3, guidance_scale=1.0,
                         seed=7, candidates=2, progress=lambda s, t: steps.append((s, t)))
    assert [w.shape for w in waves] == [(2, round(1.5 * RATE))] * 2
    assert all(w.dtype == np.float32 and np.isfinite(w).all() and w.std() > 1e-3 for w in waves)
    assert not np.array_equal(waves[0], waves[1])  # candidates are different takes
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert torch.equal(rng_before, torch.random.get_rng_state())  # the seed is not global


def test_sa3_seed_reproduces_and_prompt_seed_and_guidance_change_the_clip(
    sa3: StableAudio3Generator,
) -> None:
    def clip(prompt: str, seed: int, guidance: float = 1.0) -> np.ndarray:
        return sa3.generate(prompt, duration_s=1.0, steps=2, guidance_scale=guidance, seed=seed)[0]

    first = clip("a dog barking", 3)
    np.testing.assert_array_equal(first, clip("a dog barking", 3))
    assert not np.array_equal(first, clip("a dog barking", 4))
    assert not np.array_equal(first, clip("church bells ringing", 3))
    assert not np.array_equal(first, clip("a dog barking", 3, guidance=3.0))


def test_sa3_honours_the_dtype_setting(sa3_dir: Path) -> None:
    generator = StableAudio3Generator.from_dir(sa3_dir, dtype="bfloat16")
    assert generator.pipeline.transformer.dtype == torch.bfloat16
    assert generator.pipeline.text_encoder.dtype == torch.bfloat16
    wave = generator.generate("wind", duration_s=0.5, steps=1, guidance_scale=1.0, seed=1)[0]
    assert wave.dtype == np.float32 and wave.shape == (2, RATE // 2)


def test_incomplete_sa3_snapshot_is_refused_naming_what_is_missing(
    sa3_dir: Path, tmp_path: Path,
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sa3_dir, broken)
    (broken / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"tokenizer/tokenizer\.json"):
        load_generator(broken)
    with pytest.raises(ModelError, match="neither a TangoFlux directory"):
        load_generator(tmp_path / "nothing-here")


def test_tangoflux_behind_the_interface_is_the_same_generator(tmp_path: Path) -> None:
    """The interface only chooses the class: same weights and seed, the same waveform."""
    model_dir = build_tiny_tangoflux(tmp_path / "tiny-tangoflux")
    via_interface = load_generator(model_dir)
    assert detect_family(model_dir) == "tangoflux" and FAMILY_DEFAULTS["tangoflux"].steps is None
    direct = TangoFluxGenerator.from_dir(model_dir)
    first = via_interface.generate("a cat purring", duration_s=1.0, steps=2, guidance_scale=4.5,
                                   seed=11)[0]
    second = direct.generate("a cat purring", duration_s=1.0, steps=2, guidance_scale=4.5,
                             seed=11)[0]
    np.testing.assert_array_equal(first, second)
