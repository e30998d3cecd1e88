"""Seconds of CPU compute per second of audio for Stable Audio 3: the tiny build, and a
full-size architecture with random weights (speed does not depend on the weights' values).

The full-size shapes are those of ``appliance/models/random_full_sa3.py`` (``--variant small``:
the 433 M DiT of ``-small-sfx`` / ``-small-music`` with SAME-S and the T5Gemma-b encoder;
``medium``: the 1.4 B DiT with SAME-L). ``--dit-width/--dit-depth/--dit-heads`` override the
DiT for what-if runs. The clip runs at the distilled checkpoints' default: 8 steps, no
classifier-free guidance. One warm-up (1 step) first, then the timed run; the time is split
into text encoding, the DiT (all steps) and the VAE decode.

    .venv/bin/python bench/sa3_cpu_rtf.py [--seconds 4] [--steps 8] [--variant small] [--skip-full]
Last line: name=value pairs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from appliance.models.generator import load_generator
from appliance.models.random_full_sa3 import (
    VARIANTS,
    full_size_sa3_components,
    parameter_counts,
)
from appliance.models.tiny_sa3 import build_tiny_sa3


def _time_generation(generate: Callable[[float, int], Any], seconds: float, steps: int) -> float:
    generate(seconds, 1)  # warm-up: first-call allocations
    started = time.perf_counter()
    generate(seconds, steps)
    return time.perf_counter() - started


def _timed(totals: dict[str, float], name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` wrapped so that its seconds add up in ``totals[name]``."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - started
    return wrapper


def _full_pipeline(args: argparse.Namespace, totals: dict[str, float]) -> tuple[Any, dict[str, int]]:
    from diffusers import StableAudio3Pipeline

    overrides = {key: value for key, value in (("embed_dim", args.dit_width),
                                               ("depth", args.dit_depth),
                                               ("num_heads", args.dit_heads)) if value}
    parts = full_size_sa3_components(args.variant, dit_overrides=overrides)
    counts = parameter_counts(parts)
    pipe = StableAudio3Pipeline(**parts).to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    # instance attributes: the pipeline calls these by attribute, so the wrappers see every call
    pipe.text_encoder.forward = _timed(totals, "text", pipe.text_encoder.forward)
    pipe.transformer.forward = _timed(totals, "dit", pipe.transformer.forward)
    pipe.vae.decode = _timed(totals, "vae", pipe.vae.decode)
    return pipe, counts


def _measure_full(args: argparse.Namespace, figures: dict[str, str]) -> None:
    totals: dict[str, float] = defaultdict(float)
    started = time.perf_counter()
    pipe, counts = _full_pipeline(args, totals)
    total = sum(counts.values())
    print(f"full-size SA3 {args.variant} architecture: {total / 1e6:.0f} M parameters ("
          + ", ".join(f"{name} {count / 1e6:.0f} M" for name, count in counts.items())
          + f"), built in {time.perf_counter() - started:.1f} s", flush=True)

    def run(seconds: float, steps: int) -> None:
        totals.clear()
        with torch.inference_mode():
            pipe("rain on a roof", duration=seconds, num_inference_steps=steps,
                 guidance_scale=1.0, generator=torch.Generator().manual_seed(0))

    elapsed = _time_generation(run, args.seconds, args.steps)
    print(f"full-size SA3 {args.variant} (random weights): {args.seconds:g} s of audio, "
          f"{args.steps} steps in {elapsed:.2f} s: text {totals['text']:.2f} s, DiT "
          f"{totals['dit']:.2f} s ({totals['dit'] / args.steps:.2f} s a step), VAE decode "
          f"{totals['vae']:.2f} s", flush=True)
    figures.update({
        "full_params_m": f"{total / 1e6:.0f}",
        "full_dit_params_m": f"{counts['transformer'] / 1e6:.0f}",
        "full_s": f"{elapsed:.2f}",
        "full_dit_step_s": f"{totals['dit'] / args.steps:.3f}",
        "full_vae_s": f"{totals['vae']:.2f}",
        "full_rtf": f"{elapsed / args.seconds:.3f}",
    })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=8, help="8: the distilled default")
    parser.add_argument("--variant", choices=VARIANTS, default="small")
    parser.add_argument("--dit-width", type=int, default=0, help="0: the variant's")
    parser.add_argument("--dit-depth", type=int, default=0, help="0: the variant's")
    parser.add_argument("--dit-heads", type=int, default=0, help="0: the variant's")
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    figures: dict[str, str] = {"threads": str(torch.get_num_threads())}

    with tempfile.TemporaryDirectory() as tmp:
        tiny = load_generator(build_tiny_sa3(Path(tmp) / "tiny-sa3"))
        elapsed = _time_generation(
            lambda s, n: tiny.generate("rain on a roof", duration_s=s, steps=n,
                                       guidance_scale=1.0, seed=0), args.seconds, args.steps)
    figures["tiny_rtf"] = f"{elapsed / args.seconds:.3f}"
    print(f"tiny SA3: {args.seconds:g} s of audio, {args.steps} steps in {elapsed:.2f} s", flush=True)
    if not args.skip_full:
        _measure_full(args, figures)
    print(" ".join(f"{name}={value}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
