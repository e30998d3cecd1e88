"""A tiny random-weight Stable Audio 3, built offline with the real classes, for tests and demos.

Every component is the class the real snapshot names (``StableAudio3DiTModel``,
``AutoencoderSAME``, ``T5GemmaEncoderModel``, ``GemmaTokenizer``,
``StableAudio3DurationEmbedder``, ``FlowMatchEulerDiscreteScheduler`` with the distilled
checkpoints' stochastic sampling), only small, and the directory is written by
``StableAudio3Pipeline.save_pretrained``: the same layout and loading path as real weights.
The VAE keeps the real hop (patch 256 x stride 16 = 4096 samples a latent frame), so latent
lengths and trimming are those of the real model. The audio is noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from appliance.models.generator import SA3_NAME_FILE, TINY_NAMES
from appliance.models.tiny import _training_text

MODEL_NAME = TINY_NAMES["sa3"]

_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # Gemma's ids 0-4
_BYTE_TOKENS = [f"<0x{value:02X}>" for value in range(256)]  # Gemma's byte fallback pieces
_VOCAB_SIZE = 900
_WIDTH = 64  # text width = cross-attention token width = duration embedding width
_LATENT_DIM = 16
_MAX_DURATION_S = 120.0  # the small variants' limit
_NEAR_ZERO = ("prompt_padding_embedding",)


def _train_tokenizer(seed: int) -> Any:
    """A byte-fallback BPE trained on sound-effect words, handed to ``GemmaTokenizer``.

    Trained with Gemma's normaliser (spaces become ``▁``) and split before each ``▁`` so that
    merges stay inside words, as in Gemma's own vocabulary.
    """
    from transformers import GemmaTokenizer

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=_VOCAB_SIZE, special_tokens=_SPECIALS + _BYTE_TOKENS,
                                  show_progress=False)
    backend.train_from_iterator([f" {text}" for text in _training_text(seed)], trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return GemmaTokenizer(vocab=model["vocab"], merges=merges, model_max_length=256)


def _components(vocab_size: int) -> dict[str, Any]:
    """The pipeline's modules with small configs (random init from torch's RNG)."""
    from diffusers import (
        AutoencoderSAME,
        FlowMatchEulerDiscreteScheduler,
        StableAudio3DiTModel,
        StableAudio3DurationEmbedder,
    )
    from transformers import T5GemmaConfig, T5GemmaEncoderModel, T5GemmaModuleConfig

    module = T5GemmaModuleConfig(
        vocab_size=vocab_size, hidden_size=_WIDTH, intermediate_size=2 * _WIDTH,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        query_pre_attn_scalar=32, sliding_window=64,
    ).to_dict()
    text_config = T5GemmaConfig(encoder=module, decoder=module, is_encoder_decoder=False,
                                vocab_size=vocab_size)
    return {
        "text_encoder": T5GemmaEncoderModel(text_config),
        "vae": AutoencoderSAME(encoder_channels=8, encoder_c_mults=(2,),
                               encoder_transformer_depths=(1,), latent_dim=_LATENT_DIM,
                               dim_heads=8, ff_mult=2),
        "duration_embedder": StableAudio3DurationEmbedder(
            output_dim=_WIDTH, fourier_dim=32, max_val=_MAX_DURATION_S),
        "transformer": StableAudio3DiTModel(
            io_channels=_LATENT_DIM, embed_dim=64, depth=1, num_heads=2, cond_token_dim=_WIDTH,
            global_cond_dim=_WIDTH, local_add_cond_dim=_LATENT_DIM + 1, timestep_features_dim=32,
            ff_mult=2.0, num_memory_tokens=4),
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
                                                     stochastic_sampling=True),
    }


def _randomise_zero_init(module: torch.nn.Module) -> None:
    """Give zero-initialised projections random values.

    The real classes zero their residual output projections (a fresh model starts as the
    identity) and start the VAE's resampling tokens near zero, where differential attention
    cancels out; untrained, the VAE decoder would then ignore its latents and the DiT the
    prompt, so every clip would be the same and no test could tell prompts or seeds apart.
    """
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            resampling_token = name.endswith("new_tokens")  # initialised at 1e-5
            if (tensor.dim() >= 2 and not tensor.any()) or resampling_token or name in _NEAR_ZERO:
                fan_in = max(1, tensor[0].numel()) if tensor.dim() >= 2 else tensor.numel()
                tensor.copy_(torch.randn_like(tensor) / fan_in**0.5)


def build_tiny_sa3(out_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny random SA3 snapshot into ``out_dir`` (created if needed) and return it.

    The weights depend on ``seed`` only; torch's global RNG is restored afterwards.
    """
    from diffusers import StableAudio3Pipeline

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = _components(len(tokenizer))
        for part in ("transformer", "vae"):
            _randomise_zero_init(parts[part])
    pipe = StableAudio3Pipeline(tokenizer=tokenizer, **parts)
    pipe.save_pretrained(str(out_dir))
    (out_dir / SA3_NAME_FILE).write_text(
        json.dumps({"model_name": MODEL_NAME, "random_weights": True, "seed": seed}, indent=2)
        + "\n", encoding="utf-8")
    return out_dir
