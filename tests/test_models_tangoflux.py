"""TangoFlux loading and generation, on a tiny random model of the real architecture."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from transformers import T5Config, T5TokenizerFast

from appliance.errors import ModelError
from appliance.models.tangoflux import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    SAMPLE_RATE,
    TEXT_ENCODER_DIR,
    TIED_EMBEDDING_KEY,
    VAE_CONFIG_FILE,
    VAE_FILE,
    TangoFluxGenerator,
    _assign_state,
    _build_core,
    _build_vae,
    _ensure_materialised,
    _parse_config,
)
from appliance.models.tiny import build_tiny_tangoflux

PROMPT = "a dog barking in the rain"
TWO_SECONDS = 2 * SAMPLE_RATE

# The published checkpoint's config.json and flan-t5-large's encoder shape (NOTES-ml.md).
REAL_CONFIG: dict[str, Any] = {
    "num_layers": 6,
    "num_single_layers": 18,
    "in_channels": 64,
    "attention_head_dim": 128,
    "joint_attention_dim": 1024,
    "num_attention_heads": 8,
    "audio_seq_len": 645,
    "max_duration": 30,
    "uncondition": False,
    "text_encoder_name": "google/flan-t5-large",
}
FLAN_T5_LARGE = T5Config(
    vocab_size=32128,
    d_model=1024,
    d_kv=64,
    d_ff=2816,
    num_layers=24,
    num_heads=16,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Two cores shared with other test processes: one torch thread is ~10x faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tangoflux(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def generator(tiny_dir: Path) -> TangoFluxGenerator:
    return TangoFluxGenerator.from_dir(tiny_dir)


@pytest.fixture
def model_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


@pytest.fixture
def batch_shapes(generator: TangoFluxGenerator) -> Iterator[list[tuple[int, ...]]]:
    """Record the shape of every transformer input during a test."""
    shapes: list[tuple[int, ...]] = []

    def record(_module: torch.nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        shapes.append(tuple(kwargs["hidden_states"].shape))

    handle = generator._core.transformer.register_forward_pre_hook(record, with_kwargs=True)
    yield shapes
    handle.remove()


def _generate(gen: TangoFluxGenerator, **overrides: Any) -> list[np.ndarray]:
    kwargs: dict[str, Any] = {
        "duration_s": 2.0,
        "steps": 3,
        "guidance_scale": 3.0,
        "seed": 0,
    }
    kwargs.update(overrides)
    return gen.generate(PROMPT, **kwargs)


def test_generate_returns_trimmed_stereo_float32(
    generator: TangoFluxGenerator, batch_shapes: list[tuple[int, ...]]
) -> None:
    (wave,) = _generate(generator)
    assert wave.shape == (2, TWO_SECONDS)
    assert wave.dtype == np.float32
    assert np.isfinite(wave).all()
    assert np.abs(wave).max() > 0
    # CFG doubles the batch; "needed" mode generates ceil(88200 / 2048) + margin frames.
    assert batch_shapes == [(2, 48, 64)] * 3
    assert generator.name == "tiny-tangoflux"
    assert generator.device == "cpu"


def test_seed_makes_output_reproducible(generator: TangoFluxGenerator) -> None:
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    first = _generate(generator, seed=7)[0]
    assert torch.equal(torch.get_rng_state(), global_state), "global RNG was used"
    assert np.array_equal(first, _generate(generator, seed=7)[0])
    assert not np.allclose(first, _generate(generator, seed=8)[0])
    assert not np.allclose(_generate(generator, seed=None)[0], _generate(generator, seed=None)[0])


def test_candidates_are_one_batch_and_differ(
    generator: TangoFluxGenerator, batch_shapes: list[tuple[int, ...]]
) -> None:
    waves = _generate(generator, candidates=2, steps=2)
    assert len(waves) == 2
    assert all(w.shape == (2, TWO_SECONDS) for w in waves)
    assert not np.allclose(waves[0], waves[1])
    assert batch_shapes == [(4, 48, 64)] * 2


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_guidance_at_most_one_skips_unconditional_branch(
    generator: TangoFluxGenerator, batch_shapes: list[tuple[int, ...]], scale: float
) -> None:
    (wave,) = _generate(generator, guidance_scale=scale, steps=2)
    assert wave.shape == (2, TWO_SECONDS)
    assert np.isfinite(wave).all()
    assert batch_shapes == [(1, 48, 64)] * 2


def test_reference_mode_generates_full_latent_length(tiny_dir: Path) -> None:
    gen = TangoFluxGenerator.from_dir(tiny_dir, latent_frames="reference")
    shapes: list[tuple[int, ...]] = []
    gen._core.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["hidden_states"].shape)), with_kwargs=True
    )
    (wave,) = _generate(gen)
    assert wave.shape == (2, TWO_SECONDS)
    assert np.isfinite(wave).all()
    assert shapes == [(2, 64, 64)] * 3  # audio_seq_len of the tiny config


def test_latent_frames_cover_the_longest_clip(generator: TangoFluxGenerator, tiny_dir: Path) -> None:
    reference = TangoFluxGenerator.from_dir(tiny_dir, latent_frames="reference")
    thirty_seconds = 30 * SAMPLE_RATE  # 645 frames hold only 29.95 s
    assert generator._frames_for(thirty_seconds) == 646
    assert reference._frames_for(thirty_seconds) == 646
    assert generator._frames_for(1) == 1 + 4
    assert reference._frames_for(1) == 64


def test_progress_is_reported_after_each_step(generator: TangoFluxGenerator) -> None:
    calls: list[tuple[int, int]] = []
    _generate(generator, steps=3, progress=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_invalid_arguments_raise_value_error(generator: TangoFluxGenerator) -> None:
    for bad in ({"steps": 0}, {"candidates": 0}, {"duration_s": 0.0}, {"duration_s": float("nan")}):
        with pytest.raises(ValueError):
            _generate(generator, **bad)


def test_duration_is_clamped_to_max_duration(model_copy: Path) -> None:
    config = json.loads((model_copy / CONFIG_FILE).read_text())
    config["max_duration"] = 0.5
    (model_copy / CONFIG_FILE).write_text(json.dumps(config))
    gen = TangoFluxGenerator.from_dir(model_copy)
    (wave,) = _generate(gen, duration_s=5.0, steps=1)
    assert wave.shape == (2, SAMPLE_RATE // 2)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_still_returns_float32(tiny_dir: Path, dtype: str) -> None:
    gen = TangoFluxGenerator.from_dir(tiny_dir, dtype=dtype)
    assert gen._core.transformer.dtype == getattr(torch, dtype)
    (wave,) = _generate(gen, steps=1, duration_s=0.5)
    assert wave.dtype == np.float32
    assert wave.shape == (2, SAMPLE_RATE // 2)
    assert np.isfinite(wave).all()


def test_loaded_model_is_fully_materialised_and_tied(generator: TangoFluxGenerator) -> None:
    encoder = generator._core.text_encoder
    assert encoder.encoder.embed_tokens.weight is encoder.shared.weight
    for module in (generator._core, generator._vae):
        assert not any(t.is_meta for t in module.parameters())
        assert not any(t.is_meta for t in module.buffers())
    assert not generator._core.training


def test_text_encoder_path_may_point_elsewhere(model_copy: Path, tmp_path: Path) -> None:
    moved = tmp_path / "flan-t5"
    shutil.move(model_copy / TEXT_ENCODER_DIR, moved)
    config = json.loads((model_copy / CONFIG_FILE).read_text())
    config["text_encoder_path"] = str(moved)
    (model_copy / CONFIG_FILE).write_text(json.dumps(config))
    assert TangoFluxGenerator.from_dir(model_copy).name == "tiny-tangoflux"


def test_build_is_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_tangoflux(tmp_path / "again", seed=0)
    other = build_tiny_tangoflux(tmp_path / "other", seed=1)
    for name in (CHECKPOINT_FILE, VAE_FILE, f"{TEXT_ENCODER_DIR}/tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert (other / CHECKPOINT_FILE).read_bytes() != (tiny_dir / CHECKPOINT_FILE).read_bytes()
    size = sum(p.stat().st_size for p in tiny_dir.rglob("*") if p.is_file())
    assert size < 20_000_000


def _edit_checkpoint(path: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    state = safetensors.torch.load_file(str(path))
    edit(state)
    safetensors.torch.save_file(state, str(path))


def _break_with_extra_key(model: Path) -> None:
    _edit_checkpoint(model / CHECKPOINT_FILE, lambda s: s.update({"fc.2.weight": torch.ones(1)}))


def _break_with_missing_key(model: Path) -> None:
    _edit_checkpoint(model / VAE_FILE, lambda s: s.pop("decoder.conv1.bias"))


def _break_with_wrong_shape(model: Path) -> None:
    _edit_checkpoint(model / CHECKPOINT_FILE, lambda s: s.update({"fc.0.bias": torch.ones(3)}))


def _break_with_tiny_tokenizer(model: Path) -> None:
    """What an offline hub miss produces: a tokenizer that knows only its special tokens."""
    text_dir = model / TEXT_ENCODER_DIR
    for path in text_dir.glob("tokenizer*"):
        path.unlink()
    T5TokenizerFast(extra_ids=0).save_pretrained(str(text_dir))


def _break_by_removing_tokenizer(model: Path) -> None:
    for path in (model / TEXT_ENCODER_DIR).glob("*token*"):
        path.unlink()


def _break_config(model: Path) -> None:
    (model / CONFIG_FILE).write_text('{"num_layers": "six"}')


def _break_joint_dim(model: Path) -> None:
    (model / CONFIG_FILE).write_text('{"joint_attention_dim": 32}')


def _edit_vae_config(model: Path, **changes: Any) -> None:
    path = model / VAE_CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: (m / VAE_FILE).unlink(), "vae.safetensors: file is missing"),
        (lambda m: (m / CHECKPOINT_FILE).write_bytes(b"junk"), "cannot read safetensors"),
        (lambda m: shutil.rmtree(m / TEXT_ENCODER_DIR), "text-encoder directory is missing"),
        (_break_with_extra_key, "unexpected keys"),
        (_break_with_missing_key, "missing keys"),
        (_break_with_wrong_shape, "do not fit"),
        (_break_with_tiny_tokenizer, "tokenizer has"),
        (_break_by_removing_tokenizer, "tokenizer"),
        (_break_config, "num_layers must be a positive integer"),
        (_break_joint_dim, "joint_attention_dim"),
        (lambda m: _edit_vae_config(m, colour="red"), "unknown AutoencoderOobleck settings"),
        (lambda m: _edit_vae_config(m, decoder_input_channels=32), "latent width"),
        (lambda m: _edit_vae_config(m, channel_multiples=[]), "cannot build"),
    ],
)
def test_damaged_model_dir_raises_model_error(
    model_copy: Path, damage: Callable[[Path], object], message: str
) -> None:
    damage(model_copy)
    with pytest.raises(ModelError, match=message):
        TangoFluxGenerator.from_dir(model_copy)


def _count_by_prefix(keys: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        prefix = key.split(".", 1)[0]
        counts[prefix] = counts.get(prefix, 0) + 1
    return counts


def test_full_size_key_layout_matches_published_checkpoint() -> None:
    """Built on meta (no memory); the counts are those of the published files."""
    config = _parse_config(REAL_CONFIG, Path(CONFIG_FILE))
    core = _build_core(config, FLAN_T5_LARGE)
    state = {k: v for k, v in core.state_dict().items() if k != TIED_EMBEDDING_KEY}
    assert _count_by_prefix(set(state)) == {
        "transformer": 460,
        "text_encoder": 219,
        "fc": 2,
        "duration_emebdder": 3,
    }
    assert len(state) == 684
    assert all(t.is_meta for t in state.values())
    vae_state = _build_vae({}).state_dict()
    assert len(vae_state) == 365
    assert any(k.endswith(".weight_g") for k in vae_state)
    assert any(k.endswith(".weight_v") for k in vae_state)

    # The loader's key check accepts exactly the published set ...
    source = Path(CHECKPOINT_FILE)
    _assign_state(_build_core(config, FLAN_T5_LARGE), state, source, {TIED_EMBEDDING_KEY})
    _assign_state(_build_vae({}), vae_state, Path(VAE_FILE))
    # ... and nothing more or less.
    with pytest.raises(ModelError, match="unexpected keys"):
        extra = {**state, "text_encoder.encoder.extra.weight": state["fc.0.weight"]}
        _assign_state(_build_core(config, FLAN_T5_LARGE), extra, source, {TIED_EMBEDDING_KEY})
    fewer = {k: v for k, v in state.items() if k != "fc.0.bias"}
    with pytest.raises(ModelError, match="missing keys"):
        _assign_state(_build_core(config, FLAN_T5_LARGE), fewer, source, {TIED_EMBEDDING_KEY})
    with pytest.raises(ModelError, match="not loaded"):
        _ensure_materialised(core, source)
