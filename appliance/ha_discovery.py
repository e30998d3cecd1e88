"""Home Assistant MQTT discovery: the topics and the messages (pure functions, no I/O).

One device-based discovery message per node (``<prefix>/device/<node>/config``, retained):
one message to publish again on HA's birth message and one empty message to remove the
device, instead of one per entity (re-publishing every entity of a fleet on each birth is
a load storm). Entities read one retained JSON state message (``<base>/<node>/ha/state``)
through value templates, and all of them follow the node's own availability topic
(``<base>/<node>/status``, ``online``/``offline``: HA's default payloads).

Each entity has a ``unique_id`` (so HA lets users rename it) and a ``default_entity_id``:
current Home Assistant ignores ``object_id`` and takes the entity id from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from appliance import __version__
from appliance.config import HomeAssistantSettings
from appliance.metrics import Summary
from appliance.topics import Topics

# what a worker can be in without anyone having to look at it (appliance/worker/pool.py)
_TROUBLE_STATES = ("failed", "restarting", "stopped")
# `cache_type` of a served clip: the event types of the clip event entity
EVENT_TYPES = ("new_generation", "exact", "semantic")
PROMPT_MAX_CHARS = 255  # HA's limit for a text entity


def discovery_id(node: str) -> str:
    """The node id as HA allows it in a discovery topic (``[a-zA-Z0-9_-]``)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", node)


def entity_slug(node: str) -> str:
    """The node id as it may appear in an entity id (lower case, ``[a-z0-9_]``)."""
    return re.sub(r"[^a-z0-9]+", "_", node.lower()).strip("_") or "node"


@dataclass(frozen=True)
class HaTopics:
    """Every topic the Home Assistant integration publishes or listens on."""

    config: str
    birth: str
    availability: str
    state: str
    clip_event: str
    prompt_command: str
    refresh_command: str

    @classmethod
    def build(cls, settings: HomeAssistantSettings, topics: Topics) -> HaTopics:
        own = f"{topics.prefix}/ha"
        return cls(
            config=f"{settings.prefix}/device/{discovery_id(topics.node)}/config",
            birth=settings.birth_topic,
            availability=topics.status,
            state=f"{own}/state",
            clip_event=f"{own}/clip",
            prompt_command=f"{own}/prompt/set",
            refresh_command=f"{own}/refresh/press",
        )

    def subscriptions(self) -> list[str]:
        return [self.birth, self.prompt_command, self.refresh_command]


@dataclass(frozen=True)
class DeviceInfo:
    node: str
    name: str
    model: str
    configuration_url: str


def _value(field: str) -> str:
    return "{{ value_json." + field + " }}"


