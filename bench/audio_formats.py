"""Size and encoding time of a 10 s stereo 44.1 kHz clip in each delivery format.

Two signals bound what a real clip costs: a "scene" (two tones, a slow amplitude swell and
quiet noise: compressible, like most ambience) and full-scale white noise (what the tiny
random-weight model makes; the worst case for FLAC). Encoding goes the way the appliance
does it: from the cached 16-bit WAV master (appliance.audio.transcode), best of 3 runs.

    .venv/bin/python bench/audio_formats.py
"""

from __future__ import annotations

import time

import numpy as np

from appliance.audio import AUDIO_FORMATS, encode_wav, transcode

RATE = 44100
SECONDS = 10.0


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    t = np.arange(int(RATE * SECONDS)) / RATE
    swell = 0.5 + 0.5 * np.sin(2 * np.pi * 0.2 * t)
    scene = np.stack([
        0.3 * swell * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(t.size),
        0.3 * swell * np.sin(2 * np.pi * 331 * t) + 0.02 * rng.standard_normal(t.size),
    ])
    noise = np.clip(0.3 * rng.standard_normal((2, t.size)), -1, 1)
    return {"scene": scene.astype(np.float32), "noise": noise.astype(np.float32)}


def main() -> None:
    figures: dict[str, str] = {}
    for name, signal in _signals().items():
        master = encode_wav(signal, RATE)
        for audio_format in AUDIO_FORMATS:
            times = []
            for _ in range(3):
                start = time.perf_counter()
                data = transcode(master, audio_format)
                times.append(time.perf_counter() - start)
            kbit_s = len(data) * 8 / SECONDS / 1000
            print(f"{name:6} {audio_format:5} {len(data):>9,} bytes  {kbit_s:7.1f} kbit/s  "
                  f"encode {min(times) * 1000:6.1f} ms")
            figures[f"{name}_{audio_format}_bytes"] = str(len(data))
            figures[f"{name}_{audio_format}_encode_ms"] = f"{min(times) * 1000:.0f}"
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
