"""GPU generation speed of the full-size TangoFlux and Stable Audio 3 architectures (random
weights), both families in turn (``--model`` picks one).

TangoFlux: one 10 s clip, 25 steps, guidance 4.5, batch 1, on one CUDA device, in one run:

- ours, float32, generating only the latent frames 10 s needs (``latent_frames="needed"``);
- ours, float32, the reference's fixed 30 s of latents then trim (``latent_frames="reference"``);
- ours, float16 and bfloat16 (needed frames);
- ours, bfloat16 with ``torch.compile`` on the transformer;
- a straight re-implementation of the reference inference loop (float32, eager, global RNG,
  645 latent frames = 30 s, VAE decode of all of it, then trim to 10 s) on the same weights.

SA3 (``--sa3-variants small,medium``): the same 10 s clip at the distilled checkpoints'
setting (8 steps, no classifier-free guidance), in float32, float16, bfloat16 and bfloat16 with
``torch.compile`` on the DiT (``sa3_<variant>_fp32`` ...). SA3's latents are as long as the
clip, so there is no reference-length variant.

Each variant is loaded through the appliance's loader (``TangoFluxGenerator.from_dir``,
``StableAudio3Generator.from_dir``), warmed up once (for ``torch.compile``: compiled), then
timed ``--repeats`` times with CUDA synchronisation; the median is reported with the
real-time factor (audio seconds per wall second) and the peak GPU memory. The models are
built once in ``--work-dir`` (TangoFlux about 4 GB, SA3 small 3.4 GB, medium about 10 GB).

    .venv/bin/python bench/gpu_generation.py [--work-dir /var/tmp/gen-full] [--repeats 3]
    .venv/bin/python bench/gpu_generation.py --model sa3 --sa3-variants medium

Without CUDA it refuses (exit 2). ``--smoke-cpu`` runs every code path on the tiny models on
the CPU with 2 steps, to check the script itself; its figures mean nothing.

Last line: ``ours_fp32_s=… ours_fp32_reference_len_s=… ours_fp16_s=… ours_bf16_s=…
ours_bf16_compile_s=… reference_fp32_s=… best_rtf=… speedup_vs_reference=…
sa3_small_fp32_s=… … sa3_small_best_rtf=… sa3_medium_…`` (the families run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.models.random_full_sa3 import VARIANTS as SA3_VARIANTS
from appliance.models.stable_audio3 import StableAudio3Generator
from appliance.models.tangoflux import SAMPLE_RATE, TangoFluxGenerator

PROMPT = "a thunderstorm with heavy rain and distant rolling thunder"
SA3_STEPS = 8  # the distilled checkpoints' default


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["both", "tangoflux", "sa3"], default="both")
    parser.add_argument("--sa3-variants", default="small,medium",
                        help=f"comma-separated, of {','.join(SA3_VARIANTS)}")
    parser.add_argument("--work-dir", type=Path, help="where the full-size models are built (kept)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=25, help="TangoFlux's steps (SA3: 8)")
    parser.add_argument("--guidance", type=float, default=4.5, help="TangoFlux's (SA3: off)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated variant names to leave out")
    parser.add_argument("--smoke-cpu", action="store_true",
                        help="tiny model on the CPU, 2 steps: checks the script, measures nothing")
    return parser.parse_args()


def reference_generate(gen: TangoFluxGenerator, prompt: str, *, duration_s: float, steps: int,
                       guidance_scale: float, seed: int) -> np.ndarray:
    """The reference's inference, re-implemented: always the full latent length, then trim.

    Float32 and eager; noise from the global RNG; the negative prompt "" padded to the
    prompt's token length; pooled text = NaN-masked mean; timestep passed as one value for
    the whole guided batch; the VAE decodes all 645 frames (30 s) before the cut.
    """
    core, vae, tokenizer, device = gen._core, gen._vae, gen._tokenizer, gen.device
    frames = gen._config.audio_seq_len
    with torch.no_grad():
        cond = tokenizer([prompt], max_length=tokenizer.model_max_length, padding=True,
                         truncation=True, return_tensors="pt")
        cond_ids, cond_mask = cond.input_ids.to(device), cond.attention_mask.to(device)
        cond_states = core.text_encoder(input_ids=cond_ids, attention_mask=cond_mask)[0]
        empty = tokenizer([""], max_length=cond_states.shape[1], padding="max_length",
                          truncation=True, return_tensors="pt")
        empty_ids, empty_mask = empty.input_ids.to(device), empty.attention_mask.to(device)
        empty_states = core.text_encoder(input_ids=empty_ids, attention_mask=empty_mask)[0]
        states = torch.cat([empty_states, cond_states])
        mask = torch.cat([empty_mask, cond_mask]).bool()
        masked = torch.where(mask.unsqueeze(-1).expand_as(states), states,
                             torch.tensor(float("nan"), device=device))
        pooled = core.fc(torch.nanmean(masked, dim=1))
        duration = core.duration_emebdder(torch.tensor([duration_s], device=device))
        context = torch.cat([states, duration.repeat(2, 1, 1)], dim=1)

        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps).tolist(), device=device)
        torch.manual_seed(seed)
        latents = torch.randn(1, frames, 64).to(device)
        txt_ids = torch.zeros(context.shape[1], 3, device=device)
        audio_ids = torch.arange(frames, device=device, dtype=torch.float32)[:, None].repeat(1, 3)
        for timestep in scheduler.timesteps:
            prediction = core.transformer(
                hidden_states=torch.cat([latents, latents]),
                timestep=torch.tensor([timestep / 1000], device=device),
                guidance=None, pooled_projections=pooled, encoder_hidden_states=context,
                txt_ids=txt_ids, img_ids=audio_ids, return_dict=False,
            )[0]
            unconditional, conditional = prediction.chunk(2)
            prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = scheduler.step(prediction, timestep, latents).prev_sample
        wave = vae.decode(latents.transpose(2, 1)).sample.cpu()[0]
    return np.asarray(wave[:, : int(duration_s * SAMPLE_RATE)].numpy(), dtype=np.float32)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(run: Callable[[], Any], device: str, repeats: int) -> tuple[float, float]:
    """(median seconds, peak GPU memory in GB) over ``repeats`` runs after one warm-up."""
    run()
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else 0.0
    return statistics.median(times), peak


def main() -> int:
    args = _parse()
    device = "cpu" if args.smoke_cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU and torch sees none "
              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
              "use --smoke-cpu to check the script on the tiny model", file=sys.stderr)
        return 2
    if args.smoke_cpu:
        args.steps, args.repeats, args.duration = 2, 1, min(args.duration, 2.0)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    fields: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        work = args.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if args.model in ("both", "tangoflux"):
            model_dir = _tangoflux_dir(work, args.smoke_cpu)
            results = _run_variants(model_dir, device, args, skip)
            fields.update(_report(results, device, args.duration,
                                  f"TangoFlux, {args.steps} steps, guidance {args.guidance}"))
            if "reference_fp32" in results and any(n.startswith("ours") for n in results):
                best = min(s for name, (s, _, _) in results.items() if name.startswith("ours"))
                fields["speedup_vs_reference"] = f"{results['reference_fp32'][0] / best:.2f}"
        if args.model in ("both", "sa3"):
            for variant in [v.strip() for v in args.sa3_variants.split(",") if v.strip()]:
                sa3_dir = _sa3_dir(work, variant, args.smoke_cpu)
                results = _run_sa3_variants(sa3_dir, variant, device, args, skip)
                steps = 2 if args.smoke_cpu else SA3_STEPS
                fields.update(_report(results, device, args.duration,
                                      f"SA3 {variant}, {steps} steps, no guidance",
                                      best_key=f"sa3_{variant}_best_rtf"))
    print(" ".join(f"{key}={value}" for key, value in fields.items()))
    return 0


def _tangoflux_dir(work: Path, smoke: bool) -> Path:
    if smoke:
        from appliance.models.tiny import build_tiny_tangoflux

        model_dir = work / "tiny-tangoflux"
        if not (model_dir / "config.json").is_file():
            build_tiny_tangoflux(model_dir)
        return model_dir
    from appliance.models.random_full import build_full_size_random_tangoflux

    started = time.perf_counter()
    model_dir = build_full_size_random_tangoflux(work / "random-full-tangoflux")
    print(f"model ready in {time.perf_counter() - started:.1f} s: {model_dir}", flush=True)
    return model_dir


def _sa3_dir(work: Path, variant: str, smoke: bool) -> Path:
    if variant not in SA3_VARIANTS:
        raise SystemExit(f"error: --sa3-variants: {variant!r} is not one of {SA3_VARIANTS}")
    if smoke:  # every variant's code path on the tiny build
        from appliance.models.tiny_sa3 import build_tiny_sa3

        model_dir = work / "tiny-sa3"
        return model_dir if (model_dir / "appliance.json").is_file() else build_tiny_sa3(model_dir)
    from appliance.models.random_full_sa3 import build_full_size_random_sa3

    started = time.perf_counter()
    model_dir = build_full_size_random_sa3(work / f"random-full-sa3-{variant}", variant)
    print(f"model ready in {time.perf_counter() - started:.1f} s: {model_dir}", flush=True)
    return model_dir


def _report(results: dict[str, tuple[float, float, float]], device: str, audio: float,
            title: str, best_key: str = "best_rtf") -> dict[str, str]:
    """Print one family's table; its name=value fields."""
    print(f"{audio:g} s clip, {title}, batch 1, "
          f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU (smoke test)'}")
    for name, (seconds, peak, load_s) in results.items():
        print(f"{name:28s} {seconds:8.3f} s  real-time factor {audio / seconds:7.2f}x  "
              f"peak {peak:5.1f} GB  load {load_s:.2f} s")
    fields = {f"{name}_s": f"{seconds:.3f}" for name, (seconds, _, _) in results.items()}
    ours = [s for name, (s, _, _) in results.items() if name != "reference_fp32"]
    if ours:
        fields[best_key] = f"{audio / min(ours):.2f}"
    return fields


def _measure(name: str, run: Callable[[], Any], device: str, repeats: int,
             load_s: float) -> tuple[float, float, float]:
    """(median seconds, peak GB, load seconds) of one variant, printed as it comes."""
    seconds, peak = _time(run, device, repeats)
    print(f"{name}: {seconds:.3f} s (peak {peak:.1f} GB)", flush=True)
    return seconds, peak, load_s


def _free(device: str) -> None:
    """Before the next variant: no compiled graph of this one kept, its GPU memory released."""
    torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()


def _run_sa3_variants(model_dir: Path, variant: str, device: str, args: argparse.Namespace,
                      skip: set[str]) -> dict[str, tuple[float, float, float]]:
    """SA3 in each precision, through ``StableAudio3Generator.from_dir``."""
    steps = 2 if args.smoke_cpu else SA3_STEPS
    results: dict[str, tuple[float, float, float]] = {}
    for suffix, dtype, compiled in (("fp32", "float32", False), ("fp16", "float16", False),
                                    ("bf16", "bfloat16", False), ("bf16_compile", "bfloat16", True)):
        name = f"sa3_{variant}_{suffix}"
        if name in skip or f"sa3_{suffix}" in skip:
            continue
        started = time.perf_counter()
        gen = StableAudio3Generator.from_dir(model_dir, device=device, dtype=dtype)
        load_s = time.perf_counter() - started
        if compiled:
            gen.pipeline.transformer = torch.compile(gen.pipeline.transformer)

        def run(gen: StableAudio3Generator = gen) -> Any:
            return gen.generate(PROMPT, duration_s=args.duration, steps=steps,
                                guidance_scale=1.0, seed=0)

        results[name] = _measure(name, run, device, args.repeats, load_s)
        del gen, run
        _free(device)
    return results


def _run_variants(model_dir: Path, device: str, args: argparse.Namespace,
                  skip: set[str]) -> dict[str, tuple[float, float, float]]:
    variants: list[tuple[str, str, str, bool]] = [  # name, dtype, latent_frames, compile
        ("ours_fp32", "float32", "needed", False),
        ("ours_fp32_reference_len", "float32", "reference", False),
        ("reference_fp32", "float32", "reference", False),
        ("ours_fp16", "float16", "needed", False),
        ("ours_bf16", "bfloat16", "needed", False),
        ("ours_bf16_compile", "bfloat16", "needed", True),
    ]
    results: dict[str, tuple[float, float, float]] = {}
    for name, dtype, frames, compiled in variants:
        if name in skip:
            continue
        started = time.perf_counter()
        gen = TangoFluxGenerator.from_dir(model_dir, device=device, dtype=dtype,
                                          latent_frames=frames)  # type: ignore[arg-type]
        load_s = time.perf_counter() - started
        if compiled:
            gen._core.transformer = torch.compile(gen._core.transformer)
        if name == "reference_fp32":
            def run(gen: TangoFluxGenerator = gen) -> Any:
                return reference_generate(gen, PROMPT, duration_s=args.duration, steps=args.steps,
                                          guidance_scale=args.guidance, seed=0)
        else:
            def run(gen: TangoFluxGenerator = gen) -> Any:
                return gen.generate(PROMPT, duration_s=args.duration, steps=args.steps,
                                    guidance_scale=args.guidance, seed=0)
        results[name] = _measure(name, run, device, args.repeats, load_s)
        del gen, run
        _free(device)
    return results


if __name__ == "__main__":
    sys.exit(main())
