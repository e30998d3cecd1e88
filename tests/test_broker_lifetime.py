"""The embedded broker: never outlives a killed appliance; ``auto`` uses a broker already
answering; a second appliance on the same state names the running one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from testkit.services import BrokerProcess, ServiceProcess, free_port, service_sections


def _sections(state: Path, port: int, models_dir: Path, embedded: Any) -> dict[str, dict[str, Any]]:
    sections = service_sections(state, SimpleNamespace(host="127.0.0.1", port=port),  # type: ignore[arg-type]
                                models_dir)
    sections["broker"]["embedded"] = embedded
    return sections


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_killed_appliance_takes_its_broker_with_it_and_starts_again(
    tmp_path: Path, models_dir: Path
) -> None:
    sections = _sections(tmp_path, free_port(), models_dir, "auto")
    first = ServiceProcess.start(tmp_path, sections)
    try:
        body = first.wait_ready()
        assert body["broker"]["mode"] == "embedded"  # nothing answered: auto started ours
        brokers = [pid for pid in _children(first.process.pid)
                   if Path(f"/proc/{pid}/comm").read_text().strip() == "mosquitto"]
        assert len(brokers) == 1 and body["broker"]["pid"] == brokers[0]
        os.kill(first.process.pid, signal.SIGKILL)  # the OOM killer, a crash loop
        first.process.wait()
        deadline = time.monotonic() + 30
        while _alive(brokers[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(brokers[0]), "the embedded mosquitto outlived the appliance"
    finally:
        first.stop()
    second = ServiceProcess.start(tmp_path, sections)
    try:
        assert second.wait_ready()["broker"]["mode"] == "embedded"
    finally:
        second.stop()


def test_auto_uses_the_broker_already_answering_and_a_second_appliance_names_the_first(
    tmp_path: Path, broker: BrokerProcess, models_dir: Path
) -> None:
    state = tmp_path / "first"
    state.mkdir()
    sections = _sections(state, broker.port, models_dir, "auto")
    first = ServiceProcess.start(state, sections)
    try:
        assert first.wait_ready()["broker"] == {"mode": "existing", "address": f"127.0.0.1:{broker.port}"}
        assert "using the MQTT broker already answering" in first.log()
        status = subprocess.run(
            [sys.executable, "-m", "appliance", "status", "--config", str(first.config_path)],
            capture_output=True, text=True, timeout=60, cwd=state)
        assert '"mode": "existing"' in status.stdout, status.stdout + status.stderr
        # the same cache (state), another HTTP port: refused, naming the running appliance
        again = dict(sections, http={"host": "127.0.0.1", "port": free_port()})
        (tmp_path / "second").mkdir()
        second = ServiceProcess.start(tmp_path / "second", again)
        assert second.process.wait(timeout=120) != 0
        assert f"already running for {state} (pid {first.process.pid})" in second.log()
    finally:
        first.stop()
