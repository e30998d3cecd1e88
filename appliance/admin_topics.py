"""The MQTT side of the admin API: ``<base>/<node>/admin/<command>`` → one reply.

The body is a JSON object holding the command's arguments (the same names as
:class:`~appliance.admin.AdminDispatcher` takes) plus three envelope fields that are not
arguments: ``request_id``, ``reply_to`` (MQTT 3.1.1 clients) and ``client_id`` (who asks,
for the audit log; MQTT does not tell a subscriber who published). The reply goes to the
MQTT 5 Response Topic (with its Correlation Data), else ``reply_to``, else
``<base>/<node>/admin-reply/<command>``: the supervisor's rule (:func:`reply_address`), which
refuses an address naming the appliance's own topics; the refusal, like every error and a
``busy``, goes where :func:`error_address` finds.

Commands run one at a time on their own thread, so a slow ``duplicates`` over a large cache
never holds up the network thread that answers cache hits; the queue of waiting commands is
bounded and a command beyond it is answered ``busy``; one that arrives after the drain closed
the thread is answered ``unavailable``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from appliance.admin import AdminDispatcher
from appliance.errors import ApplianceError, Busy, InvalidRequest, Unavailable
from appliance.mqtt import InboundMessage
from appliance.protocol import (
    check_payload_size,
    decode_json_object,
    encode,
    error_reply,
    is_valid_publish_topic,
    salvage_reply_fields,
)
from appliance.supervisor import Publisher, ReplyAddress, error_address, reply_address
from appliance.topics import Topics

log = logging.getLogger(__name__)

_ENVELOPE = ("request_id", "reply_to", "client_id")
MAX_WAITING_COMMANDS = 16


class AdminTopicHandler:
    """Turns admin messages into dispatcher calls and their results into replies."""

    def __init__(
        self, dispatcher: AdminDispatcher, publisher: Publisher, topics: Topics, *,
        max_payload_bytes: int, after_change: Callable[[], None] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._publisher = publisher
        self._topics = topics
        self._max_payload_bytes = max_payload_bytes
        self._after_change = after_change
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="admin")
        self._slots = threading.BoundedSemaphore(MAX_WAITING_COMMANDS)

    def handle(self, message: InboundMessage) -> None:
        """Queue one admin message; never raises."""
        command = message.topic.rsplit("/", 1)[-1]
        if not self._slots.acquire(blocking=False):
            self._refuse(message, command, Busy("too many admin commands waiting"))
            return
        try:
            self._executor.submit(self._run, message, command)
        except RuntimeError:  # closed by the drain while the broker still delivers commands
            self._slots.release()
            self._refuse(message, command, Unavailable("the appliance is shutting down"))

    def _refuse(self, message: InboundMessage, command: str, error: ApplianceError) -> None:
        """Answer a command that will not run, where its own reply fields say."""
        request_id, reply_to = None, None
        if len(message.payload) <= self._max_payload_bytes:
            request_id, reply_to = salvage_reply_fields(message.payload)
        self._reply(self._error_address(message, command, request_id, reply_to),
                    error_reply(request_id, error))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _run(self, message: InboundMessage, command: str) -> None:
        request_id: str | None = None
        address = self._error_address(message, command, None, None)
        try:
            check_payload_size(message.payload, self._max_payload_bytes)
            body = decode_json_object(message.payload) if message.payload.strip() else {}
            request_id = _optional_str(body, "request_id")
            reply_to = _optional_str(body, "reply_to")
            address = self._error_address(message, command, request_id, reply_to)
            address = reply_address(self._topics, message, reply_to, self._topics.admin_reply(command))
            client_id = _optional_str(body, "client_id")
            args = {name: value for name, value in body.items() if name not in _ENVELOPE}
            result = self._dispatcher.dispatch(command, args, source="mqtt", client_id=client_id)
            if result.get("removed_count") and not result.get("dry_run") and self._after_change:
                self._after_change()
            self._reply(address, {"request_id": request_id, "status": "ok", **result})
        except ApplianceError as error:
            log.warning("admin command refused", extra={"command": command, "code": error.code,
                                                        "error": error.message})
            self._reply(address, error_reply(request_id, error))
        except Exception as exc:  # a bug answers the command instead of dropping it
            log.exception("admin command failed", extra={"command": command})
            self._reply(address, error_reply(request_id, ApplianceError(str(exc))))
        finally:
            self._slots.release()

    def _error_address(self, message: InboundMessage, command: str, request_id: str | None,
                       reply_to: str | None) -> ReplyAddress:
        return error_address(self._topics, message, request_id, reply_to,
                             default=self._topics.admin_reply(command))

    def _reply(self, address: ReplyAddress, body: dict[str, Any]) -> None:
        self._publisher.publish(address.topic, encode(body), correlation_data=address.correlation_data)


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidRequest(f"{name} must be a non-empty string of at most 200 characters")
    if name == "reply_to" and not is_valid_publish_topic(value):
        raise InvalidRequest("reply_to is not a topic one can publish to")
    return value
