"""Supervisor side of one worker subprocess: start it, send a job, wait for its frames.

A reader thread turns the child's stdout into frames on a queue, so that every wait has a
timeout: a worker that dies shows up as end of stream, one that hangs as silence longer
than the generation timeout (progress frames count as signs of life).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from appliance.audio import Waveform
from appliance.errors import GenerationTimeout, ModelError, WorkerDied, WorkerFailed
from appliance.protocol import GenerationParameters
from appliance.worker.ipc import ChannelClosed, Frame, ProtocolViolation, read_frame, write_frame

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationResult:
    """A generated clip (the best of its candidates), with the facts the reply metadata needs.

    ``clap_similarity`` is the CLAP cosine of the prompt and this clip; ``candidate_scores``
    has one score per candidate, in generation order; ``clap_vector`` is this clip's CLAP
    audio embedding (stored with the cached item for semantic-hit checks). With
    ``scorer_random`` the scores come from random weights and mean nothing.
    """

    waveform: Waveform
    sample_rate: int
    generation_s: float
    model: str
    worker: str
    gpu: str
    queue_wait_s: float = 0.0
    clap_similarity: float | None = None
    candidate_scores: tuple[float, ...] = ()
    clap_vector: npt.NDArray[np.float32] | None = None
    scorer: str = ""
    scorer_random: bool = False
    scoring_s: float = 0.0


@dataclass(frozen=True)
class WorkerSpec:
    """How to start one worker: its name, the GPU it owns, the command line."""

    name: str
    gpu: str  # "cpu" or a GPU index
    command: Sequence[str]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = "" if self.gpu == "cpu" else self.gpu
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        return env


class WorkerProcess:
    """One persistent worker subprocess, serving one job at a time."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.model = ""
        self.load_s = 0.0
        self.scorer = ""
        self.scorer_random = False
        self.scorer_load_s = 0.0
        self.gpu_memory_bytes: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._frames: queue.Queue[Frame | Exception] = queue.Queue()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, ready_timeout_s: float) -> None:
        """Spawn the child and wait for its ``ready`` frame."""
        self._frames = queue.Queue()
        self._process = subprocess.Popen(
            list(self.spec.command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.spec.environment(),
            start_new_session=True,
        )
        stdout = self._process.stdout
        assert stdout is not None
        threading.Thread(
            target=self._read_frames, args=(stdout, self._frames),
            name=f"worker-{self.spec.name}-reader", daemon=True,
        ).start()
        frame = self._next_frame(ready_timeout_s, waiting_for="ready")
        if frame.type == "fatal":
            self.kill()
            raise ModelError(f"worker {self.spec.name}: {frame.header.get('message')}")
        if frame.type != "ready":
            self.kill()
            raise WorkerDied(f"worker {self.spec.name} sent {frame.type!r} before ready")
        self.model = str(frame.header.get("model", ""))
        self.load_s = float(frame.header.get("load_s", 0.0))
        self.scorer = str(frame.header.get("scorer", ""))
        self.scorer_random = bool(frame.header.get("scorer_random", False))
        self.scorer_load_s = float(frame.header.get("scorer_load_s", 0.0))
        self._note_gpu_memory(frame.header)
        log.info("worker ready", extra={"worker": self.spec.name, "pid": self.pid,
                                        "model": self.model, "load_s": round(self.load_s, 3),
                                        "scorer": self.scorer, "scorer_random": self.scorer_random})

    def generate(
        self,
        request_id: str,
        params: GenerationParameters,
        inactivity_timeout_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Run one job. Raises WorkerFailed or GenerationTimeout (the worker is then killed)."""
        with self._lock:
            self._send({
                "type": "generate", "id": request_id, "prompt": params.prompt,
                "duration_s": params.duration_s, "steps": params.steps,
                "guidance_scale": params.guidance_scale, "seed": params.seed,
                "candidates": params.candidates, "loop": params.loop,
            })
            while True:
                frame = self._next_frame(inactivity_timeout_s, waiting_for="result")
                if frame.header.get("id") != request_id:
                    self.kill()
                    raise WorkerDied(f"worker answered job {frame.header.get('id')!r}")
                if frame.type == "progress":
                    if on_progress is not None:
                        on_progress(int(frame.header["step"]), int(frame.header["total"]))
                    continue
                if frame.type == "error":
                    message = str(frame.header.get("message", "generation failed"))
                    if frame.header.get("fatal"):  # a device error: the worker exits to restart
                        self.kill()
                        raise WorkerDied(f"device error, worker restarted: {message}")
                    raise WorkerFailed(message)
                if frame.type == "result":
                    return self._result(frame)
                self.kill()
                raise WorkerDied(f"unexpected frame {frame.type!r} from worker")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout_s``."""
        if not self.is_alive():
            return
        try:
            self._send({"type": "shutdown"})
            assert self._process is not None
            self._process.wait(timeout=timeout_s)
        except (WorkerFailed, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def _result(self, frame: Frame) -> GenerationResult:
        """Split the payload (PCM, then the CLAP embedding) and check it against the header."""
        header = frame.header
        channels, frames = int(header["channels"]), int(header["frames"])
        clap_dim = int(header.get("clap_dim", 0))
        audio_bytes = channels * frames * 4
        if len(frame.payload) != audio_bytes + clap_dim * 4:
            self.kill()
            raise WorkerDied("worker result payload has the wrong size")
        payload = memoryview(frame.payload)
        waveform = np.frombuffer(payload[:audio_bytes], dtype=np.float32).reshape(channels, frames)
        vector = np.frombuffer(payload[audio_bytes:], dtype=np.float32) if clap_dim else None
        score = header.get("clap_similarity")
        self._note_gpu_memory(header)
        return GenerationResult(
            waveform=waveform,
            sample_rate=int(header["sample_rate"]),
            generation_s=float(header.get("generation_s", 0.0)),
            model=str(header.get("model", self.model)),
            worker=self.spec.name,
            gpu=self.spec.gpu,
            clap_similarity=_finite_or_none(score),
            candidate_scores=tuple(
                value for value in (_finite_or_none(s) for s in header.get("candidate_scores", ()))
                if value is not None
            ),
            clap_vector=vector,
            scorer=str(header.get("scorer", self.scorer)),
            scorer_random=bool(header.get("scorer_random", self.scorer_random)),
            scoring_s=float(header.get("scoring_s", 0.0)),
        )

    def _note_gpu_memory(self, header: dict[str, Any]) -> None:
        reported = header.get("gpu_memory_bytes")
        if isinstance(reported, int) and not isinstance(reported, bool):
            self.gpu_memory_bytes = reported

    def _send(self, header: dict[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise WorkerDied(f"worker {self.spec.name} is not running")
        try:
            write_frame(process.stdin, Frame(header))
        except ChannelClosed as exc:
            raise WorkerDied(f"worker {self.spec.name} is gone: {exc}") from exc

    def _next_frame(self, timeout_s: float, *, waiting_for: str) -> Frame:
        try:
            item = self._frames.get(timeout=timeout_s)
        except queue.Empty:
            self.kill()
            raise GenerationTimeout(
                f"worker {self.spec.name} sent nothing for {timeout_s:.0f} s "
                f"while waiting for {waiting_for}; killed"
            ) from None
        if isinstance(item, Exception):
            code = None
            if self._process is not None:
                try:  # the pipe ended: the worker has exited, or must not live on half-broken
                    code = self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.kill()
                    code = self._process.returncode
            raise WorkerDied(f"worker {self.spec.name} exited (code {code}): {item}")
        return item

    @staticmethod
    def _read_frames(stream: IO[bytes], frames: queue.Queue[Frame | Exception]) -> None:
        while True:
            try:
                frames.put(read_frame(stream))
            except (ChannelClosed, ProtocolViolation, OSError, ValueError) as exc:
                frames.put(exc)
                return


def _finite_or_none(value: object) -> float | None:
    """A score as a float, or None when it is missing or not finite (NaN would poison JSON)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
