"""The worker subprocess, for real: tiny TangoFlux + tiny CLAP, framed IPC, best of N, loops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.audio import make_seamless_loop, wrap_discontinuity
from appliance.config import Settings
from appliance.errors import WorkerDied
from appliance.models.clap import ClapScorer
from appliance.protocol import GenerationParameters
from appliance.worker.client import WorkerProcess, WorkerSpec
from appliance.worker.ipc import Frame
from appliance.worker.pool import worker_command

RATE = 44100
FADE_S = 0.25


@pytest.fixture(scope="module")
def settings(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session's tiny TangoFlux; a fresh models dir, so the tiny CLAP is not there yet."""
    return Settings.model_validate({
        "models": {"dir": str(tmp_path_factory.mktemp("worker-models")),
                   "tangoflux": str(models_dir / "tiny-tangoflux")},
        "generation": {"loop_crossfade_s": FADE_S},
        "logging": {"format": "text", "level": "WARNING"},
    })


@pytest.fixture(scope="module")
def worker(settings: Settings) -> Iterator[WorkerProcess]:
    process = WorkerProcess(WorkerSpec("t0", "cpu", worker_command(settings, "cpu", "t0")))
    process.start(ready_timeout_s=180)
    yield process
    process.stop()


def _params(prompt: str = "rain on a tin roof", **overrides: object) -> GenerationParameters:
    values: dict[str, object] = {"prompt": prompt, "duration_s": 1.0, "loop": False, "steps": 2,
                                 "guidance_scale": 3.0, "candidates": 1, "seed": 7}
    values.update(overrides)
    return GenerationParameters(**values)  # type: ignore[arg-type]


def test_worker_builds_the_tiny_clap_on_first_start_and_reports_it(
    worker: WorkerProcess, settings: Settings
) -> None:
    assert (settings.models.clap_dir() / "config.json").is_file()
    assert worker.scorer == "tiny-clap" and worker.scorer_random is True
    assert worker.model == "tiny-tangoflux" and worker.load_s > 0


def test_every_candidate_is_scored_and_the_best_is_returned(
    worker: WorkerProcess, settings: Settings
) -> None:
    prompt = "a dog barking in the rain"
    result = worker.generate("best-of-3", _params(prompt, candidates=3), 120)
    assert len(result.candidate_scores) == 3
    assert len(set(result.candidate_scores)) == 3, "candidates of one batch must differ"
    assert result.clap_similarity == max(result.candidate_scores)
    assert result.scorer == "tiny-clap" and result.scorer_random is True
    vector = result.clap_vector
    assert vector is not None and vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
    # The score and the embedding are those of the clip that came back.
    scorer = ClapScorer.from_dir(settings.models.clap_dir())
    scores, embeddings = scorer.similarity(prompt, [result.waveform], RATE)
    assert scores[0] == pytest.approx(result.clap_similarity, abs=1e-4)
    np.testing.assert_allclose(embeddings[0], vector, atol=1e-4)


def test_loop_request_is_the_longer_clip_cross_faded_tail_into_head(worker: WorkerProcess) -> None:
    """Same seed: the loop is exactly the treatment of a clip FADE_S longer."""
    fade = round(FADE_S * RATE)
    looped = worker.generate("loop", _params(loop=True, duration_s=2.0), 120).waveform
    raw = worker.generate("raw", _params(duration_s=2.0 + FADE_S), 120).waveform
    assert raw.shape[1] == 2 * RATE + fade
    assert looped.shape == (2, 2 * RATE)
    np.testing.assert_allclose(looped, make_seamless_loop(raw, fade), atol=1e-6)
    # The wrap-around is the step between two neighbouring samples of the raw clip (the tiny
    # model's random weights make noise, so a click-free cut is all there is to measure).
    neighbours = float(np.max(np.abs(raw[:, 2 * RATE] - raw[:, 2 * RATE - 1])))
    assert wrap_discontinuity(looped) <= neighbours + 1e-3


def test_a_payload_of_the_wrong_size_is_refused() -> None:
    process = WorkerProcess(WorkerSpec("t1", "cpu", ["true"]))
    frame = Frame({"type": "result", "id": "x", "channels": 2, "frames": 4, "sample_rate": RATE,
                   "clap_dim": 3}, b"\0" * (2 * 4 * 4 + 2 * 4))
    with pytest.raises(WorkerDied, match="wrong size"):
        process._result(frame)
