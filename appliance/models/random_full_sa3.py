"""Full-size Stable Audio 3 architectures with random weights, for benchmarks only.

The published configs sit in gated repositories that this build machine cannot read, so the
shapes come from Stability AI's own source (``Stability-AI/stable-audio-3``, MIT: its MLX
ports state the DiT constants, its model overview the parameter counts) and from diffusers'
documented defaults:

- ``small`` (``-small-sfx`` / ``-small-music``): DiT 1024 wide, 20 layers, 16 heads of 64,
  feed-forward 4096 (``ff_mult`` 4), standard attention (not differential), 64 memory
  tokens: 459 M parameters in diffusers' class, of which 26 M are the per-layer inpainting
  projections (``to_local_embed``); without them 433 M, the published figure. SAME-S
  autoencoder (``AutoencoderSAME`` defaults, 107 M).
- ``medium``: DiT 1536 wide, 24 layers, 24 heads, differential attention (the class
  defaults, 1,453 M); SAME-L (``encoder_channels`` 256, 12 layers, 8 sinusoidal decoder
  layers, 852 M).
- Both: T5Gemma ``b`` encoder (``google/t5gemma-b-b-ul2``: 768 wide, 12 layers, 12 heads of
  64, feed-forward 2048, 256,000-token vocabulary, 282 M).

Speed and memory are those of the real models (dense layers cost the same whatever their
values); the audio is noise. Only the tokenizer is the tiny one: the pipeline pads every
prompt to 256 tokens, so the text encoder sees the real sequence length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from appliance.models.generator import SA3_NAME_FILE

Variant = Literal["small", "medium"]
VARIANTS: tuple[Variant, ...] = ("small", "medium")
_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 256000, "hidden_size": 768, "intermediate_size": 2048,
    "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
    "head_dim": 64, "query_pre_attn_scalar": 64,
}


@dataclass(frozen=True)
class SA3Architecture:
    """The shapes of one published SA3 variant."""

    dit: dict[str, Any]
    vae: dict[str, Any] = field(default_factory=dict)
    max_duration_s: float = 120.0


ARCHITECTURES: dict[Variant, SA3Architecture] = {
    "small": SA3Architecture(
        dit={"embed_dim": 1024, "depth": 20, "num_heads": 16, "ff_mult": 4.0,
             "use_differential_attention": False}),
    "medium": SA3Architecture(
        dit={}, vae={"encoder_channels": 256, "encoder_transformer_depths": (12,),
                     "decoder_sinusoidal_blocks": (8,)}, max_duration_s=380.0),
}


def model_name(variant: Variant) -> str:
    return f"random-full-sa3-{variant}"


def full_size_sa3_components(variant: Variant, *, seed: int = 0,
                             dit_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pipeline's modules at full size (random init), ready for ``StableAudio3Pipeline``.

    ``dit_overrides`` changes DiT settings (for what-if measurements). torch's global RNG is
    restored afterwards.
    """
    from diffusers import (
        AutoencoderSAME,
        FlowMatchEulerDiscreteScheduler,
        StableAudio3DiTModel,
        StableAudio3DurationEmbedder,
    )
    from transformers import T5GemmaConfig, T5GemmaEncoderModel, T5GemmaModuleConfig

    from appliance.models.tiny_sa3 import _train_tokenizer

    arch = ARCHITECTURES[variant]
    text = T5GemmaModuleConfig(**_TEXT_ENCODER).to_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {
            "tokenizer": _train_tokenizer(seed),
            "text_encoder": T5GemmaEncoderModel(
                T5GemmaConfig(encoder=text, decoder=text, is_encoder_decoder=False)),
            "vae": AutoencoderSAME(**arch.vae),
            "duration_embedder": StableAudio3DurationEmbedder(output_dim=768,
                                                              max_val=arch.max_duration_s),
            "transformer": StableAudio3DiTModel(**{**arch.dit, **(dit_overrides or {})}),
            "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
                                                         stochastic_sampling=True),
        }


def parameter_counts(components: dict[str, Any]) -> dict[str, int]:
    """Parameters per module (the tokenizer and scheduler have none)."""
    return {name: sum(p.numel() for p in module.parameters())
            for name, module in components.items() if isinstance(module, torch.nn.Module)}


def build_full_size_random_sa3(out_dir: Path, variant: Variant = "small", *,
                               seed: int = 0) -> Path:
    """Write a random full-size snapshot in the appliance's SA3 layout (skipped when complete).

    It loads through ``StableAudio3Generator.from_dir`` as real weights would. Small: about
    3.4 GB in float32; medium: about 10 GB.
    """
    from diffusers import StableAudio3Pipeline

    out_dir = Path(out_dir)
    if (out_dir / SA3_NAME_FILE).is_file():
        return out_dir
    StableAudio3Pipeline(**full_size_sa3_components(variant, seed=seed)).save_pretrained(
        str(out_dir))
    (out_dir / SA3_NAME_FILE).write_text(  # last: marks the build complete
        json.dumps({"model_name": model_name(variant), "random_weights": True, "seed": seed},
                   indent=2) + "\n", encoding="utf-8")
    return out_dir
