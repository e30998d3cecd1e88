"""The discovery payload checked against Home Assistant's documented rules.

Home Assistant core needs Python 3.13 or newer, so its own schemas cannot run on these
machines (Python 3.11). The rules below restate, independently of the appliance's code, what
HA's MQTT documentation requires of a device-based discovery message: the abbreviations HA
expands, the keys each platform accepts and requires, device classes with their units,
unique ids, and entity ids. The value templates are rendered with Jinja2 (HA's template
engine) against a real state message.
"""

from __future__ import annotations

import re
from typing import Any

import jinja2
import pytest

from appliance.config import HomeAssistantSettings, NodeSettings
from appliance.ha_discovery import (
    DeviceInfo,
    HaTopics,
    clip_event,
    discovery_config,
    state_message,
)
from appliance.metrics import Summary
from appliance.topics import Topics

ROOT_ABBREVIATIONS = {"dev": "device", "o": "origin", "cmps": "components", "avty_t": "availability_topic",
                      "avty": "availability", "avty_mode": "availability_mode", "e": "encoding"}
COMPONENT_ABBREVIATIONS = {
    "p": "platform", "stat_t": "state_topic", "cmd_t": "command_topic", "val_tpl": "value_template",
    "uniq_id": "unique_id", "dev_cla": "device_class", "stat_cla": "state_class",
    "unit_of_meas": "unit_of_measurement", "ent_cat": "entity_category", "ic": "icon",
    "json_attr_t": "json_attributes_topic", "json_attr_tpl": "json_attributes_template",
    "pl_prs": "payload_press", "evt_typ": "event_types", "exp_aft": "expire_after",
    "pl_avail": "payload_available", "pl_not_avail": "payload_not_available", "obj_id": "object_id",
}
DEVICE_ABBREVIATIONS = {"ids": "identifiers", "mf": "manufacturer", "mdl": "model", "sw": "sw_version",
                        "hw": "hw_version", "sn": "serial_number", "cu": "configuration_url"}
ORIGIN_ABBREVIATIONS = {"sw": "sw_version", "url": "support_url"}
# options a device-based message may carry at its root, shared by every component
SHARED = {"availability_topic", "availability", "availability_mode", "payload_available",
          "payload_not_available", "qos", "encoding", "state_topic", "command_topic"}
COMMON = SHARED | {"platform", "name", "unique_id", "default_entity_id", "object_id", "icon",
                   "entity_category", "enabled_by_default", "json_attributes_topic",
                   "json_attributes_template", "entity_picture"}
PLATFORMS: dict[str, tuple[set[str], set[str]]] = {  # required, other accepted keys
    "sensor": ({"state_topic"}, {"value_template", "device_class", "state_class", "unit_of_measurement",
                                 "expire_after", "force_update", "suggested_display_precision", "options"}),
    "binary_sensor": ({"state_topic"}, {"value_template", "device_class", "payload_on", "payload_off",
                                        "off_delay", "expire_after", "force_update"}),
    "text": ({"command_topic"}, {"command_template", "state_topic", "value_template", "min", "max",
                                 "mode", "pattern", "retain"}),
    "button": ({"command_topic"}, {"command_template", "payload_press", "device_class", "retain"}),
    "event": ({"state_topic", "event_types"}, {"value_template", "device_class"}),
}
UNITS = {"data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB"},
         "duration": {"d", "h", "min", "s", "ms", "µs"}}
