"""Shared fixtures: a real mosquitto broker, the tiny model, a real `appliance serve`."""

from __future__ import annotations

import json
import os
import shutil
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

import pytest

from appliance.broker import broker_config, find_mosquitto, port_open
from appliance.config import BrokerSettings, Settings, load_settings
from appliance.topics import Topics

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    conf: Path

    def settings(self, protocol: str = "5") -> BrokerSettings:
        return BrokerSettings(host=self.host, port=self.port, embedded=False, protocol=protocol)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.process = _start_mosquitto(self.conf, self.port)


def _start_mosquitto(conf: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(conf.with_suffix(".log"), "ab")  # noqa: SIM115
    process = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mosquitto did not start: {conf.with_suffix('.log').read_text()}")
        time.sleep(0.02)
    return process


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private mosquitto on a free loopback port, as the embedded one is configured."""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(broker_config("127.0.0.1", port, max_packet_bytes=16 * 1024 * 1024))
    b = Broker("127.0.0.1", port, _start_mosquitto(conf, port), conf)
    yield b
    b.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding the tiny TangoFlux, built once per test session."""
    from appliance.models.tiny import build_tiny_tangoflux

    root = tmp_path_factory.mktemp("models")
    build_tiny_tangoflux(root / "tiny-tangoflux")
    return root


@dataclass
class Service:
    """A running `appliance serve` process and how to reach it."""

    process: subprocess.Popen[bytes]
    settings: Settings
    config_path: Path
    log_path: Path
    http_port: int

    @property
    def topics(self) -> Topics:
        return Topics.from_settings(self.settings.node)

    def http_json(self, path: str) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def http_bytes(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

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


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")


def service_sections(tmp_path: Path, broker: Broker, models_dir: Path) -> dict[str, dict[str, Any]]:
    return {
        "node": {"id": "test-node"},
        "broker": {"host": broker.host, "port": broker.port, "embedded": False,
                   "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "cache": {"dir": str(tmp_path / "cache")},
        "models": {"dir": str(models_dir)},
        "generation": {"default_steps": 4, "max_steps": 1000},
        "workers": {"restart_backoff_initial_s": 0.2, "restart_backoff_max_s": 2.0},
        "logging": {"format": "json", "level": "INFO"},
    }


def start_service(tmp_path: Path, sections: dict[str, dict[str, Any]]) -> Service:
    config_path = tmp_path / "appliance.toml"
    write_config(config_path, sections)
    settings = load_settings(config_path, environ={})
    log_path = tmp_path / "appliance.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
        )
    return Service(process, settings, config_path, log_path, settings.http.port)


@pytest.fixture
def service(tmp_path: Path, broker: Broker, models_dir: Path) -> Iterator[Service]:
    """`appliance serve` as a real process, with a real worker, against the test broker."""
    svc = start_service(tmp_path, service_sections(tmp_path, broker, models_dir))
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def mosquitto_clients_available() -> bool:
    return shutil.which("mosquitto_pub") is not None
