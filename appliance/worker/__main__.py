"""The worker subprocess: load the generator and the CLAP scorer once, then serve forever.

Started by the supervisor as ``python -m appliance.worker`` with ``CUDA_VISIBLE_DEVICES``
set for this process alone. Its stdout carries frames only: the real stdout is kept for
the channel and fd 1 is pointed at stderr, so a library that prints cannot corrupt it.

One job: generate ``candidates`` clips in one batch (a little longer for loops, then the
equal-power tail-into-head cross-fade), score each against the prompt with CLAP, and send
the best one. The result frame's payload is the best clip's float32 PCM followed by its
float32 CLAP audio embedding (``clap_dim`` values); the header carries every score.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from appliance.audio import make_seamless_loop
from appliance.errors import ModelError
from appliance.logs import configure_logging
from appliance.worker.ipc import ChannelClosed, Frame, read_frame, write_frame

log = logging.getLogger("appliance.worker")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    channel_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    configure_logging(args.log_level, args.log_format, component=f"worker-{args.name}")
    channel_in = sys.stdin.buffer
    try:
        generator = _load_generator(args)
        scorer = _load_scorer(args)
    except Exception as exc:  # any load failure is reported, then the worker exits
        if isinstance(exc, ModelError):  # a directory that is not a model: the message says it all
            log.error("model load failed: %s", exc)
        else:
            log.exception("model load failed")
        _send(channel_out, {"type": "fatal", "code": "model_error", "message": str(exc)})
        return 3
    try:
        _serve(generator, scorer, args, channel_in, channel_out)
    except ChannelClosed:
        log.info("supervisor closed the channel; exiting")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m appliance.worker")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--name", default="0")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--latent-frames", default="needed", choices=["needed", "reference"])
    parser.add_argument("--loop-crossfade-s", type=float, default=0.25)
    parser.add_argument("--build-tiny-if-missing", action="store_true")
    # which tiny model to build when missing; a real directory tells its family by its files
    parser.add_argument("--family", default="tangoflux", choices=["tangoflux", "sa3"])
    parser.add_argument("--clap-dir", type=Path, required=True)
    parser.add_argument("--build-tiny-clap-if-missing", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="json")
    return parser.parse_args(argv)


def _load_generator(args: argparse.Namespace) -> Any:
    from appliance.models.generator import load_generator

    index_file = "model_index.json" if args.family == "sa3" else "config.json"
    if args.build_tiny_if_missing and not (args.model_dir / index_file).is_file():
        if args.family == "sa3":
            from appliance.models.tiny_sa3 import build_tiny_sa3 as build
        else:
            from appliance.models.tiny import build_tiny_tangoflux as build

        log.warning("no generator weights at %s: building the TINY random-weight %s model",
                    args.model_dir, args.family)
        _build_tiny_atomically(args.model_dir, build, index_file)
    started = time.perf_counter()
    generator = load_generator(
        args.model_dir, device=args.device, dtype=args.dtype, latent_frames=args.latent_frames
    )
    args.load_s = time.perf_counter() - started
    log.info("model loaded", extra={"model": generator.name, "load_s": round(args.load_s, 3)})
    return generator


def _load_scorer(args: argparse.Namespace) -> Any:
    """The CLAP scorer, beside the generator: on the worker's GPU, loaded once."""
    from appliance.models.clap import ClapScorer

    if args.build_tiny_clap_if_missing and not (args.clap_dir / "config.json").is_file():
        from appliance.models.tiny_clap import build_tiny_clap

        log.warning("no CLAP weights at %s: building the TINY random-weight scorer", args.clap_dir)
        _build_tiny_atomically(args.clap_dir, build_tiny_clap)
    started = time.perf_counter()
    scorer = ClapScorer.from_dir(args.clap_dir, device=args.device)
    args.clap_load_s = time.perf_counter() - started
    log.info("scorer loaded", extra={"scorer": scorer.name, "random_weights": scorer.is_random,
                                     "load_s": round(args.clap_load_s, 3)})
    if scorer.is_random:
        log.warning("the CLAP scorer has RANDOM weights: its scores mean nothing, and with "
                    "generation.quality_gate = 'auto' nothing is rejected for its score")
    return scorer


