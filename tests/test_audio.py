from __future__ import annotations

import numpy as np

from appliance.audio import decode_wav, encode_wav, make_seamless_loop, resample, wrap_discontinuity


def _noisy_tone(frames: int, rate: int = 44100) -> np.ndarray:
    t = np.arange(frames) / rate
    rng = np.random.default_rng(0)
    left = 0.5 * np.sin(2 * np.pi * 220.7 * t) + 0.05 * rng.standard_normal(frames)
    right = 0.5 * np.sin(2 * np.pi * 331.1 * t + 1.0)
    return np.stack([left, right]).astype(np.float32)


def test_loop_treatment_removes_the_wrap_around_click() -> None:
    fade = 11025
    raw = _noisy_tone(44100 * 2 + fade)
    looped = make_seamless_loop(raw, fade)
    plain = raw[:, : 44100 * 2]
    assert looped.shape == plain.shape
    neighbour_jump = float(np.max(np.abs(np.diff(raw, axis=1))))
    assert wrap_discontinuity(looped) <= neighbour_jump
    assert wrap_discontinuity(looped) < wrap_discontinuity(plain) / 4


def test_wav_round_trip_keeps_rate_shape_and_values() -> None:
    audio = _noisy_tone(4410)
    decoded, rate = decode_wav(encode_wav(audio, 44100))
    assert rate == 44100 and decoded.shape == audio.shape
    assert np.max(np.abs(decoded - np.clip(audio, -1, 1))) < 1e-3


def test_resample_to_48k_changes_length_by_the_ratio() -> None:
    audio = _noisy_tone(44100)
    out = resample(audio, 44100, 48000)
    assert out.shape == (2, 48000) and out.dtype == np.float32
