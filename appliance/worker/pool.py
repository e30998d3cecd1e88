"""The worker pool: one persistent subprocess per configured device, one bounded queue.

Each worker has a dispatch thread that takes the next job only when its worker is idle and
ready, so the least busy ready worker always gets the job. A full queue refuses new work at
once (``busy``); a failed worker fails only its own job and is restarted with back-off.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.config import Settings
from appliance.errors import (
    ApplianceError,
    Busy,
    ModelError,
    Unavailable,
    WorkerDied,
    WorkerFailed,
)
from appliance.metrics import Metrics
from appliance.models.generator import FAMILIES, ModelCatalogue, generator_specs
from appliance.protocol import FieldError, GenerationParameters
from appliance.worker.client import GenerationResult, ProgressCallback, WorkerProcess, WorkerSpec

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One queued generation and the future its submitter waits on."""

    request_id: str
    params: GenerationParameters
    on_progress: ProgressCallback | None = None
    future: Future[GenerationResult] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)
    queue_wait_s: float = 0.0


@dataclass
class WorkerState:
    """What the pool knows about one worker, for health and status."""

    name: str
    gpu: str
    state: str = "starting"  # starting | ready | busy | restarting | failed | stopped
    pid: int | None = None
    model: str = ""
    load_s: float = 0.0
    scorer: str = ""
    scorer_random: bool = False
    restarts: int = 0
    failed_starts: int = 0  # starts in a row that failed (a model that cannot load)
    next_try_at: float = 0.0  # wall clock of the next start after a failed one
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class ModelDirMissing(ModelError):
    """The configured generator directory does not exist (the message names the setting)."""


@dataclass(frozen=True)
class ModelDir:
    """A worker's generator directory and the setting that named it."""

    setting: str  # models.tangoflux, models.sa3 or models.generators.<key>
    path: Path
    tiny: bool  # a tiny model is built there when missing

    def check(self) -> None:
        if not self.tiny and not self.path.is_dir():
            raise ModelDirMissing(f"{self.setting} = {str(self.path)!r}: no such directory "
                                  "(fix the setting, or put the model there: it is tried again)")


def worker_command(settings: Settings, gpu: str, name: str, model: str = "tangoflux") -> list[str]:
    """The command line of one worker subprocess; ``model`` is a generator key."""
    models = settings.models
    spec = generator_specs(models)[model]
    command = [
        sys.executable, "-m", "appliance.worker",
        "--model-dir", str(spec.model_dir),
        "--family", spec.family,
        "--clap-dir", str(models.clap_dir()),
        "--name", name,
        "--device", "cpu" if gpu == "cpu" else "cuda",
        "--dtype", models.dtype,
        "--latent-frames", models.latent_frames,
        "--loop-crossfade-s", str(settings.generation.loop_crossfade_s),
        "--log-level", settings.logging.level,
        "--log-format", settings.logging.format,
    ]
    if spec.tiny:
        command.append("--build-tiny-if-missing")
    if models.uses_tiny_clap:
        command.append("--build-tiny-clap-if-missing")
    return command


