"""The worker's step reports reach `appliance request` as a progress bar on a terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

from tests.conftest import Broker, Service


def _read_all(fd: int, process: subprocess.Popen[bytes]) -> bytes:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    return b"".join(chunks)


def test_request_on_a_terminal_shows_the_denoising_steps(service: Service, broker: Broker) -> None:
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "request", "a ticking clock", "--duration", "1",
         "--steps", "6", "--config", str(service.config_path)],
        stdout=subprocess.PIPE, stderr=secondary, env={**env, "COLUMNS": "100"},
    )
    os.close(secondary)
    try:
        terminal = _read_all(primary, process)
        stdout, _ = process.communicate(timeout=120)
    finally:
        os.close(primary)
    assert process.returncode == 0, terminal.decode(errors="replace")
    assert b"generating" in terminal and b"6/6" in terminal
    assert b"status: ok" in stdout, "the reply still goes to stdout, without the bar"


def test_request_piped_prints_no_progress_bar(service: Service, broker: Broker) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "request", "a ticking clock", "--duration", "1",
         "--steps", "3", "--config", str(service.config_path)],
        capture_output=True, env=env, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"generating" not in done.stderr and b"status: ok" in done.stdout
