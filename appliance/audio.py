"""Audio utilities: seamless loops, encoding (WAV, FLAC, Ogg Opus, MP3), resampling.

Waveforms are float32 arrays shaped ``(channels, frames)``. The cache keeps one canonical
16-bit WAV per clip; the other formats are made from it (:func:`transcode`) with libsndfile,
so no codec runs in another process. ``ogg`` is Opus in an Ogg container, not Vorbis: Opus
is what ESPHome's decoders and every current browser play, and it is the smaller of the two
at the same quality. Opus runs at 48 kHz only, so an ``ogg`` clip is resampled to 48 kHz
(:func:`delivered_rate`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

Waveform = npt.NDArray[np.float32]
AudioFormat = Literal["wav", "flac", "ogg", "mp3"]
AUDIO_FORMATS: tuple[AudioFormat, ...] = get_args(AudioFormat)
MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg",
}
OPUS_RATE = 48_000


@dataclass(frozen=True)
class _Codec:
    """How libsndfile writes one format (compression levels measured in docs/audio-formats.md)."""

    container: str
    subtype: str
    compression_level: float | None = None
    bitrate_mode: str | None = None


_CODECS: dict[str, _Codec] = {
    "wav": _Codec("WAV", "PCM_16"),
    "flac": _Codec("FLAC", "PCM_16"),
    # libsndfile maps the level linearly onto Opus's bit rate: 0.84 is ~96 kbit/s for stereo
    "ogg": _Codec("OGG", "OPUS", compression_level=0.84),
    # constant bit rate (~112 kbit/s at 44.1 kHz): the simplest stream for a small decoder
    "mp3": _Codec("MP3", "MPEG_LAYER_III", compression_level=0.7, bitrate_mode="CONSTANT"),
}


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
    """16-bit PCM WAV bytes (the cache's canonical master); values beyond [-1, 1] are clipped."""
    return encode_audio(waveform, sample_rate, "wav")


def decode_wav(data: bytes) -> tuple[Waveform, int]:
    """Inverse of :func:`encode_wav` (reads any format libsndfile knows):
    ``(waveform (channels, frames), sample_rate)``."""
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(samples.T), int(rate)


def delivered_rate(audio_format: str, sample_rate: int) -> int:
    """The sample rate a clip has once encoded in ``audio_format`` (Opus: always 48 kHz)."""
    return OPUS_RATE if audio_format == "ogg" else sample_rate


def encode_audio(waveform: Waveform, sample_rate: int, audio_format: str) -> bytes:
    """The clip in one of :data:`AUDIO_FORMATS`; values beyond [-1, 1] are clipped."""
    rate = delivered_rate(audio_format, sample_rate)
    samples = np.clip(resample(waveform, sample_rate, rate), -1.0, 1.0).T
    return _write(samples, rate, audio_format)


def transcode(master: bytes, audio_format: str) -> bytes:
    """The cached master (16-bit WAV) in another format; WAV is returned as it is.

    The master's 16-bit samples go to the encoder as they are (no float round trip), so a
    FLAC copy decodes to exactly the master's samples.
    """
    if audio_format == "wav":
        return master
    samples, rate = sf.read(io.BytesIO(master), dtype="int16", always_2d=True)
    if delivered_rate(audio_format, rate) != rate:
        waveform = np.ascontiguousarray(samples.T, dtype=np.float32) / 32768.0
        return encode_audio(waveform, int(rate), audio_format)
    return _write(samples, int(rate), audio_format)


def _write(samples: npt.NDArray[np.float32] | npt.NDArray[np.int16], rate: int, audio_format: str) -> bytes:
    """libsndfile writes ``samples`` (frames, channels) in the format's codec."""
    codec = _CODECS.get(audio_format)
    if codec is None:
        raise ValueError(f"unknown audio format {audio_format!r}; choose one of {list(AUDIO_FORMATS)}")
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=codec.container, subtype=codec.subtype,
             compression_level=codec.compression_level, bitrate_mode=codec.bitrate_mode)
    return buffer.getvalue()


def resample(waveform: Waveform, source_rate: int, target_rate: int) -> Waveform:
    """High-quality polyphase resampling (soxr HQ)."""
    if source_rate == target_rate:
        return waveform
    out = soxr.resample(waveform.T, source_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).T)
