"""Seconds of CPU compute per second of audio for Stable Audio 3: the tiny build, and the
full-size architecture with random weights (speed does not depend on the weights' values).

The full-size configuration is an assumption: the published small configs could not be read
here (gated repositories, no hub). It uses AutoencoderSAME's defaults (SAME-S, which diffusers
documents as the small models' VAE), a T5Gemma "b" encoder (768 wide, 12 layers, the
pipeline's 768-d text states) and StableAudio3DiTModel's defaults (1536 wide, 24 layers) unless
``--dit-width/--dit-depth`` say otherwise. The parameter count it prints says how it compares
with the 433 M of the small models.

    .venv/bin/python bench/sa3_cpu_rtf.py [--seconds 4] [--steps 8] [--skip-full]
Last line: name=value pairs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from appliance.models.generator import load_generator
from appliance.models.tiny_sa3 import build_tiny_sa3


def _time_generation(generate: Any, seconds: float, steps: int) -> float:
    generate(seconds, 1)  # warm-up: first-call allocations
    started = time.perf_counter()
    generate(seconds, steps)
    return time.perf_counter() - started


def _full_pipeline(width: int, depth: int) -> tuple[Any, int]:
    from diffusers import (
        AutoencoderSAME,
        FlowMatchEulerDiscreteScheduler,
        StableAudio3DiTModel,
        StableAudio3DurationEmbedder,
        StableAudio3Pipeline,
    )
    from transformers import T5GemmaConfig, T5GemmaEncoderModel, T5GemmaModuleConfig

    from appliance.models.tiny_sa3 import _train_tokenizer

    text = T5GemmaModuleConfig(vocab_size=256000, hidden_size=768, intermediate_size=3072,
                               num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                               head_dim=64, query_pre_attn_scalar=64).to_dict()
    parts = {
        "text_encoder": T5GemmaEncoderModel(T5GemmaConfig(encoder=text, decoder=text,
                                                          is_encoder_decoder=False)),
        "vae": AutoencoderSAME(),
        "duration_embedder": StableAudio3DurationEmbedder(output_dim=768, max_val=120.0),
        "transformer": StableAudio3DiTModel(embed_dim=width, depth=depth, num_heads=width // 64),
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
                                                     stochastic_sampling=True),
    }
    params = sum(p.numel() for m in parts.values() if isinstance(m, torch.nn.Module)
                 for p in m.parameters())
    pipe = StableAudio3Pipeline(tokenizer=_train_tokenizer(0), **parts).to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe, params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--dit-width", type=int, default=1536)
    parser.add_argument("--dit-depth", type=int, default=24)
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    figures: dict[str, str] = {"threads": str(torch.get_num_threads())}

    with tempfile.TemporaryDirectory() as tmp:
        tiny = load_generator(build_tiny_sa3(Path(tmp) / "tiny-sa3"))
        elapsed = _time_generation(
            lambda s, n: tiny.generate("rain on a roof", duration_s=s, steps=n,
                                       guidance_scale=1.0, seed=0), args.seconds, args.steps)
    figures["tiny_rtf"] = f"{elapsed / args.seconds:.3f}"
    print(f"tiny SA3: {args.seconds} s of audio, {args.steps} steps in {elapsed:.2f} s", flush=True)

    if not args.skip_full:
        started = time.perf_counter()
        pipe, params = _full_pipeline(args.dit_width, args.dit_depth)
        print(f"full-size architecture: {params / 1e6:.0f} M parameters, built in "
              f"{time.perf_counter() - started:.1f} s", flush=True)

        def run(seconds: float, steps: int) -> None:
            with torch.inference_mode():
                pipe("rain on a roof", duration=seconds, num_inference_steps=steps,
                     generator=torch.Generator().manual_seed(0))

        elapsed = _time_generation(run, args.seconds, args.steps)
        figures["full_params_m"] = f"{params / 1e6:.0f}"
        figures["full_rtf"] = f"{elapsed / args.seconds:.3f}"
        print(f"full-size SA3 architecture (random weights): {args.seconds} s, {args.steps} steps "
              f"in {elapsed:.2f} s", flush=True)
    print(" ".join(f"{name}={value}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