def discovery_config(topics: HaTopics, device: DeviceInfo) -> dict[str, Any]:
    """The device-based discovery payload of one node."""
    node_id = discovery_id(device.node)
    slug = entity_slug(device.node)
    state = {"state_topic": topics.state}
    diagnostic = {"entity_category": "diagnostic"}
    measurement = {"state_class": "measurement"}
    components: dict[str, dict[str, Any]] = {
        "cache_items": {"p": "sensor", "name": "Cache items", "icon": "mdi:database", **state,
                        "value_template": _value("cache_items"), **measurement, **diagnostic},
        "cache_bytes": {"p": "sensor", "name": "Cache size", **state, "device_class": "data_size",
                        "unit_of_measurement": "B", "value_template": _value("cache_bytes"),
                        **measurement, **diagnostic},
        "hit_ratio": {"p": "sensor", "name": "Cache hit ratio", "icon": "mdi:target", **state,
                      "unit_of_measurement": "%", "value_template": _value("hit_ratio"),
                      **measurement, **diagnostic},
        "queue_depth": {"p": "sensor", "name": "Queue depth", "icon": "mdi:tray-full", **state,
                        "value_template": _value("queue_depth"), **measurement, **diagnostic},
        "last_generation": {"p": "sensor", "name": "Last generation", **state,
                            "device_class": "duration", "unit_of_measurement": "s",
                            "value_template": _value("last_generation_s"), **measurement,
                            **diagnostic},
        "worker_state": {"p": "sensor", "name": "Worker state", "icon": "mdi:cogs", **state,
                         "value_template": _value("worker_state"), **diagnostic},
        "problem": {"p": "binary_sensor", "name": "Problem", "device_class": "problem", **state,
                    "value_template": "{{ 'ON' if value_json.problem else 'OFF' }}",
                    "json_attributes_topic": topics.state,
                    "json_attributes_template": "{{ {'problems': value_json.problems} | tojson }}",
                    **diagnostic},
        "prompt": {"p": "text", "name": "Prompt", "icon": "mdi:music-note-plus",
                   "command_topic": topics.prompt_command, "min": 1, "max": PROMPT_MAX_CHARS,
                   "mode": "text"},
        "clip": {"p": "event", "name": "Clip", "icon": "mdi:music-box", "state_topic": topics.clip_event,
                 "event_types": list(EVENT_TYPES)},
        # safe maintenance only: publishes the configuration and the state again
        "refresh": {"p": "button", "name": "Refresh", "icon": "mdi:refresh",
                    "command_topic": topics.refresh_command, "payload_press": "PRESS", **diagnostic},
    }
    for name, component in components.items():
        component["unique_id"] = f"audiogen_{node_id}_{name}"
        component["default_entity_id"] = f"{component['p']}.audiogen_{slug}_{name}"
    return {
        "dev": {"identifiers": [f"audiogen_{node_id}"], "name": device.name,
                "manufacturer": "audiogen", "model": device.model, "sw_version": __version__,
                "configuration_url": device.configuration_url},
        "o": {"name": "audiogen appliance", "sw_version": __version__},
        "cmps": components,
        "availability_topic": topics.availability,
        "qos": 1,
    }


def state_message(summary: Summary, workers: list[dict[str, Any]],
                  last_generation_s: float | None) -> dict[str, Any]:
    """The retained state every entity reads (its value templates pick their field)."""
    problems = [
        f"worker {w.get('name')} (device {w.get('gpu')}) {w.get('state')}"
        + (f": {w['last_error']}" if w.get("last_error") else "")
        for w in workers if w.get("state") in _TROUBLE_STATES
    ]
    if len(workers) == 1:
        worker_state = str(workers[0].get("state"))
    else:
        worker_state = ", ".join(f"{w.get('name')}: {w.get('state')}" for w in workers) or "none"
    hit_rate = summary.hit_rate
    return {
        "cache_items": summary.cache_items,
        "cache_bytes": summary.cache_bytes,
        "hit_ratio": None if hit_rate is None else round(100 * hit_rate, 1),
        "queue_depth": summary.queue_depth,
        "last_generation_s": last_generation_s,
        "worker_state": worker_state,
        "problem": bool(problems),
        "problems": problems,
    }


def clip_event(body: dict[str, Any], audio_base_url: str, audio_format: str) -> dict[str, Any]:
    """The event message for one served clip (a reply body of the MQTT API).

    The URL is the clip's ``/audio/<key>.<audio_format>`` whether or not the request asked
    for a URL, or for that format (HTTP encodes it on first use); a clip that could not be
    cached has none (``url`` is null).
    """
    stored = body.get("stored", True)
    url = f"{audio_base_url.rstrip('/')}/audio/{body['key']}.{audio_format}" if stored else None
    event_type = body.get("cache_type")
    return {
        "event_type": event_type if event_type in EVENT_TYPES else "new_generation",
        "url": url,
        "format": audio_format,
        "prompt": body.get("prompt"),
        "key": body.get("key"),
        "request_id": body.get("request_id"),
        "duration_s": body.get("duration_s"),
        "cached": bool(body.get("cached")),
    }
