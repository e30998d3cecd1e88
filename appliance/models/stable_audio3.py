"""Stable Audio 3 through diffusers' own pipeline, loaded from a local snapshot only.

Directory layout: the Hugging Face snapshot of ``stabilityai/stable-audio-3-small-sfx`` (or
``-small-music``, ``-medium``) as ``DiffusionPipeline.save_pretrained`` writes it:
``model_index.json`` (``_class_name`` ``StableAudio3Pipeline``) and one folder per component:
``transformer/`` (``StableAudio3DiTModel``), ``vae/`` (``AutoencoderSAME``),
``text_encoder/`` (transformers ``T5GemmaEncoderModel``), ``tokenizer/`` (``GemmaTokenizer``),
``duration_embedder/`` (``StableAudio3DurationEmbedder``), ``scheduler/``
(``FlowMatchEulerDiscreteScheduler``). An optional ``appliance.json`` names the model.

Unlike TangoFlux, SA3's latents are as long as the clip (one frame per 4096 samples), so a
4 s clip costs a 4 s generation.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliance.errors import ModelError
from appliance.models.generator import (
    SA3_FILES,
    SA3_PIPELINE_CLASS,
    SAMPLE_RATE,
    ProgressCallback,
    check_generate_args,
    sa3_identity,
    seeded_generator,
)

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_MIN_TOKENIZER_SIZE = 100  # an incomplete tokenizer maps every word to <unk>: reject it
_TOKENIZER_PROBE = "a dog barking in the rain"


def _check_tokenizer(tokenizer: Any, source: Path) -> None:
    """Reject the near-empty tokenizers that an incomplete snapshot yields without an error."""
    size = len(tokenizer)
    ids = tokenizer(_TOKENIZER_PROBE)["input_ids"]
    if size < _MIN_TOKENIZER_SIZE or tokenizer.unk_token_id in ids:
        raise ModelError(
            f"{source}/tokenizer: {size} tokens, and plain English ({_TOKENIZER_PROBE!r}) gives "
            "unknown tokens; are the tokenizer files complete?"
        )


def _check_audio_format(vae: Any, source: Path) -> None:
    if int(vae.config.sampling_rate) != SAMPLE_RATE or int(vae.config.audio_channels) != 2:
        raise ModelError(
            f"{source}/vae: {vae.config.audio_channels} channels at {vae.config.sampling_rate} Hz; "
            f"the appliance serves stereo at {SAMPLE_RATE} Hz"
        )


class StableAudio3Generator:
    """A loaded SA3 pipeline that turns one prompt into a batch of candidate clips."""

    def __init__(self, *, name: str, device: str, pipeline: Any, max_duration_s: float) -> None:
        self.name = name
        self.device = device
        self._pipe = pipeline
        self.max_duration_s = max_duration_s

    @classmethod
    def from_dir(
        cls, model_dir: Path, *, device: str = "cpu", dtype: str = "float32"
    ) -> StableAudio3Generator:
        """Load a snapshot (see the module docstring); the hub is never contacted."""
        from diffusers import StableAudio3Pipeline

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        started = time.perf_counter()
        model_dir = Path(model_dir)
        missing = [entry for entry in SA3_FILES
                   if not any((model_dir / name.strip()).is_file() for name in entry.split("|"))]
        if missing:
            raise ModelError(f"{model_dir}: not a complete Stable Audio 3 snapshot; missing {missing}")
        try:
            pipe = StableAudio3Pipeline.from_pretrained(
                str(model_dir), local_files_only=True, dtype=_DTYPES[dtype]
            )
        except Exception as exc:  # diffusers/transformers raise many types for bad snapshots
            raise ModelError(f"{model_dir}: cannot load the {SA3_PIPELINE_CLASS} ({exc})") from exc
        _check_tokenizer(pipe.tokenizer, model_dir)
        _check_audio_format(pipe.vae, model_dir)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        name = sa3_identity(model_dir)
        max_duration = float(pipe.duration_embedder.config.max_val)
        logger.info("loaded %s from %s on %s/%s in %.2f s", name, model_dir, device, dtype,
                    time.perf_counter() - started)
        return cls(name=name, device=device, pipeline=pipe, max_duration_s=max_duration)

    @property
    def pipeline(self) -> Any:
        """The diffusers pipeline (its components serve the inpainting loop seam)."""
        return self._pipe

    def generate(self, prompt: str, *, duration_s: float, steps: int, guidance_scale: float,
                 seed: int | None = None, candidates: int = 1,
                 progress: ProgressCallback | None = None) -> list[np.ndarray]:
        """``candidates`` float32 (2, round(duration_s*44100)) waveforms.

        The seed goes into a ``torch.Generator`` that draws the starting noise and the
        sampler's re-noising, so torch's global RNG is never touched; ``guidance_scale`` <= 1
        leaves classifier-free guidance off (the distilled checkpoints' intended setting).
        """
        check_generate_args(duration_s, steps, guidance_scale, candidates)
        samples = max(1, round(min(float(duration_s), self.max_duration_s) * SAMPLE_RATE))
        generator = seeded_generator(seed)

        def on_step(_pipe: Any, index: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if progress is not None:
                progress(index + 1, steps)
            return tensors

        started = time.perf_counter()
        with torch.inference_mode():
            audio = self._pipe(
                prompt,
                duration=samples / SAMPLE_RATE,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                num_waveforms_per_prompt=candidates,
                generator=generator,
                callback_on_step_end=on_step,
                output_type="pt",
            ).audios
        waves = [_exact_length(audio[i].float().cpu().numpy(), samples) for i in range(candidates)]
        logger.debug("generated %d x %.2f s (%d steps, cfg %.2f) in %.2f s", candidates,
                     samples / SAMPLE_RATE,
                     steps, guidance_scale, time.perf_counter() - started)
        return waves


def _exact_length(wave: np.ndarray, samples: int) -> np.ndarray:
    """Trim or zero-pad to ``samples`` frames (the pipeline truncates duration*rate)."""
    if wave.shape[1] < samples:
        wave = np.pad(wave, ((0, 0), (0, samples - wave.shape[1])))
    return np.ascontiguousarray(wave[:, :samples], dtype=np.float32)
