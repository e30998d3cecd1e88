"""A minimal sd_notify client: readiness, watchdog and status messages to systemd.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: a datagram socket (a leading
``@`` names the Linux abstract namespace). With ``WatchdogSec=`` it also passes
``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``); the service must send ``WATCHDOG=1`` more often
than that, conventionally every half of it. Outside systemd every method is a no-op, so the
caller never has to check. Sending never raises: a lost notification must not stop the
service (systemd notices a missing watchdog ping by itself).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1`` and ``STATUS=`` to systemd."""

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        """``address``: the ``$NOTIFY_SOCKET`` value (``None``: not under systemd)."""
        self._address: str | None = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()  # the watchdog ping may come from another thread

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> SystemdNotifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog is ignored when ``WATCHDOG_PID`` names another process (it was meant for
        a parent that exec'd or forked us) or when ``WATCHDOG_USEC`` is not a positive integer.
        """
        usec: int | None = None
        raw = environ.get("WATCHDOG_USEC", "").strip()
        pid = environ.get("WATCHDOG_PID", "").strip()
        if raw and (not pid or pid == str(os.getpid())):
            try:
                usec = int(raw)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC that is not an integer", extra={"value": raw})
        return cls(environ.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        """True when there is a systemd notification socket to talk to."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to call :meth:`watchdog` (half of ``WATCHDOG_USEC``); ``None``: no watchdog."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2_000_000

    def ready(self, status: str = "") -> bool:
        """Tell systemd that start-up is complete (``Type=notify`` waits for this)."""
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        """Keep-alive ping; a service that stops sending is killed and restarted."""
        return self.notify("WATCHDOG=1") if self._watchdog_usec is not None else False

    def stopping(self, status: str = "") -> bool:
        """Tell systemd that the service is shutting down (draining)."""
        return self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        """A one-line free-form status, shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def notify(self, message: str) -> bool:
        """Send one raw notification. Returns True when it was sent."""
        if self._address is None:
            return False
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            log.warning("sd_notify failed", extra={"error": str(exc), "notify_message": message})
            return False
        return True

    def close(self) -> None:
        """Close the socket (later calls reopen it)."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
