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


def _request(service: Service, steps: int, stderr: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "request", f"a ticking clock, {steps} steps",
         "--duration", "1", "--steps", str(steps), "--config", str(service.config_path)],
        stdout=subprocess.PIPE, stderr=stderr, env={**env, "COLUMNS": "100"},
    )


def test_request_shows_the_denoising_steps_on_a_terminal_and_nothing_when_piped(
    service: Service, broker: Broker
) -> None:
    primary, secondary = pty.openpty()
    process = _request(service, 6, secondary)
    os.close(secondary)
    try:
        terminal = _read_all(primary, process)
        stdout, _ = process.communicate(timeout=120)
    finally:
        os.close(primary)
    assert process.returncode == 0, terminal.decode(errors="replace")
    # the bar follows the steps to the last one, then says the worker decodes and scores
    assert b"decoding and scoring (6 steps done)" in terminal, terminal.decode(errors="replace")
    assert b"status: ok" in stdout, "the reply still goes to stdout, without the bar"

    piped = _request(service, 3, subprocess.PIPE)
    stdout, stderr = piped.communicate(timeout=120)
    assert piped.returncode == 0, stderr
    assert b"generating" not in stderr and b"status: ok" in stdout