class WorkerPool:
    """Owns the workers, one job queue per model, and the dispatch threads.

    A worker serves one model, so each model has its own queue that only its workers take
    from: a request for SA3 never waits behind TangoFlux jobs on a GPU worker.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        command_factory: Callable[[Settings, str, str, str], list[str]] = worker_command,
    ) -> None:
        self._settings = settings.workers
        self._metrics = metrics
        self._catalogue = ModelCatalogue.from_settings(settings)
        self._queues: dict[str, queue.Queue[Job | None]] = {
            name: queue.Queue(maxsize=self._settings.queue_size) for name in self._catalogue.families}
        self._stop = threading.Event()
        self._accepting = True
        self._submit_lock = threading.Lock()
        self._workers: list[WorkerProcess] = []
        self._states: list[WorkerState] = []
        self._threads: list[threading.Thread] = []
        self._models: list[str] = []  # the model name of each worker
        self._model_dirs: list[ModelDir] = []  # where each worker's generator is configured
        specs = generator_specs(settings.models)
        for index, entry in enumerate(self._settings.entries()):
            gpu = entry.device
            name = gpu if gpu != "cpu" else f"cpu{index}" if index else "cpu"
            if any(state.name == name for state in self._states):
                name = f"{name}-{index}"
            command = command_factory(settings, gpu, name, entry.model)
            self._workers.append(WorkerProcess(WorkerSpec(name=name, gpu=gpu, command=command)))
            self._states.append(WorkerState(name=name, gpu=gpu))
            self._models.append(self._catalogue.aliases[entry.model])
            spec = specs[entry.model]
            self._model_dirs.append(ModelDir(
                f"models.{entry.model}" if entry.model in FAMILIES else f"models.generators.{entry.model}",
                spec.model_dir, spec.tiny))
            metrics.worker_up.labels(worker=name, device=gpu).set(0)  # series exist while loading
            metrics.worker_ready.labels(worker=name, device=gpu).set(0)
        metrics.queue_depth.set_function(self.queue_depth)

    @property
    def catalogue(self) -> ModelCatalogue:
        return self._catalogue

    def start(self) -> None:
        for worker, state, model in zip(self._workers, self._states, self._models, strict=True):
            thread = threading.Thread(
                target=self._dispatch, args=(worker, state, self._queues[model]),
                name=f"dispatch-{state.name}", daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def submit(
        self, request_id: str, params: GenerationParameters,
        on_progress: ProgressCallback | None = None,
    ) -> Future[GenerationResult]:
        """Queue a job for its model's workers; raises Busy when that queue is full,
        Unavailable when draining or when every worker of the model failed to load it."""
        model = self._catalogue.resolve(params.model or None)
        if model is None:
            raise FieldError("model", f"unknown model {params.model!r}; choose one of "
                             f"{self._catalogue.choices()}")
        states = [s for s, m in zip(self._states, self._models, strict=True) if m == model]
        if all(state.state == "failed" for state in states):
            raise Unavailable(f"no worker could load {model}: " + states[0].last_error)
        job = Job(request_id, params, on_progress)
        with self._submit_lock:  # stop() cannot slip between the check and the put
            if not self._accepting:
                raise Unavailable("the appliance is shutting down")
            try:
                self._queues[model].put_nowait(job)
            except queue.Full:
                raise Busy(f"generation queue is full ({self._settings.queue_size} waiting)") from None
        return job.future

    def start_problems(self) -> list[str]:
        """Why workers cannot start (a model directory missing or unreadable), for /readyz."""
        now = time.time()
        return [f"worker {state.name}: {state.last_error} ({state.failed_starts} failed starts, "
                f"next try in {max(0.0, state.next_try_at - now):.0f} s)"
                for state in self._states if state.failed_starts]

    def ready_count(self) -> int:
        return sum(state.state in ("ready", "busy") for state in self._states)

    def states(self) -> list[dict[str, Any]]:
        return [state.as_dict() for state in self._states]

    def queue_depth(self) -> int:
        return sum(jobs.qsize() for jobs in self._queues.values())

    def stop_accepting(self) -> None:
        self._accepting = False

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the jobs being generated, fail queued ones as unavailable, stop workers."""
        with self._submit_lock:
            self._accepting = False
        self._stop.set()
        self._fail_queued(Unavailable("the appliance is shutting down"))
        for model in self._models:
            with contextlib.suppress(queue.Full):
                self._queues[model].put_nowait(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        for worker in self._workers:
            worker.stop()
        for thread in self._threads:  # a generation cut short by stop() is answered now
            thread.join(5.0)
        self._fail_queued(Unavailable("the appliance is shutting down"))

    def _dispatch(self, worker: WorkerProcess, state: WorkerState, jobs: queue.Queue[Job | None]) -> None:
        backoff = self._settings.restart_backoff_initial_s
        labels = {"worker": state.name, "device": state.gpu}
        while not self._stop.is_set():
            if not worker.is_alive() and not self._start_worker(worker, state, labels):
                state.next_try_at = time.time() + backoff
                if self._stop.wait(backoff):
                    break
                backoff = min(max(backoff * 2, 0.1), self._settings.restart_backoff_max_s)
                continue
            try:
                job = jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None:
                break
            if self._run(worker, state, job, labels):
                backoff = self._settings.restart_backoff_initial_s
        state.state = "stopped"
        self._metrics.worker_ready.labels(**labels).set(0)

    def _start_worker(self, worker: WorkerProcess, state: WorkerState, labels: dict[str, str]) -> bool:
        state.state = "starting" if state.restarts == 0 and not state.failed_starts else "restarting"
        model_dir = self._model_dirs[self._states.index(state)]
        try:
            model_dir.check()  # a missing directory: no process spawned, no traceback
            worker.start(self._settings.ready_timeout_s)
        except ApplianceError as exc:
            state.failed_starts += 1
            state.last_error = exc.message if isinstance(exc, ModelDirMissing) else (
                f"{model_dir.setting}: {exc.message}" if isinstance(exc, ModelError) else exc.message)
            state.state = "failed" if isinstance(exc, ModelError) else "restarting"
            log.error("worker failed to start", extra={"worker": state.name, "error": state.last_error,
                                                       "failed_starts": state.failed_starts})
            self._metrics.worker_up.labels(**labels).set(0)
            model = self._models[self._states.index(state)]
            peers = [s for s, m in zip(self._states, self._models, strict=True) if m == model]
            if not any(s.state in ("ready", "busy") for s in peers):
                # nobody can serve what waits for this model: answer it, don't let it rot
                self._fail_queued(Unavailable(f"no worker of {model} is ready: {exc.message}"), model)
            return False
        state.state, state.pid, state.model, state.load_s = "ready", worker.pid, worker.model, worker.load_s
        state.failed_starts, state.next_try_at = 0, 0.0
        state.scorer, state.scorer_random = worker.scorer, worker.scorer_random
        self._metrics.worker_up.labels(**labels).set(1)
        self._metrics.worker_ready.labels(**labels).set(1)
        self._metrics.model_load.labels(**labels).set(worker.load_s)
        self._record_gpu_memory(worker, labels)
        return True

    def _record_gpu_memory(self, worker: WorkerProcess, labels: dict[str, str]) -> None:
        """GPU memory as the worker reported it over IPC (``gpu_memory_bytes`` of its frames)."""
        if worker.gpu_memory_bytes is not None:  # None: a CPU worker, or not reported
            self._metrics.worker_gpu_memory.labels(**labels).set(worker.gpu_memory_bytes)

    def _run(self, worker: WorkerProcess, state: WorkerState, job: Job, labels: dict[str, str]) -> bool:
        """Serve one job; returns False when the worker failed and must be restarted."""
        job.queue_wait_s = time.monotonic() - job.queued_at
        self._metrics.queue_wait.observe(job.queue_wait_s)
        if not job.future.set_running_or_notify_cancel():
            return True
        state.state = "busy"
        try:
            result = worker.generate(
                job.request_id, job.params, self._settings.generation_timeout_s, job.on_progress
            )
        except ApplianceError as exc:
            if self._stop.is_set() and isinstance(exc, WorkerFailed):
                # stopped by the drain deadline, not by a fault of its own
                job.future.set_exception(Unavailable("the appliance shut down during this generation"))
                return False
            job.future.set_exception(exc)
            reported = isinstance(exc, WorkerFailed) and not isinstance(exc, WorkerDied)
            if reported and worker.is_alive():
                state.state = "ready"  # the worker reported an error and keeps serving
                return True
            worker.kill()
            state.restarts += 1
            state.last_error = exc.message
            state.state = "restarting"
            self._metrics.worker_restarts.labels(worker=state.name, reason=exc.code).inc()
            self._metrics.worker_up.labels(**labels).set(0)
            self._metrics.worker_ready.labels(**labels).set(0)
            log.warning("worker failed; restarting",
                        extra={"worker": state.name, "request_id": job.request_id,
                               "error": exc.message, "code": exc.code})
            return False
        except Exception as exc:  # a bug must not kill the dispatch thread
            log.exception("unexpected error in dispatch", extra={"request_id": job.request_id})
            job.future.set_exception(WorkerFailed(f"internal error: {exc}"))
            worker.kill()
            return False
        self._metrics.generation.observe(result.generation_s)
        self._record_gpu_memory(worker, labels)
        job.future.set_result(replace(result, queue_wait_s=job.queue_wait_s))
        state.state = "ready"
        return True

    def _fail_queued(self, error: ApplianceError, model: str | None = None) -> None:
        """Answer the queued jobs (of one model, or of all) with ``error``."""
        for name, jobs in self._queues.items():
            if model is not None and name != model:
                continue
            while True:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None and job.future.set_running_or_notify_cancel():
                    job.future.set_exception(error)