BINARY_SENSOR_CLASSES = {"problem", "connectivity", "running", "update", "safety"}
ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def expand(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """What HA makes of a device-based message: root options and expanded components."""
    root = {ROOT_ABBREVIATIONS.get(k, k): v for k, v in payload.items()}
    root["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in root["device"].items()}
    root["origin"] = {ORIGIN_ABBREVIATIONS.get(k, k): v for k, v in root["origin"].items()}
    shared = {k: v for k, v in root.items() if k in SHARED}
    components = {}
    for object_id, raw in root.pop("components").items():
        component = {COMPONENT_ABBREVIATIONS.get(k, k): v for k, v in raw.items()}
        components[object_id] = {**shared, **component}
    return root, components


def build(node: str = "test-node", prefix: str = "homeassistant") -> tuple[HaTopics, dict[str, Any]]:
    topics = HaTopics.build(HomeAssistantSettings(prefix=prefix), Topics.from_settings(NodeSettings(id=node)))
    device = DeviceInfo(node, f"Audio generator {node}", "tiny-tangoflux", "http://127.0.0.1:8380")
    return topics, discovery_config(topics, device)


def test_every_component_has_its_platforms_required_keys_and_no_unknown_ones() -> None:
    topics, payload = build()
    root, components = expand(payload)
    assert set(root) <= {"device", "origin", *SHARED}, "unknown root keys"
    assert root["origin"]["name"], "origin needs a name"
    assert root["device"]["identifiers"] and root["device"]["name"]
    assert root["availability_topic"] == "audiogen/test-node/status"
    assert {c["platform"] for c in components.values()} == set(PLATFORMS)
    for object_id, component in components.items():
        assert ID.match(object_id), object_id
        required, optional = PLATFORMS[component["platform"]]
        assert required <= set(component), (object_id, required - set(component))
        unknown = set(component) - required - optional - COMMON
        assert not unknown, (object_id, unknown)
        assert component.get("entity_category", "diagnostic") == "diagnostic" or (
            component["platform"] == "button"), object_id
        if component["platform"] == "sensor" and "device_class" in component:
            assert component["unit_of_measurement"] in UNITS[component["device_class"]], object_id
        if component["platform"] == "binary_sensor":
            assert component["device_class"] in BINARY_SENSOR_CLASSES
    text = next(c for c in components.values() if c["platform"] == "text")
    assert 0 <= text["min"] <= text["max"] <= 255
    assert text["command_topic"] == topics.prompt_command
    problem = next(c for c in components.values() if c["platform"] == "binary_sensor")
    assert problem["device_class"] == "problem"
    sizes = [c for c in components.values() if c.get("device_class") == "data_size"]
    durations = [c for c in components.values() if c.get("device_class") == "duration"]
    assert len(sizes) == 1 and len(durations) == 1 and durations[0]["unit_of_measurement"] == "s"


def test_unique_ids_and_entity_ids_are_unique_and_well_formed_across_nodes() -> None:
    ids, entity_ids = [], []
    for node in ("test-node", "kitchen.box 2", "Hall"):
        topics, payload = build(node)
        assert re.fullmatch(r"homeassistant/device/[a-zA-Z0-9_-]+/config", topics.config), topics.config
        _, components = expand(payload)
        for component in components.values():
            ids.append(component["unique_id"])
            entity_id = component["default_entity_id"]
            domain, _, object_id = entity_id.partition(".")
            assert domain == component["platform"] and re.fullmatch(r"[a-z0-9_]+", object_id), entity_id
            entity_ids.append(entity_id)
            assert "object_id" not in component, "ignored by current HA: default_entity_id replaces it"
    assert len(set(ids)) == len(ids) and len(set(entity_ids)) == len(entity_ids)


def test_prefix_is_configurable() -> None:
    topics, _ = build(prefix="ha-test")
    assert topics.config == "ha-test/device/test-node/config"


@pytest.mark.parametrize("workers, problem", [
    ([{"name": "w0", "gpu": "0", "state": "ready"}], False),
    ([{"name": "w0", "gpu": "0", "state": "busy"}, {"name": "w1", "gpu": "1", "state": "starting"}], False),
    ([{"name": "w0", "gpu": "0", "state": "restarting", "last_error": "CUDA error: out of memory"}], True),
    ([{"name": "w0", "gpu": "0", "state": "ready"}, {"name": "w1", "gpu": "1", "state": "failed"}], True),
])
def test_value_templates_render_valid_states(workers: list[dict[str, Any]], problem: bool) -> None:
    _, payload = build()
    _, components = expand(payload)
    summary = Summary(requests=5, exact_hits=2, semantic_hits=1, misses=1, cache_items=3,
                      cache_bytes=4_000_000, evictions=0, queue_depth=2, start_time=0.0)
    state = state_message(summary, workers, last_generation_s=1.25)
    env = jinja2.Environment()
    rendered = {name: env.from_string(c["value_template"]).render(value_json=state)
                for name, c in components.items() if "value_template" in c}
    for name, value in rendered.items():
        component = components[name]
        if component.get("state_class") == "measurement":
            float(value)  # a measurement must render a number
        if component["platform"] == "binary_sensor":
            assert value == ("ON" if problem else "OFF")
            attributes = env.from_string(component["json_attributes_template"]).render(value_json=state)
            assert ("CUDA" in attributes) == any("CUDA" in w.get("last_error", "") for w in workers)
    assert float(rendered["hit_ratio"]) == 75.0 and float(rendered["cache_bytes"]) == 4_000_000
    assert float(rendered["last_generation"]) == 1.25


def test_clip_event_type_is_declared_and_carries_the_url_in_has_format() -> None:
    _, payload = build()
    _, components = expand(payload)
    declared = next(c for c in components.values() if c["platform"] == "event")["event_types"]
    hit = {"cache_type": "semantic", "key": "k1", "cached": True, "prompt": "rain"}
    # a request that asked for WAV: HA still gets its own format
    generated = {"cache_type": "new_generation", "key": "k2", "stored": True, "cached": False,
                 "audio_url": "http://box:8380/audio/k2", "format": "wav"}
    unstored = {"cache_type": "new_generation", "key": "k3", "stored": False, "cached": False}
    for body, url in ((hit, "http://box:8380/audio/k1.mp3"), (generated, "http://box:8380/audio/k2.mp3"),
                      (unstored, None)):
        event = clip_event(body, "http://box:8380/", "mp3")
        assert event["event_type"] in declared and event["url"] == url and event["format"] == "mp3"
    assert clip_event(hit, "http://box:8380", "flac")["url"] == "http://box:8380/audio/k1.flac"
