"""The embedded MQTT broker: a private mosquitto child process for the out-of-box default.

In production the appliance connects to the device's own broker (``broker.embedded =
false``); the embedded one exists so that ``make run`` answers prompts with nothing else
set up. It listens on the configured loopback address only, with TCP_NODELAY on.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

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
            start_new_session=True,
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
