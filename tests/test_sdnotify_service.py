"""`appliance serve` under a stand-in for systemd: a unix datagram socket as $NOTIFY_SOCKET.

The real service process notifies that socket exactly as it would notify systemd with
``Type=notify`` and ``WatchdogSec=1`` (``WATCHDOG_USEC=1000000``): status lines while it
starts, ``READY=1`` only once a worker is ready (checked at the moment it arrives, against
/readyz and the service's own log), watchdog pings from the main loop, ``STOPPING=1`` on
SIGTERM.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.services import ServiceProcess, service_sections
from tests.conftest import Broker


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(60)  # the first message comes before the models load
    try:
        yield path, sock
    finally:
        sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def test_ready_after_the_worker_then_watchdog_then_stopping(
    tmp_path: Path, broker: Broker, models_dir: Path, notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    service = ServiceProcess.start(
        tmp_path, service_sections(tmp_path, broker, models_dir),
        extra_env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
    )
    try:
        before_ready: list[str] = []
        while (message := receive(sock)).split("\n")[0] != "READY=1":
            before_ready.append(message)
        # at the instant READY arrives, the service already is what /readyz calls ready
        status, body = service.http_json("/readyz")
        assert status == 200 and body["status"] == "ready", body
        assert body["workers"][0]["state"] in ("ready", "busy")
        assert "worker ready" in service.log(), "the supervisor logged the worker's ready frame"
        assert message == "READY=1\nSTATUS=ready: 1/1 workers ready"
        assert before_ready[0] == "STATUS=starting"
        assert all(m == "WATCHDOG=1" or m.startswith("STATUS=starting") for m in before_ready), before_ready

        after_ready = [receive(sock) for _ in range(3)]
        assert after_ready == ["WATCHDOG=1"] * 3, "the main loop pings every WATCHDOG_USEC/2"

        service.process.send_signal(signal.SIGTERM)
        while not (message := receive(sock)).startswith("STOPPING=1"):
            assert message == "WATCHDOG=1" or message.startswith("STATUS="), message
        assert message == "STOPPING=1\nSTATUS=draining: 0 requests in flight"
        assert receive(sock) == "STATUS=stopped"
        assert service.process.wait(timeout=30) == 0
    finally:
        service.stop()
