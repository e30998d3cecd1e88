"""Audio formats (wav, flac, ogg = Opus, mp3), checked by an independent decoder: ffmpeg.

Debian's ffprobe/ffmpeg (scripts/install-test-tools.sh) read what libsndfile wrote: codec,
sample rate, channels and duration must be what the reply says. End to end, one real service
answers one prompt in every format, over MQTT and HTTP, from one cached master.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.audio import AUDIO_FORMATS, encode_audio, encode_wav, transcode
from appliance.client import RequestClient
from appliance.errors import InvalidRequest
from appliance.protocol import parse_request
from testkit.services import ServiceProcess, service_with_broker

CODECS = {"wav": "pcm_s16le", "flac": "flac", "ogg": "opus", "mp3": "mp3"}
RATE = 44100


def _probe(data: bytes, tmp_path: Path, name: str) -> dict[str, Any]:
    """ffprobe's view of the bytes: codec, rate, channels, duration."""
    path = tmp_path / name
    path.write_bytes(data)
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries",
         "stream=codec_name,sample_rate,channels:format=duration,format_name", "-of", "json", str(path)],
        check=True, capture_output=True, timeout=60,
    ).stdout
    info = json.loads(out)
    (stream,) = info["streams"]
    return {"codec": stream["codec_name"], "rate": int(stream["sample_rate"]),
            "channels": int(stream["channels"]), "duration": float(info["format"]["duration"]),
            "container": info["format"]["format_name"]}


def _ffmpeg_pcm(data: bytes, tmp_path: Path, name: str) -> bytes:
    """ffmpeg's own decoding of the bytes, as interleaved 16-bit PCM."""
    path = tmp_path / name
    path.write_bytes(data)
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-"],
                          check=True, capture_output=True, timeout=60).stdout


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return np.stack([0.4 * np.sin(2 * np.pi * 220 * t), 0.4 * np.sin(2 * np.pi * 331 * t)]).astype(np.float32)


def test_each_format_decodes_with_ffmpeg_to_the_clip_rate_channels_and_duration(tmp_path: Path) -> None:
    clip = _tone(3.0)
    sizes = {}
    for audio_format in AUDIO_FORMATS:
        data = encode_audio(clip, RATE, audio_format)
        sizes[audio_format] = len(data)
        probe = _probe(data, tmp_path, f"clip.{audio_format}")
        assert probe["codec"] == CODECS[audio_format], probe
        assert probe["rate"] == (48000 if audio_format == "ogg" else RATE), probe
        assert probe["channels"] == 2, probe
        assert abs(probe["duration"] - 3.0) < 0.06, probe
    assert sizes["ogg"] < sizes["mp3"] < sizes["flac"] < sizes["wav"], sizes
    # from the cached master, FLAC is lossless: ffmpeg decodes the master's samples, bit for bit
    master = encode_wav(clip, RATE)
    flac = transcode(master, "flac")
    assert _probe(flac, tmp_path, "t.flac")["codec"] == "flac"
    assert _ffmpeg_pcm(flac, tmp_path, "t.flac") == _ffmpeg_pcm(master, tmp_path, "m.wav")


def test_an_unknown_format_is_invalid_request_listing_the_choices() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(b'{"prompt": "rain", "format": "aac"}', 4096)
    assert caught.value.code == "invalid_request"
    assert caught.value.message == "format: must be one of wav, flac, ogg, mp3"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[ServiceProcess]:
    # exact hits are enough here (semantic off: a faster start)
    with service_with_broker(tmp_path_factory.mktemp("formats"), models_dir,
                             generation={"default_duration_s": 2.0}, cache={"semantic": False}) as service:
        yield service


def _http(url: str, method: str = "GET", headers: dict[str, str] | None = None
          ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status), {k.lower(): v for k, v in response.headers.items()}, response.read()


def test_one_master_is_cached_and_each_format_is_encoded_once_for_mqtt_and_http(
    service: ServiceProcess, tmp_path: Path
) -> None:
    client = RequestClient(service.settings.broker, service.topics)
    client.connect()
    prompt = "a kettle whistling in a quiet kitchen"
    try:
        first = client.request({"prompt": prompt, "format": "flac", "deliver": "both"}, want_audio=True)
        replies = {fmt: client.request({"prompt": prompt, "format": fmt, "deliver": "mqtt"}, want_audio=True)
                   for fmt in ("ogg", "mp3", "wav", "ogg")}  # ogg twice: the second is the kept copy
        by_url = client.request({"prompt": prompt, "format": "mp3", "deliver": "url"})
    finally:
        client.close()
    body = first.body
    assert body["status"] == "ok" and body["cached"] is False, body
    assert (body["format"], body["content_type"]) == ("flac", "audio/flac")
    assert first.audio is not None and body["audio_bytes"] == len(first.audio)
    assert body["audio_url"].endswith(f"/audio/{body['key']}.flac")
    status, headers, over_http = _http(body["audio_url"])
    assert (status, headers["content-type"], over_http) == (200, "audio/flac", first.audio)

    audios = {"flac": first.audio}
    for fmt, reply in replies.items():
        assert reply.body["cached"] is True and reply.body["key"] == body["key"], reply.body
        assert reply.body["format"] == fmt and reply.audio is not None
        assert reply.body["audio_bytes"] == len(reply.audio)
        assert reply.body["sample_rate"] == (48000 if fmt == "ogg" else RATE)
        audios[fmt] = reply.audio
    for fmt, data in audios.items():  # what the device got, read by ffmpeg
        probe = _probe(data, tmp_path, f"reply.{fmt}")
        assert probe["codec"] == CODECS[fmt] and probe["channels"] == 2, (fmt, probe)
        assert probe["rate"] == (48000 if fmt == "ogg" else RATE), (fmt, probe)
        assert abs(probe["duration"] - body["duration_s"]) < 0.06, (fmt, probe)

    mp3 = by_url.body
    assert mp3["audio_url"].endswith(f"/audio/{body['key']}.mp3") and mp3["content_type"] == "audio/mpeg"
    status, headers, data = _http(mp3["audio_url"], "HEAD")
    assert (status, headers["content-type"], data) == (200, "audio/mpeg", b"")
    assert int(headers["content-length"]) == mp3["audio_bytes"] == len(audios["mp3"])
    status, headers, data = _http(mp3["audio_url"], headers={"Range": "bytes=100-199"})
    assert (status, headers["content-type"], data) == (206, "audio/mpeg", audios["mp3"][100:200])
    _, headers, data = _http(body["audio_url"].removesuffix(".flac"))  # the master, as before
    assert (headers["content-type"], data) == ("audio/wav", audios["wav"])

    # one master in the cache; one kept copy per other format, each encoded once
    cache_dir = service.settings.cache.dir
    assert sorted(p.name for p in (cache_dir / "audio").iterdir()) == [f"{body['key']}.wav"]
    assert sorted(p.name for p in (cache_dir / "encoded").iterdir()) == [
        f"{body['key']}.{fmt}" for fmt in ("flac", "mp3", "ogg")]
    encodings = [json.loads(line) for line in service.log_path.read_text().splitlines()
                 if '"encoded a cached clip"' in line]
    assert sorted(entry["format"] for entry in encodings) == ["flac", "mp3", "ogg"], encodings