def _build_tiny_atomically(target: Path, build: Callable[[Path], Path],
                           index_file: str = "config.json") -> None:
    """Build a tiny model beside its final place and rename it in (workers may race)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    build(staging)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another worker won the race
        if not (target / index_file).is_file():
            raise


def _serve(
    generator: Any, scorer: Any, args: argparse.Namespace, inp: BinaryIO, out: BinaryIO
) -> None:
    _send(
        out,
        {
            "type": "ready",
            "model": generator.name,
            "device": args.device,
            "load_s": args.load_s,
            "scorer": scorer.name,
            "scorer_random": bool(scorer.is_random),
            "scorer_load_s": args.clap_load_s,
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            **_gpu_memory(args),
        },
    )
    while True:
        frame = read_frame(inp)
        if frame.type == "shutdown":
            return
        if frame.type != "generate":
            _send(out, {"type": "error", "id": frame.header.get("id"), "code": "worker_failed",
                        "message": f"unknown frame type {frame.type!r}"})
            continue
        _generate(generator, scorer, args, frame.header, out)


def _gpu_memory(args: argparse.Namespace) -> dict[str, int]:
    """GPU memory held by this process's tensors, for the supervisor's metrics (none on CPU)."""
    if args.device != "cuda":
        return {}
    import torch

    return {"gpu_memory_bytes": int(torch.cuda.memory_allocated()),
            "gpu_memory_peak_bytes": int(torch.cuda.max_memory_allocated())}


def _generate(
    generator: Any, scorer: Any, args: argparse.Namespace, job: dict[str, Any], out: BinaryIO
) -> None:
    job_id = job.get("id")
    sample_rate = 44100
    try:
        duration = float(job["duration_s"])
        fade_frames = round(args.loop_crossfade_s * sample_rate) if job.get("loop") else 0
        fade_frames = min(fade_frames, int(duration * sample_rate) // 2)
        extra_s = fade_frames / sample_rate

        def progress(step: int, total: int) -> None:
            _send(out, {"type": "progress", "id": job_id, "step": step, "total": total})

        started = time.perf_counter()
        prompt = str(job["prompt"])
        waveforms = generator.generate(
            prompt,
            duration_s=duration + extra_s,
            steps=int(job["steps"]),
            guidance_scale=float(job["guidance_scale"]),
            seed=job.get("seed"),
            candidates=int(job.get("candidates", 1)),
            progress=progress,
        )
        clips = [_finish_clip(waveform, fade_frames) for waveform in waveforms]
        scoring_started = time.perf_counter()
        scores, embeddings = scorer.similarity(prompt, clips, sample_rate)
        scoring_s = time.perf_counter() - scoring_started
        best = int(np.argmax(scores))
        waveform = clips[best]
        embedding = np.ascontiguousarray(embeddings[best], dtype=np.float32)
        elapsed = time.perf_counter() - started
    except Exception as exc:  # reported to the supervisor
        log.exception("generation failed", extra={"request_id": job_id})
        fatal = _is_device_error(exc)
        _send(out, {"type": "error", "id": job_id, "code": "worker_failed", "message": str(exc),
                    "fatal": fatal})
        if fatal:
            # out of GPU memory, or a CUDA error that leaves the context unusable: exit so
            # that the supervisor restarts this worker with a fresh context (and it is not
            # ready meanwhile) instead of failing every later request
            log.error("device error: exiting for a restart", extra={"request_id": job_id})
            out.flush()
            os._exit(3)
        return
    header = {
        "type": "result",
        "id": job_id,
        "sample_rate": sample_rate,
        "channels": int(waveform.shape[0]),
        "frames": int(waveform.shape[1]),
        "dtype": "float32",
        "generation_s": elapsed,
        "scoring_s": scoring_s,
        "candidates": len(clips),
        "model": generator.name,
        "is_loop": bool(fade_frames),
        "loop_crossfade_frames": fade_frames,
        "clap_similarity": float(scores[best]),
        "candidate_scores": [float(score) for score in scores],
        "best_candidate": best,
        "clap_dim": int(embedding.shape[0]),
        "scorer": scorer.name,
        "scorer_random": bool(scorer.is_random),
        **_gpu_memory(args),
    }
    write_frame(out, Frame(header, waveform.tobytes() + embedding.tobytes()))


def _finish_clip(waveform: Any, fade_frames: int) -> np.ndarray:
    """float32 (channels, frames); for a loop, the tail cross-faded into the head."""
    clip = np.asarray(waveform, dtype=np.float32)
    if fade_frames:
        clip = make_seamless_loop(clip, fade_frames)
    return np.ascontiguousarray(clip, dtype=np.float32)


def _send(out: BinaryIO, header: dict[str, Any]) -> None:
    write_frame(out, Frame(header))


def _is_device_error(exc: BaseException) -> bool:
    """Out of GPU memory or a CUDA/accelerator runtime error (anything else keeps serving)."""
    import torch  # loaded already by the model

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("CUDA error", "CUDA out of memory", "CUBLAS_STATUS", "cuDNN error",
                                      "device-side assert", "illegal memory access"))


# last: under `python -m`, everything above must be defined before main() runs
if __name__ == "__main__":
    sys.exit(main())
