"""Why the worker is persistent: the same requests through one long-lived worker subprocess
vs a fresh process per request (start, load the generator + CLAP, generate, exit).

Both sides run the real worker (``python -m appliance.worker``, framed IPC, the supervisor's
:class:`WorkerProcess`), so the only difference is whether the process and its loaded models
are kept. ``--model`` chooses the generator family: ``tangoflux`` (guidance 4.5) or ``sa3``
(Stable Audio 3 at its distilled setting: guidance off). Default: the tiny random-weight models
on the CPU. ``--full-size`` builds (once, in ``--work-dir``) the full-size architecture with
random weights (TangoFlux: about 4 GB; SA3 small: about 3.4 GB) and runs it on
``--device cuda``; the scorer stays the tiny CLAP (its load is ~0.5 s of the real one).

    .venv/bin/python bench/persistent_vs_cold.py [--model sa3] [--requests 10] [--steps 8] [--duration 2]
    .venv/bin/python bench/persistent_vs_cold.py --full-size --device cuda --steps 25 --duration 10
    .venv/bin/python bench/persistent_vs_cold.py --model sa3 --full-size --device cuda --duration 10

Last line: ``persistent_vs_cold=<cold total / persistent total> load_s=<model load in the
worker> ... model=<family>`` (the persistent total counts the requests only; its one start is printed too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# the worker subprocesses must run this checkout too
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

from appliance.config import Settings  # noqa: E402
from appliance.models.generator import FAMILY_DEFAULTS, Family  # noqa: E402
from appliance.protocol import GenerationParameters  # noqa: E402
from appliance.worker.client import WorkerProcess, WorkerSpec  # noqa: E402
from appliance.worker.pool import worker_command  # noqa: E402

PROMPTS = [
    "rain on a tin roof", "a dog barking far away", "wind through pine trees",
    "a busy street with car horns", "waves on a pebble beach", "a crackling campfire",
    "birds singing at dawn", "a ticking clock in a quiet room", "thunder rolling in the distance",
    "footsteps on gravel",
]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tangoflux", "sa3"], default="tangoflux")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of audio per request")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--full-size", action="store_true",
                        help="the full-size architecture with random weights (use with a GPU)")
    parser.add_argument("--work-dir", type=Path, help="where the models are built (kept)")
    return parser.parse_args()


def _generator(work: Path, model: Family, full_size: bool) -> Path:
    """The generator directory, built in ``work`` when missing."""
    from appliance.models.random_full import build_full_size_random_tangoflux
    from appliance.models.random_full_sa3 import build_full_size_random_sa3
    from appliance.models.tiny import build_tiny_tangoflux
    from appliance.models.tiny_sa3 import build_tiny_sa3

    if not full_size:
        directory, done = (work / "tiny-sa3", "appliance.json") if model == "sa3" else (
            work / "tiny-tangoflux", "config.json")
        if not (directory / done).is_file():
            (build_tiny_sa3 if model == "sa3" else build_tiny_tangoflux)(directory)
        return directory
    started = time.perf_counter()
    directory = (build_full_size_random_sa3(work / "random-full-sa3-small") if model == "sa3"
                 else build_full_size_random_tangoflux(work / "random-full-tangoflux"))
    print(f"full-size random model ready in {time.perf_counter() - started:.1f} s at {directory}")
    return directory


def _models(work: Path, model: Family, full_size: bool) -> tuple[Path, Path]:
    from appliance.models.tiny_clap import build_tiny_clap

    clap = work / "tiny-clap"
    if not (clap / "config.json").is_file():
        build_tiny_clap(clap)
    return _generator(work, model, full_size), clap


def _spec(args: argparse.Namespace, generator: Path, clap: Path, work: Path) -> WorkerSpec:
    settings = Settings.model_validate({
        "models": {"dir": str(work), args.model: str(generator), "clap": str(clap),
                   "dtype": args.dtype},
        "logging": {"level": "WARNING", "format": "text"},
    })
    gpu = "0" if args.device == "cuda" else "cpu"
    return WorkerSpec("bench", gpu, worker_command(settings, gpu, "bench", args.model))


def _params(prompt: str, args: argparse.Namespace) -> GenerationParameters:
    guidance = FAMILY_DEFAULTS[args.model].guidance_scale or 4.5  # TangoFlux's reference value
    return GenerationParameters(prompt=prompt, duration_s=args.duration, loop=False,
                                steps=args.steps, guidance_scale=guidance, candidates=1, seed=1)


def main() -> int:
    args = _parse()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="bench-pvc-") as scratch:
        work = args.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        generator, clap = _models(work, args.model, args.full_size)
        spec = _spec(args, generator, clap, work)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
        timeout = 3600.0

        worker = WorkerProcess(spec)
        started = time.perf_counter()
        worker.start(ready_timeout_s=timeout)
        start_s = time.perf_counter() - started
        load_s, scorer_load_s = worker.load_s, worker.scorer_load_s
        persistent: list[float] = []
        try:
            for index, prompt in enumerate(prompts):
                began = time.perf_counter()
                worker.generate(f"p{index}", _params(prompt, args), timeout)
                persistent.append(time.perf_counter() - began)
        finally:
            worker.stop()

        cold: list[float] = []
        cold_starts: list[float] = []
        cold_generations: list[float] = []
        cold_loads: list[float] = []
        for index, prompt in enumerate(prompts):
            began = time.perf_counter()
            fresh = WorkerProcess(spec)
            fresh.start(ready_timeout_s=timeout)
            ready = time.perf_counter()
            fresh.generate(f"c{index}", _params(prompt, args), timeout)
            cold_generations.append(time.perf_counter() - ready)
            fresh.stop(timeout_s=60)
            cold.append(time.perf_counter() - began)
            cold_starts.append(ready - began)
            cold_loads.append(fresh.load_s + fresh.scorer_load_s)

    persistent_total, cold_total = sum(persistent), sum(cold)
    ratio = cold_total / persistent_total
    family = "SA3" if args.model == "sa3" else "TangoFlux"
    model = f"full-size random {family}" if args.full_size else f"tiny {family}"
    print(f"{args.requests} requests, {model} + tiny CLAP on {args.device}/{args.dtype}, "
          f"{args.duration:g} s clips, {args.steps} steps")
    print(f"persistent: start {start_s:.2f} s once ({family} load {load_s:.3f} s, CLAP load "
          f"{scorer_load_s:.3f} s), then per request median {statistics.median(persistent):.3f} s, "
          f"total {persistent_total:.2f} s (with the start: {persistent_total + start_s:.2f} s); "
          f"first request {persistent[0]:.3f} s")
    print(f"cold: per request median {statistics.median(cold):.3f} s = start to ready "
          f"{statistics.median(cold_starts):.3f} s (of which model loads "
          f"{statistics.median(cold_loads):.3f} s; the rest is interpreter start and imports) + "
          f"generation in a fresh process {statistics.median(cold_generations):.3f} s + exit; "
          f"total {cold_total:.2f} s")
    print(f"persistent_vs_cold={ratio:.2f} load_s={load_s:.3f} clap_load_s={scorer_load_s:.3f} "
          f"start_s={start_s:.2f} persistent_request_s={statistics.median(persistent):.3f} "
          f"cold_request_s={statistics.median(cold):.3f} model={args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
