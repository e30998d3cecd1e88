"""A full-size TangoFlux with random weights, for benchmarks where the real weights are absent.

Same shapes as the published checkpoint (1.015 B parameters: Flux 6+18 layers, the
flan-t5-large encoder, the default Oobleck VAE), written in the published layout so that it
loads through :meth:`TangoFluxGenerator.from_dir` exactly as the real files would. Only the
tokenizer is the tiny one (flan-t5-large's files cannot be fetched here); it tokenizes fine
and its ids fall inside the 32128-token embedding. Speed and memory are those of the real
model; the audio is noise. About 4 GB on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors.torch
from transformers import T5Config

from appliance.models.tangoflux import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    TEXT_ENCODER_DIR,
    TIED_EMBEDDING_KEY,
    VAE_FILE,
    _build_core,
    _build_vae,
    _parse_config,
)
from appliance.models.tiny import (
    _OUTPUT_GAIN,
    _OUTPUT_GAIN_KEY,
    _random_state,
    _train_tokenizer,
    _write_json,
)

MODEL_NAME = "random-full-tangoflux"

# The published config.json (NOTES-ml.md), plus the name the appliance reports.
FULL_CONFIG: dict[str, Any] = {
    "model_name": MODEL_NAME,
    "num_layers": 6,
    "num_single_layers": 18,
    "in_channels": 64,
    "attention_head_dim": 128,
    "joint_attention_dim": 1024,
    "num_attention_heads": 8,
    "audio_seq_len": 645,
    "max_duration": 30,
    "uncondition": False,
    "text_encoder_name": "google/flan-t5-large (shape; tiny tokenizer)",
}


def flan_t5_large_config() -> T5Config:
    """google/flan-t5-large's encoder shape."""
    return T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24,
                    num_decoder_layers=24, num_heads=16, feed_forward_proj="gated-gelu",
                    dropout_rate=0.0, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                    decoder_start_token_id=0)


def build_full_size_random_tangoflux(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the random full-size model into ``out_dir`` (skipped when already complete)."""
    out_dir = Path(out_dir)
    if all((out_dir / name).is_file() for name in (CONFIG_FILE, CHECKPOINT_FILE, VAE_FILE)):
        return out_dir
    text_dir = out_dir / TEXT_ENCODER_DIR
    text_dir.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(seed).save_pretrained(str(text_dir))
    t5_config = flan_t5_large_config()
    t5_config.save_pretrained(str(text_dir))
    core = _build_core(_parse_config(FULL_CONFIG, out_dir / CONFIG_FILE), t5_config)
    shapes = {k: v.shape for k, v in core.state_dict().items() if k != TIED_EMBEDDING_KEY}
    state = _random_state(shapes, seed)
    safetensors.torch.save_file(state, str(out_dir / CHECKPOINT_FILE), metadata={"format": "pt"})
    del state
    vae = _build_vae({})
    vae_state = _random_state({k: v.shape for k, v in vae.state_dict().items()}, seed + 1)
    vae_state[_OUTPUT_GAIN_KEY] *= _OUTPUT_GAIN  # an ordinary output level, as in the tiny build
    safetensors.torch.save_file(vae_state, str(out_dir / VAE_FILE), metadata={"format": "pt"})
    _write_json(out_dir / CONFIG_FILE, FULL_CONFIG)  # last: marks the build complete
    return out_dir
