"""Audio utilities: seamless loops, WAV encoding, resampling.

Waveforms are float32 arrays shaped ``(channels, frames)``.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

Waveform = npt.NDArray[np.float32]


def make_seamless_loop(waveform: Waveform, crossfade_frames: int) -> Waveform:
    """Fold the last ``crossfade_frames`` into the head with an equal-power cross-fade.

    The input must be ``crossfade_frames`` longer than the wanted clip. The result ends on
    the sample that preceded the tail in the original, and starts on the tail's first
    sample, so the wrap-around is as continuous as any pair of adjacent samples.
    """
    total = waveform.shape[-1]
    fade = int(crossfade_frames)
    if fade <= 0:
        return waveform
    if fade * 2 > total:
        raise ValueError(f"cross-fade of {fade} frames needs a clip of at least {2 * fade}")
    t = (np.arange(fade, dtype=np.float64) + 0.5) / fade
    fade_in = np.sin(t * np.pi / 2).astype(np.float32)
    fade_out = np.cos(t * np.pi / 2).astype(np.float32)
    head = waveform[..., :fade]
    tail = waveform[..., total - fade :]
    blended = tail * fade_out + head * fade_in
    return np.ascontiguousarray(
        np.concatenate([blended, waveform[..., fade : total - fade]], axis=-1), dtype=np.float32
    )


def wrap_discontinuity(waveform: Waveform) -> float:
    """Largest jump between the last and the first sample (over channels)."""
    return float(np.max(np.abs(waveform[..., -1] - waveform[..., 0])))


def encode_wav(waveform: Waveform, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes; values beyond [-1, 1] are clipped."""
    clipped = np.clip(waveform, -1.0, 1.0).T
    buffer = io.BytesIO()
    sf.write(buffer, clipped, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def decode_wav(data: bytes) -> tuple[Waveform, int]:
    """Inverse of :func:`encode_wav`: ``(waveform (channels, frames), sample_rate)``."""
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(samples.T), int(rate)


def resample(waveform: Waveform, source_rate: int, target_rate: int) -> Waveform:
    """High-quality polyphase resampling (soxr HQ)."""
    if source_rate == target_rate:
        return waveform
    out = soxr.resample(waveform.T, source_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).T)
