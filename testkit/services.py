"""Harness for tests and benchmarks: a private mosquitto and a real ``appliance serve``.

Both run as real processes on loopback ports chosen at random, exactly as in production
apart from the addresses, so that tests and benchmarks exercise the real stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.broker import broker_config, find_mosquitto, port_open
from appliance.config import BrokerSettings, Settings, load_settings
from appliance.topics import Topics


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BrokerProcess:
    """A private mosquitto configured as the embedded one is."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    conf: Path

    @classmethod
    def start(cls, state_dir: Path, *, extra_config: str = "", stock: bool = False) -> BrokerProcess:
        """``stock``: mosquitto at its default settings (queue limits included), as a site's own
        broker often is, instead of the embedded broker's configuration."""
        port = free_port()
        state_dir.mkdir(parents=True, exist_ok=True)
        conf = state_dir / "mosquitto.conf"
        if stock:
            root = "user root\n" if os.geteuid() == 0 else ""
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n{root}"
                            + extra_config)
        else:
            conf.write_text(broker_config("127.0.0.1", port, max_packet_bytes=16 * 1024 * 1024,
                                          extra=extra_config))
        return cls("127.0.0.1", port, _start_mosquitto(conf, port), conf)

    def settings(self, protocol: str = "5") -> BrokerSettings:
        return BrokerSettings.model_validate(
            {"host": self.host, "port": self.port, "embedded": False, "protocol": protocol})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.process = _start_mosquitto(self.conf, self.port)


def _start_mosquitto(conf: Path, port: int) -> subprocess.Popen[bytes]:
    log_path = conf.with_suffix(".log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mosquitto did not start: {log_path.read_text()}")
        time.sleep(0.02)
    return process


def service_sections(state_dir: Path, broker: BrokerProcess, models_dir: Path) -> dict[str, dict[str, Any]]:
    """Settings for a service under test: fast tiny generations, quick restarts."""
    return {
        "node": {"id": "test-node"},
        "broker": {"host": broker.host, "port": broker.port, "embedded": False,
                   "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "cache": {"dir": str(state_dir / "cache")},
        "models": {"dir": str(models_dir)},
        "generation": {"default_steps": 4, "max_steps": 1000},
        "workers": {"restart_backoff_initial_s": 0.2, "restart_backoff_max_s": 2.0},
        "logging": {"format": "json", "level": "INFO"},
    }


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")


@dataclass
class ServiceProcess:
    """A running ``appliance serve`` and how to reach it."""

    process: subprocess.Popen[bytes]
    settings: Settings
    config_path: Path
    log_path: Path

    @classmethod
    def start(
        cls, state_dir: Path, sections: dict[str, dict[str, Any]],
        extra_env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        config_path = state_dir / "appliance.toml"
        write_config(config_path, sections)
        settings = load_settings(config_path, environ={})
        log_path = state_dir / "appliance.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        # the service (and its workers) import this very checkout, whatever the venv points at
        source_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
        env.update(extra_env or {})
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "appliance", "serve", "--config", str(config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=state_dir, env=env,
            )
        return cls(process, settings, config_path, log_path)

    @property
    def topics(self) -> Topics:
        return Topics.from_settings(self.settings.node)

    @property
    def http_port(self) -> int:
        return self.settings.http.port

    def http_json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body = self.http_bytes(path)
        return status, json.loads(body or b"{}")

    def http_bytes(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def wait_ready(self, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"appliance exited {self.process.returncode}:\n{self.log()}")
            try:
                status, body = self.http_json("/readyz")
                if status == 200:
                    return body
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"appliance not ready in {timeout_s} s: {body}\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


@contextlib.contextmanager
def service_with_broker(
    root: Path, models_dir: Path, **overrides: dict[str, Any]
) -> Iterator[ServiceProcess]:
    """A private broker and a ready service on it (``overrides`` update config sections)."""
    broker = BrokerProcess.start(root / "broker")
    try:
        sections = service_sections(root, broker, models_dir)
        for name, values in overrides.items():
            sections.setdefault(name, {}).update(values)
        service = ServiceProcess.start(root, sections)
        with contextlib.closing(_Stopper(service)):
            service.wait_ready()
            yield service
    finally:
        broker.stop()


@dataclass(frozen=True)
class _Stopper:
    service: ServiceProcess

    def close(self) -> None:
        self.service.stop()
