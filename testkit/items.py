"""Cache items as the tests and benchmarks need them: a prompt, its key, plausible metadata."""

from __future__ import annotations

import time
from typing import Any

from appliance.cache.keys import exact_key, new_item_key
from appliance.cache.store import CacheItem


def make_item(prompt: str, *, model: str = "m", duration_s: float = 1.0, **fields: Any) -> CacheItem:
    """An item for ``prompt`` (a fresh key; its exact key from prompt, model and duration);
    ``fields`` override any other metadata."""
    metadata: dict[str, Any] = {
        "requested_duration_s": duration_s, "is_loop": False, "steps": 4, "guidance_scale": 4.5,
        "candidates": 1, "seed": None, "sample_rate": 44100, "channels": 2, "audio_format": "wav",
        "audio_bytes": 0, "generation_timestamp": time.time(), "generation_s": 0.1,
    } | fields
    return CacheItem(
        key=new_item_key(),
        exact_key=exact_key(prompt, model=model, duration_s=duration_s, loop=metadata["is_loop"]),
        prompt=prompt, model=model, duration_s=duration_s, **metadata,
    )
