"""The embedded MQTT broker: a private mosquitto child process for the out-of-box default.

``broker.embedded = "auto"`` (the default): a broker already answering MQTT on the configured
loopback port is used (integrators often run mosquitto on 1883 already); only when none
answers does the appliance start its own. ``true`` always starts ours, ``false`` never does
(production: the device's own broker). Ours listens on the configured loopback address only,
with TCP_NODELAY on, and never outlives the appliance: the kernel sends it SIGTERM when the
appliance dies, even by ``kill -9`` (``PR_SET_PDEATHSIG``), so a crash cannot leave it holding
the port.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho

from appliance.config import BrokerSettings
from appliance.errors import ConfigError, Unavailable

log = logging.getLogger(__name__)


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise ConfigError(
            "broker.embedded is on but mosquitto is not installed: run `make run` (it installs "
            "the Debian package) or `apt-get install mosquitto`, or set broker.embedded = false"
        )
    return found


# Queue limits per client (docs/operations.md, "Broker"). mosquitto's defaults (1,000
# messages, no byte cap) drop QoS 1 messages silently beyond the count, for the appliance's
# requests and for a device's replies alike. The appliance takes requests in at wire speed
# (its intake sheds with `busy`), so the count only has to cover a burst that a slow device
# has not read yet; the byte cap bounds what audio for such a device may hold in the broker.
MAX_QUEUED_MESSAGES = 100_000
MAX_QUEUED_BYTES = 256 * 1024 * 1024


def broker_config(host: str, port: int, *, max_packet_bytes: int, extra: str = "") -> str:
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        f"max_packet_size {max_packet_bytes}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # a private broker; don't drop to the mosquitto user
    return "\n".join(lines) + "\n" + extra


class EmbeddedBroker:
    """A mosquitto child process bound to ``host:port``; stopped with the appliance."""

    def __init__(self, host: str, port: int, state_dir: Path, *, max_packet_bytes: int) -> None:
        self.host = host
        self.port = port
        self._state_dir = Path(state_dir)
        self._max_packet_bytes = max_packet_bytes
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        if port_open(self.host, self.port):
            raise Unavailable(
                f"port {self.host}:{self.port} is taken: another broker runs there. Stop it, "
                "or set broker.embedded = false to use it, or choose another broker.port"
            )
        self._state_dir.mkdir(parents=True, exist_ok=True)
        conf = self._state_dir / "mosquitto.conf"
        conf.write_text(broker_config(self.host, self.port, max_packet_bytes=self._max_packet_bytes))
        log_file = open(self._state_dir / "mosquitto.log", "ab")  # noqa: SIM115 - lives with the child
        self._process = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)], stdout=log_file, stderr=log_file,
            start_new_session=True, preexec_fn=_die_with(os.getpid()),
        )
        log_file.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise Unavailable(f"embedded mosquitto exited at start; see {self._state_dir}/mosquitto.log")
            if port_open(self.host, self.port):
                log.info("embedded broker started", extra={"host": self.host, "port": self.port,
                                                           "pid": self._process.pid})
                return
            time.sleep(0.05)
        self.stop()
        raise Unavailable(f"embedded mosquitto did not open {self.host}:{self.port} in {timeout_s} s")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


_PR_SET_PDEATHSIG = 1


def _die_with(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when its parent dies, however it dies.

    The kernel ties the signal to the *thread* that forked, so the broker is started from
    the appliance's main thread. libc is loaded here, in the parent, so that the child only
    makes the call between fork and exec. A parent that died before the call is caught by
    the ``getppid`` check.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def child() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0 or os.getppid() != parent_pid:
            os._exit(1)

    return child


@dataclass(frozen=True)
class BrokerChoice:
    """Which broker the appliance uses, for the log and ``appliance status``."""

    mode: str  # "embedded" (ours), "existing" (found answering, auto), "external" (configured)
    address: str
    pid: int | None = None

    def describe(self) -> dict[str, object]:
        body: dict[str, object] = {"mode": self.mode, "address": self.address}
        if self.pid is not None:
            body["pid"] = self.pid
        return body


def start_broker(settings: BrokerSettings, state_dir: Path) -> tuple[EmbeddedBroker | None, BrokerChoice]:
    """Start our broker when the settings ask for it, or use the one that answers (auto)."""
    address = f"{settings.host}:{settings.port}"
    embedded = settings.embedded
    if embedded == "auto":
        if settings.tls or not _loopback(settings.host):
            embedded = False  # ours is plaintext on loopback only: this is someone else's broker
        elif mqtt_answers(settings.host, settings.port):
            log.info("using the MQTT broker already answering (broker.embedded = auto)",
                     extra={"broker": address})
            return None, BrokerChoice("existing", address)
    if embedded is False:
        return None, BrokerChoice("external", address)
    broker = EmbeddedBroker(settings.host, settings.port, state_dir,
                            max_packet_bytes=settings.max_packet_bytes)
    broker.start()
    return broker, BrokerChoice("embedded", address, broker.pid)


def mqtt_answers(host: str, port: int, timeout_s: float = 3.0) -> bool:
    """Whether an MQTT broker (not merely something) answers a CONNECT on ``host:port``.

    A broker that refuses us (it wants an account) still answers with a CONNACK.
    """
    if not port_open(host, port):
        return False
    answered: list[bool] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="", protocol=paho.MQTTv311)
    client.on_connect = lambda *_: answered.append(True)
    try:
        client.connect(host, port, keepalive=10)
        deadline = time.monotonic() + timeout_s
        while not answered and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS:
                break
    except OSError:
        return False
    finally:
        client.disconnect()
    return bool(answered)


def _loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("localhost", "::1")
