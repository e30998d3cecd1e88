"""CLAP scoring, on a tiny random model of the real architecture, and the real layout's keys."""

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

from appliance.errors import ModelError
from appliance.models.clap import (
    APPLIANCE_FILE,
    CLAP_SAMPLE_RATE,
    CONFIG_FILE,
    FEATURE_EXTRACTOR_FILE,
    LEGACY_WEIGHTS_FILE,
    WEIGHTS_FILE,
    ClapScorer,
    _build_model,
    _check_keys,
    _is_computed,
    _load_feature_extractor,
    _parse_config,
    _shapes,
    _windows,
)
from appliance.models.tiny_clap import MODEL_NAME, build_tiny_clap

PROMPT = "a dog barking in the rain"
TANGOFLUX_RATE = 44100


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Two cores are shared with other work: keep torch to one thread for this file."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clap(tmp_path_factory.mktemp("clap") / "tiny-clap")


@pytest.fixture(scope="module")
def scorer(tiny_dir: Path) -> ClapScorer:
    return ClapScorer.from_dir(tiny_dir)


def _clip(seconds: float, seed: int, rate: int = TANGOFLUX_RATE, channels: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = round(seconds * rate)
    t = np.arange(frames) / rate
    tone = 0.3 * np.sin(2 * np.pi * (200 + 100 * seed) * t)
    noise = 0.05 * rng.standard_normal((channels, frames))
    return (tone + noise).astype(np.float32)


def _assert_unit_rows(embeddings: np.ndarray, rows: int, dim: int) -> None:
    assert embeddings.shape == (rows, dim)
    assert embeddings.dtype == np.float32
    assert np.all(np.isfinite(embeddings))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


# --- the tiny build ---------------------------------------------------------------------------


def test_tiny_build_is_byte_identical_for_a_seed_and_small(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_clap(tmp_path / "again")
    names = sorted(p.name for p in tiny_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert {CONFIG_FILE, WEIGHTS_FILE, FEATURE_EXTRACTOR_FILE, APPLIANCE_FILE} <= set(names)
    for name in names:
        assert (tiny_dir / name).read_bytes() == (again / name).read_bytes(), name
    other = build_tiny_clap(tmp_path / "other", seed=1)
    assert (other / WEIGHTS_FILE).read_bytes() != (tiny_dir / WEIGHTS_FILE).read_bytes()
    assert sum(p.stat().st_size for p in tiny_dir.iterdir()) < 20 * 2**20
    marker = json.loads((tiny_dir / APPLIANCE_FILE).read_text())
    assert marker["random_weights"] is True


def test_loads_tiny_with_its_name_dimension_and_random_marker(scorer: ClapScorer) -> None:
    assert scorer.name == MODEL_NAME
    assert scorer.dimension == 32
    assert scorer.is_random is True
    assert CLAP_SAMPLE_RATE == 48000


# --- embeddings --------------------------------------------------------------------------------


def test_text_embeddings_are_unit_rows_deterministic_and_batch_independent(
    scorer: ClapScorer,
) -> None:
    texts = [PROMPT, "thunder rumbling far away", "", "x" * 2000]
    first = scorer.text_embeddings(texts)
    _assert_unit_rows(first, len(texts), scorer.dimension)
    np.testing.assert_array_equal(first, scorer.text_embeddings(texts))
    alone = np.concatenate([scorer.text_embeddings([t]) for t in texts])
    np.testing.assert_allclose(first, alone, atol=1e-5)  # padding does not leak in
    assert not np.allclose(first[0], first[1])
    assert scorer.text_embeddings([]).shape == (0, scorer.dimension)
    with pytest.raises(TypeError):
        scorer.text_embeddings([PROMPT, 3])  # type: ignore[list-item]


def test_audio_embeddings_of_short_and_long_44k_stereo_clips(scorer: ClapScorer) -> None:
    clips = [_clip(2.0, 0), _clip(12.0, 1)]
    first = scorer.audio_embeddings(clips, TANGOFLUX_RATE)
    _assert_unit_rows(first, 2, scorer.dimension)
    np.testing.assert_array_equal(first, scorer.audio_embeddings(clips, TANGOFLUX_RATE))
    alone = np.concatenate([scorer.audio_embeddings([c], TANGOFLUX_RATE) for c in clips])
    np.testing.assert_allclose(first, alone, atol=1e-5)
    assert scorer.audio_embeddings([], TANGOFLUX_RATE).shape == (0, scorer.dimension)


def test_audio_is_downmixed_and_resampled(scorer: ClapScorer) -> None:
    stereo = _clip(2.0, 2)
    mono = stereo.mean(axis=0)
    from_stereo = scorer.audio_embeddings([stereo], TANGOFLUX_RATE)
    np.testing.assert_allclose(from_stereo, scorer.audio_embeddings([mono], TANGOFLUX_RATE), atol=1e-6)
    np.testing.assert_allclose(
        from_stereo, scorer.audio_embeddings([mono[None, :]], TANGOFLUX_RATE), atol=1e-6
    )
    # The same sound given at 48 kHz lands (nearly) on the same embedding.
    at_48k = _clip(2.0, 2, rate=CLAP_SAMPLE_RATE)
    native = scorer.audio_embeddings([at_48k], CLAP_SAMPLE_RATE)
    assert float(native[0] @ from_stereo[0]) > 0.99


def test_long_clips_are_covered_by_evenly_spaced_ten_second_windows() -> None:
    second = CLAP_SAMPLE_RATE
    window = 10 * second
    samples = np.arange(12 * second)
    starts = [int(w[0]) for w in _windows(samples, window)]
    assert starts == [0, 2 * second]
    assert [int(w[0]) for w in _windows(np.arange(30 * second), window)] == [0, window, 2 * window]
    assert all(len(w) == window for w in _windows(np.arange(25 * second + 7), window))
    assert len(_windows(np.arange(window), window)) == 1
    assert len(_windows(np.arange(3), window)) == 1


def test_similarity_is_one_cosine_per_clip_with_the_embeddings(scorer: ClapScorer) -> None:
    clips = [_clip(2.0, 3), _clip(4.0, 4), _clip(12.0, 5)]
    scores, audio = scorer.similarity(PROMPT, clips, TANGOFLUX_RATE)
    assert len(scores) == 3 and all(isinstance(s, float) and -1.0 <= s <= 1.0 for s in scores)
    np.testing.assert_array_equal(audio, scorer.audio_embeddings(clips, TANGOFLUX_RATE))
    text = scorer.text_embeddings([PROMPT])[0]
    np.testing.assert_allclose(scores, audio @ text, atol=1e-5)
    assert scorer.similarity(PROMPT, [], TANGOFLUX_RATE)[0] == []


@pytest.mark.parametrize(
    ("clip", "rate"),
    [
        (np.zeros((2, 0), np.float32), TANGOFLUX_RATE),
        (np.zeros((1, 2, 100), np.float32), TANGOFLUX_RATE),
        (np.full((1, 100), np.nan, np.float32), TANGOFLUX_RATE),
        (np.zeros((1, 100), np.float32), 0),
    ],
)
def test_bad_audio_is_rejected(scorer: ClapScorer, clip: np.ndarray, rate: int) -> None:
    with pytest.raises(ValueError):
        scorer.audio_embeddings([clip], rate)


# --- directories -------------------------------------------------------------------------------


def _copy(tiny_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / "copy"))


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(model_dir / WEIGHTS_FILE))


def _remove(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(text)


def _truncate_weights(d: Path) -> None:
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


def _edit_state(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        state = _state(d)
        edit(state)
        safetensors.torch.save_file(state, str(d / WEIGHTS_FILE))

    return apply


def _edit_json(name: str, **changes: Any) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        data = json.loads((d / name).read_text())
        data.update(changes)
        (d / name).write_text(json.dumps(data))

    return apply


_LINEAR1 = "audio_projection.linear1.weight"

BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "no config": (_remove(CONFIG_FILE), CONFIG_FILE),
    "config not json": (_write(CONFIG_FILE, "{"), CONFIG_FILE),
    "config of another model": (_edit_json(CONFIG_FILE, model_type="t5"), CONFIG_FILE),
    "no weights": (_remove(WEIGHTS_FILE), WEIGHTS_FILE),
    "truncated weights": (_truncate_weights, WEIGHTS_FILE),
    "weight missing": (_edit_state(lambda s: s.pop(_LINEAR1)), WEIGHTS_FILE),
    "unexpected weight": (_edit_state(lambda s: s.update(extra=torch.zeros(1))), WEIGHTS_FILE),
    "wrong shape": (_edit_state(lambda s: s.update({_LINEAR1: torch.zeros(2, 2)})), WEIGHTS_FILE),
    "no tokenizer.json": (_remove("tokenizer.json"), "tokenizer"),
    "garbage tokenizer.json": (_write("tokenizer.json", "not a tokenizer"), "tokenizer"),
    "no feature extractor": (_remove(FEATURE_EXTRACTOR_FILE), FEATURE_EXTRACTOR_FILE),
    "44.1 kHz extractor": (
        _edit_json(FEATURE_EXTRACTOR_FILE, sampling_rate=44100),
        FEATURE_EXTRACTOR_FILE,
    ),
    "bad marker": (_edit_json(APPLIANCE_FILE, random_weights="yes"), APPLIANCE_FILE),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_directory_raises_model_error_naming_the_file(
    tiny_dir: Path, tmp_path: Path, case: str
) -> None:
    damage, named = BROKEN[case]
    model_dir = _copy(tiny_dir, tmp_path)
    damage(model_dir)
    with pytest.raises(ModelError) as info:
        ClapScorer.from_dir(model_dir)
    assert named in str(info.value)


def test_missing_directory_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        ClapScorer.from_dir(tmp_path / "absent")


def test_config_defined_buffers_may_be_absent_and_legacy_bin_loads(
    tiny_dir: Path, tmp_path: Path, scorer: ClapScorer
) -> None:
    model_dir = _copy(tiny_dir, tmp_path)
    state = {k: v for k, v in _state(model_dir).items() if not _is_computed(k)}
    assert any(k.endswith(".relative_position_index") for k in _state(model_dir))
    (model_dir / WEIGHTS_FILE).unlink()
    torch.save(state, model_dir / LEGACY_WEIGHTS_FILE)
    (model_dir / APPLIANCE_FILE).unlink()
    loaded = ClapScorer.from_dir(model_dir)
    assert loaded.name == "copy" and loaded.is_random is False
    clip = [_clip(2.0, 6)]
    # same weights, another load path: equal up to float32 rounding of the recomputed buffers
    np.testing.assert_allclose(
        loaded.audio_embeddings(clip, TANGOFLUX_RATE), scorer.audio_embeddings(clip, TANGOFLUX_RATE),
        rtol=1e-5, atol=1e-6,
    )
    np.testing.assert_allclose(loaded.text_embeddings([PROMPT]), scorer.text_embeddings([PROMPT]),
                               rtol=1e-5, atol=1e-6)


# --- the real checkpoint's layout (meta device: nothing allocated) -----------------------------

# laion/clap-htsat-unfused's config.json as transformers 4.27 wrote it: the real sizes plus
# keys transformers 5 no longer has (a sample of the generic and CLAP-specific legacy ones).
_LEGACY = {
    "_name_or_path": "",
    "architectures": None,
    "bad_words_ids": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "max_length": 20,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 50,
    "torch_dtype": None,
    "transformers_version": "4.27.0.dev0",
}
REAL_CONFIG: dict[str, Any] = {
    "architectures": ["ClapModel"],
    "model_type": "clap",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "logit_scale_init_value": 14.285714285714285,
    "num_hidden_layers": 16,
    "projection_dim": 512,
    "projection_hidden_act": "relu",
    "torch_dtype": "float32",
    "audio_config": {
        **_LEGACY,
        "model_type": "clap_audio_model",
        "depths": [2, 2, 6, 2],
        "enable_fusion": False,
        "enable_patch_fusion": False,
        "fusion_num_hidden_layers": 2,
        "fusion_type": None,
        "hidden_size": 768,
        "num_attention_heads": [4, 8, 16, 32],
        "num_classes": 527,
        "num_mel_bins": 64,
        "patch_embeds_hidden_size": 96,
        "patch_size": 4,
        "patch_stride": [4, 4],
        "projection_hidden_size": 768,
        "spec_size": 256,
        "window_size": 8,
    },
    "text_config": {
        **_LEGACY,
        "model_type": "clap_text_model",
        "classifier_dropout": None,
        "fusion_hidden_size": 768,
        "fusion_num_hidden_layers": 2,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "max_position_embeddings": 514,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "position_embedding_type": "absolute",
        "projection_hidden_size": 768,
        "type_vocab_size": 1,
        "use_cache": True,
        "vocab_size": 50265,
    },
}
# Key names and shapes of the public checkpoint (they are also what conversion tools map).
REAL_KEYS: dict[str, tuple[int, ...]] = {
    "logit_scale_a": (),
    "logit_scale_t": (),
    "text_model.embeddings.word_embeddings.weight": (50265, 768),
    "text_model.embeddings.position_embeddings.weight": (514, 768),
    "text_model.embeddings.position_ids": (1, 514),
    "text_model.encoder.layer.11.output.LayerNorm.bias": (768,),
    "text_model.pooler.dense.weight": (768, 768),
    "text_projection.linear1.weight": (512, 768),
    "text_projection.linear2.weight": (512, 512),
    "audio_model.audio_encoder.batch_norm.running_var": (64,),
    "audio_model.audio_encoder.batch_norm.num_batches_tracked": (),
    "audio_model.audio_encoder.patch_embed.proj.weight": (96, 1, 4, 4),
    "audio_model.audio_encoder.layers.0.blocks.0.attention.self.relative_position_bias_table": (
        225,
        4,
    ),
    "audio_model.audio_encoder.layers.0.blocks.0.attention.self.relative_position_index": (64, 64),
    "audio_model.audio_encoder.layers.2.blocks.5.attention.self.query.weight": (384, 384),
    "audio_model.audio_encoder.layers.2.downsample.reduction.weight": (768, 1536),
    "audio_model.audio_encoder.norm.weight": (768,),
    "audio_projection.linear1.weight": (512, 768),
    "audio_projection.linear2.bias": (512,),
}


def test_real_size_layout_passes_the_key_check_on_meta(tmp_path: Path) -> None:
    source = tmp_path / CONFIG_FILE
    config = _parse_config(json.loads(json.dumps(REAL_CONFIG)), source)
    model = _build_model(config, source)
    assert all(t.is_meta for t in model.state_dict().values())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 153.5
    expected = _shapes(model)
    for key, shape in REAL_KEYS.items():
        assert expected.get(key) == shape, key
    assert _check_keys(expected, expected, source) == []
    # Checkpoints written without the config-defined buffers still pass: those are recomputed.
    without = {k: v for k, v in expected.items() if not _is_computed(k)}
    recomputed = _check_keys(expected, without, source)
    assert "text_model.embeddings.position_ids" in recomputed and len(recomputed) == 15
    with pytest.raises(ModelError, match="missing"):
        _check_keys(expected, {k: v for k, v in expected.items() if k != "logit_scale_a"}, source)
    with pytest.raises(ModelError, match="unexpected"):
        _check_keys(expected, {**expected, "clap.logit_scale_a": ()}, source)
    with pytest.raises(ModelError, match="shape"):
        _check_keys(expected, {**expected, "text_projection.linear1.weight": (512, 1024)}, source)


def test_real_extractor_settings_get_the_non_fusion_truncation(tmp_path: Path) -> None:
    """The hub file may say "fusion" (the class default); a non-fusion model needs rand_trunc."""
    settings = {
        "feature_extractor_type": "ClapFeatureExtractor",
        "feature_size": 64,
        "fft_window_size": 1024,
        "frequency_max": 14000,
        "frequency_min": 50,
        "hop_length": 480,
        "max_length_s": 10,
        "padding": "repeatpad",
        "processor_class": "ClapProcessor",
        "sampling_rate": 48000,
        "top_db": None,
        "truncation": "fusion",
    }
    (tmp_path / FEATURE_EXTRACTOR_FILE).write_text(json.dumps(settings))
    config = _parse_config(REAL_CONFIG, tmp_path / CONFIG_FILE)
    extractor, truncation = _load_feature_extractor(tmp_path, config.audio_config)
    assert truncation == "rand_trunc" and extractor.nb_max_samples == 480000
