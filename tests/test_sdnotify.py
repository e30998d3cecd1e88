"""The sd_notify client against datagram sockets the test creates (path and abstract name)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.sdnotify import SystemdNotifier


class Listener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, notify_socket: str, sock: socket.socket) -> None:
        self.notify_socket = notify_socket  # the value systemd would put in $NOTIFY_SOCKET
        self.sock = sock

    def receive(self) -> str:
        return self.sock.recv(4096).decode("utf-8")

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.setblocking(True)
        return False


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5)
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        notify_socket = path
    else:
        name = f"appliance-test-{os.getpid()}-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        notify_socket = "@" + name
    try:
        yield Listener(notify_socket, sock)
    finally:
        sock.close()


def notifier_for(listener: Listener, **extra: str) -> SystemdNotifier:
    return SystemdNotifier.from_environment({"NOTIFY_SOCKET": listener.notify_socket, **extra})


def test_ready(listener: Listener) -> None:
    notifier = notifier_for(listener)
    assert notifier.enabled
    assert notifier.ready()
    assert listener.receive() == "READY=1"
    assert notifier.ready("serving")
    assert listener.receive() == "READY=1\nSTATUS=serving"
    notifier.close()


def test_watchdog_stopping_status(listener: Listener) -> None:
    notifier = notifier_for(listener, WATCHDOG_USEC="30000000")
    assert notifier.watchdog()
    assert listener.receive() == "WATCHDOG=1"
    assert notifier.status("draining 2 requests")
    assert listener.receive() == "STATUS=draining 2 requests"
    assert notifier.stopping()
    assert listener.receive() == "STOPPING=1"
    assert notifier.stopping("draining")
    assert listener.receive() == "STOPPING=1\nSTATUS=draining"
    notifier.close()
    assert notifier.status("after close")  # reopens
    assert listener.receive() == "STATUS=after close"
    notifier.close()


def test_watchdog_not_sent_without_watchdog_usec(listener: Listener) -> None:
    notifier = notifier_for(listener)
    assert notifier.watchdog_interval_s is None
    assert not notifier.watchdog()
    assert listener.nothing_pending()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier.from_environment(env).watchdog_interval_s == 15.0
    env["WATCHDOG_PID"] = str(os.getpid())
    assert SystemdNotifier.from_environment(env).watchdog_interval_s == 15.0
    env["WATCHDOG_USEC"] = "500000"
    assert SystemdNotifier.from_environment(env).watchdog_interval_s == 0.25


@pytest.mark.parametrize("env", [
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},  # meant for another process
    {"WATCHDOG_USEC": "not-a-number"},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": ""},
    {},
])
def test_no_watchdog_interval(env: dict[str, str]) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "/nonexistent", **env})
    assert notifier.watchdog_interval_s is None


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "30000000"}])
def test_no_op_without_notify_socket(env: dict[str, str]) -> None:
    notifier = SystemdNotifier.from_environment(env)
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert not notifier.status("x")
    notifier.close()


def test_default_environment_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not SystemdNotifier.from_environment().enabled


def test_send_failure_does_not_raise(tmp_path: Path) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert notifier.enabled
    assert not notifier.ready()
    notifier.close()
