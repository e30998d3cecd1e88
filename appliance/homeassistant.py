"""The Home Assistant bridge: discovery, state, the prompt entity and the clip event.

It publishes the discovery configuration (retained) on every new broker connection and
again whenever HA's birth message says ``online`` (HA forgets MQTT entities when it
restarts), then the retained state; the state is published again whenever it changes,
checked on each turn of the main loop. A prompt typed into the text entity becomes a
request through the supervisor's usual path, in ``homeassistant.audio_format``; every clip
served, whatever asked for it, fires the event entity (never retained: HA discards retained
event messages) with a URL in that same format, so that an automation always gets one kind
of file whatever format the request that made the clip asked for.

With ``homeassistant.discovery = false`` it publishes one empty retained configuration on
connect, which removes the device from HA (the way a node is retired), and nothing else.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from appliance.config import HomeAssistantSettings
from appliance.ha_discovery import DeviceInfo, HaTopics, clip_event, discovery_config, state_message
from appliance.metrics import Summary
from appliance.mqtt import InboundMessage
from appliance.supervisor import Publisher

log = logging.getLogger(__name__)


class HomeAssistantBridge:
    """Keeps one node's device in Home Assistant current."""

    def __init__(
        self,
        settings: HomeAssistantSettings,
        topics: HaTopics,
        publisher: Publisher,
        *,
        device: DeviceInfo,
        audio_base_url: str,
        summary: Callable[[], Summary],
        workers: Callable[[], list[dict[str, Any]]],
        submit_prompt: Callable[[dict[str, Any]], None],
    ) -> None:
        self._settings = settings
        self.topics = topics
        self._publisher = publisher
        self._config = json.dumps(discovery_config(topics, device), separators=(",", ":")).encode()
        self._audio_base_url = audio_base_url
        self._summary = summary
        self._workers = workers
        self._submit_prompt = submit_prompt
        self._lock = threading.Lock()
        self._was_connected = False
        self._last_state: bytes | None = None
        self._last_generation_s: float | None = None
        self._configs_published = 0
        self._births = 0
        self._events = 0

    @property
    def enabled(self) -> bool:
        return self._settings.discovery

    def subscriptions(self) -> list[str]:
        return self.topics.subscriptions() if self.enabled else []

    def handles(self, topic: str) -> bool:
        return self.enabled and topic in self.topics.subscriptions()

    def handle(self, message: InboundMessage) -> None:
        """A message on one of :meth:`subscriptions` (on the network thread). Never raises."""
        try:
            if message.topic == self.topics.birth:
                if message.payload.strip() == b"online":
                    self._births += 1
                    log.info("Home Assistant started: publishing the discovery configuration again")
                    self.publish_all()
            elif message.topic == self.topics.prompt_command:
                prompt = message.payload.decode("utf-8", errors="replace")
                log.info("prompt from Home Assistant", extra={"chars": len(prompt)})
                self._submit_prompt({"prompt": prompt, "deliver": "url",
                                     "format": self._settings.audio_format})
            elif message.topic == self.topics.refresh_command:
                self.publish_all()
        except Exception:
            log.exception("Home Assistant message failed", extra={"topic": message.topic})

    def tick(self, connected: bool) -> None:
        """One turn of the main loop: (re)publish on a new connection, or the changed state."""
        new_connection = connected and not self._was_connected
        self._was_connected = connected
        if not connected:
            return
        if not self.enabled:
            if new_connection:
                self.remove()
            return
        if new_connection:
            self.publish_all()
        else:
            self.publish_state(force=False)

    def publish_all(self) -> None:
        """The configuration, then the state (both retained)."""
        self._publisher.publish(self.topics.config, self._config, retain=True)
        self._configs_published += 1
        self.publish_state(force=True)

    def publish_state(self, *, force: bool) -> None:
        with self._lock:
            last_generation_s = self._last_generation_s
        state = json.dumps(state_message(self._summary(), self._workers(), last_generation_s),
                           separators=(",", ":")).encode()
        if force or state != self._last_state:
            self._last_state = state
            self._publisher.publish(self.topics.state, state, retain=True)

    def remove(self) -> None:
        """Empty retained configuration and state: HA deletes the device and its entities."""
        self._publisher.publish(self.topics.config, b"", retain=True)
        self._publisher.publish(self.topics.state, b"", retain=True)
        log.info("removed the device from Home Assistant", extra={"topic": self.topics.config})

    def clip_served(self, body: dict[str, Any]) -> None:
        """The supervisor served a clip: fire the event entity (any thread)."""
        if not self.enabled:
            return
        if not body.get("cached") and isinstance(body.get("generation_s"), int | float):
            with self._lock:
                self._last_generation_s = round(float(body["generation_s"]), 3)
        event = clip_event(body, self._audio_base_url, self._settings.audio_format)
        self._publisher.publish(self.topics.clip_event, json.dumps(event).encode(), retain=False)
        self._events += 1

    def status(self) -> dict[str, Any]:
        """What ``appliance status`` shows."""
        return {"discovery": self.enabled, "config_topic": self.topics.config,
                "audio_format": self._settings.audio_format,
                "configs_published": self._configs_published, "births_seen": self._births,
                "events_fired": self._events}
