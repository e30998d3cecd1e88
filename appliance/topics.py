"""The MQTT topic layout of one appliance (``<base>/<node>/…``)."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config import NodeSettings


@dataclass(frozen=True)
class Topics:
    base: str
    node: str
    share_group: str = ""

    @classmethod
    def from_settings(cls, node: NodeSettings) -> Topics:
        return cls(base=node.base_topic, node=node.node_id, share_group=node.share_group)

    @property
    def prefix(self) -> str:
        return f"{self.base}/{self.node}"

    @property
    def request(self) -> str:
        return f"{self.prefix}/request"

    @property
    def shared_request(self) -> str:
        """The fleet queue: every appliance in the group takes turns (MQTT 5 brokers)."""
        return f"$share/{self.share_group}/{self.base}/request"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def stats(self) -> str:
        """The retained periodic summary (appliance/stats.py)."""
        return f"{self.prefix}/stats"

    @property
    def errors(self) -> str:
        """Where errors go when a request named no reply address at all."""
        return f"{self.prefix}/errors"

    def reply(self, request_id: str) -> str:
        """Default reply topic for a request without Response Topic or ``reply_to``."""
        return f"{self.prefix}/reply/{request_id}"

    def progress(self, request_id: str) -> str:
        return f"{self.prefix}/progress/{request_id}"

    @property
    def admin_commands(self) -> str:
        """Subscription for every admin command (``<prefix>/admin/<command>``)."""
        return f"{self.prefix}/admin/+"

    def admin(self, command: str) -> str:
        return f"{self.prefix}/admin/{command}"

    def admin_reply(self, command: str) -> str:
        """Default reply topic of an admin command that named no reply address."""
        return f"{self.prefix}/admin-reply/{command}"

    def is_admin(self, topic: str) -> bool:
        return topic.startswith(f"{self.prefix}/admin/")

    def subscriptions(self) -> list[str]:
        """The node's own topics (its persistent session); the fleet's are separate."""
        return [self.request, self.admin_commands]

    def fleet_subscriptions(self) -> list[str]:
        """The fleet queue, on a clean session of its own (appliance/mqtt.py FleetSession)."""
        return [self.shared_request] if self.share_group else []

    def is_reserved(self, topic: str) -> bool:
        """Topics a device may not name as its reply address: the fleet queue, and the
        requests, status, stats, errors and admin commands of *any* node under the base
        (this one or another: a reply must not command an appliance). The operators'
        ``<prefix>/admin-reply/...`` and the devices' ``<prefix>/reply/...`` stay open."""
        if not topic.startswith(f"{self.base}/"):
            return False
        levels = topic[len(self.base) + 1:].split("/")
        if levels[0].startswith("request"):  # the fleet queue, <base>/request
            return True
        if len(levels) < 2:
            return False
        own = ("request", "status", "stats", "errors")
        return (len(levels) == 2 and levels[1] in own) or levels[1] == "admin"

    @staticmethod
    def audio(reply_topic: str) -> str:
        return f"{reply_topic}/audio"
