"""Access control: TLS, accounts and the broker ACL of docs/security.md, against a real
mosquitto; the HTTP audio token and path-like keys on /audio.

The broker here is configured as an installation's broker would be: a CA and a server
certificate made by the test, a password file made by ``mosquitto_passwd``, and the ACL
file that docs/security.md tells operators to use (a test checks the two are the same).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.cache.keys import exact_key, new_item_key
from appliance.cache.store import CacheItem, CacheStore
from appliance.client import RequestClient
from appliance.config import BrokerSettings, Settings, load_settings
from appliance.errors import ConfigError, Unavailable
from appliance.http import HttpServer
from appliance.metrics import Metrics
from appliance.mqtt import MqttAdapter, make_client
from appliance.topics import Topics
from testkit.services import BrokerProcess, ServiceProcess, service_sections, write_config

REPO = Path(__file__).resolve().parents[1]
NODE = "test-node"
TOPICS = Topics(base="audiogen", node=NODE)

# The ACL file of docs/security.md, verbatim (test_security_doc_shows_the_tested_acl).
ACL = """\
# The appliance service: takes requests and admin commands, publishes everything else.
user appliance
topic read audiogen/+/request
topic read audiogen/request
topic read audiogen/+/admin/+
topic write audiogen/+/status
topic write audiogen/+/stats
topic write audiogen/+/errors
topic write audiogen/+/progress/#
topic write audiogen/+/reply/#
topic write audiogen/+/admin-reply/#

# Operators: admin commands and their replies; `appliance request` (any reply topic).
user operator
topic write audiogen/+/admin/+
topic read audiogen/+/admin-reply/#
topic read audiogen/+/reply/#
topic read audiogen/+/stats

# Every account, devices included: send requests (to one appliance or to the fleet queue),
# read its own replies (<base>/<node>/reply/<username>/...), progress and status.
pattern write audiogen/+/request
pattern write audiogen/request
pattern read audiogen/+/reply/%u/#
pattern read audiogen/+/progress/#
pattern read audiogen/+/status
"""

PASSWORDS = {"appliance": "appliance-secret", "operator": "operator-secret", "device1": "device-secret"}
NOT_AUTHORIZED = 135


# -- a certificate authority, a server certificate and the broker --------------------------

@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A self-signed CA and a server certificate for 127.0.0.1 (the IP only: no host name)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=audiogen test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=broker", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                  "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext", cwd=d)
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key")


def _password_file(path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    assert tool, "mosquitto_passwd is part of the mosquitto package"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run([tool, "-b", *(["-c"] if i == 0 else []), str(path), user, password],
                       check=True, capture_output=True)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[BrokerProcess]:
    """mosquitto with TLS only, no anonymous access, the password file and the ACL."""
    d = tmp_path_factory.mktemp("secure-broker")
    _password_file(d / "passwords")
    (d / "acl").write_text(ACL)
    extra = "\n".join([
        f"cafile {pki.ca}", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}",
        "allow_anonymous false", f"password_file {d / 'passwords'}", f"acl_file {d / 'acl'}",
    ]) + "\n"
    broker = BrokerProcess.start(d, extra_config=extra)
    yield broker
    broker.stop()


def _account(broker: BrokerProcess, pki: Pki, user: str, password: str | None = None,
             **overrides: Any) -> BrokerSettings:
    return BrokerSettings.model_validate({
        "host": broker.host, "port": broker.port, "embedded": False, "tls": True,
        "ca_file": str(pki.ca), "username": user,
        "password": PASSWORDS[user] if password is None else password, **overrides,
    })


def _service_sections(state_dir: Path, broker: BrokerProcess, pki: Pki, models_dir: Path,
                      password: str | None = None) -> dict[str, dict[str, Any]]:
    sections = service_sections(state_dir, broker, models_dir)
    sections["broker"].update({"tls": True, "ca_file": str(pki.ca), "username": "appliance",
                               "password": password or PASSWORDS["appliance"]})
    sections["cache"]["semantic"] = False  # exact hits are enough here; skip the embedder
    return sections


@pytest.fixture(scope="module")
def secure_service(tmp_path_factory: pytest.TempPathFactory, secure_broker: BrokerProcess,
                   pki: Pki, models_dir: Path) -> Iterator[ServiceProcess]:
    d = tmp_path_factory.mktemp("secure-service")
    svc = ServiceProcess.start(d, _service_sections(d, secure_broker, pki, models_dir))
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


# -- an MQTT 5 client over TLS that reports PUBACK and SUBACK reason codes ---------------

class AccountClient:
    """One account's connection, built by the appliance's own ``make_client``."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any], bytes | None]] = queue.Queue()
        self.seen: list[tuple[str, dict[str, Any], bytes | None]] = []
        self._acks: dict[int, int] = {}
        self._acked = threading.Condition()
        self._client = make_client(settings, f"test-{settings.username}-{uuid.uuid4().hex[:6]}")
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(settings.host, settings.port)
        self._client.loop_start()

    def subscribe(self, topic: str) -> int:
        """Subscribe; the SUBACK reason code (0-2 granted, 135 not authorized)."""
        rc, mid = self._client.subscribe(topic, qos=1)
        assert rc == paho.MQTT_ERR_SUCCESS and mid is not None
        return self._wait_ack(mid)

    def publish(self, topic: str, body: dict[str, Any], *, response_topic: str | None = None,
                correlation_data: bytes | None = None) -> int:
        """Publish at QoS 1; the PUBACK reason code (0 success, 135 not authorized)."""
        props = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        info = self._client.publish(topic, json.dumps(body), qos=1, properties=props)
        return self._wait_ack(info.mid)

    def next(self, timeout_s: float = 60.0) -> tuple[str, dict[str, Any], bytes | None]:
        return self.messages.get(timeout=timeout_s)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _wait_ack(self, mid: int, timeout_s: float = 10.0) -> int:
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self._acks, timeout_s), f"no ack for {mid}"
            return self._acks.pop(mid)

    def _ack(self, mid: int, code: int) -> None:
        with self._acked:
            self._acks[mid] = code
            self._acked.notify_all()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        self._ack(mid, int(reason_code.value))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        self._ack(mid, int(reason_codes[0].value))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        try:
            body = json.loads(message.payload)
        except ValueError:
            body = {}
        received = (message.topic, body if isinstance(body, dict) else {},
                    getattr(props, "CorrelationData", None))
        self.seen.append(received)
        self.messages.put(received)


@pytest.fixture
def device(secure_broker: BrokerProcess, pki: Pki) -> Iterator[AccountClient]:
    client = AccountClient(_account(secure_broker, pki, "device1"))
    yield client
    client.close()


@pytest.fixture
def operator(secure_broker: BrokerProcess, pki: Pki) -> Iterator[AccountClient]:
    client = AccountClient(_account(secure_broker, pki, "operator"))
    yield client
    client.close()


def _device_request(device: AccountClient, prompt: str) -> dict[str, Any]:
    request_id = uuid.uuid4().hex[:8]
    reply_topic = f"{TOPICS.prefix}/reply/device1/{request_id}"
    assert device.subscribe(f"{TOPICS.prefix}/reply/device1/#") == 1
    code = device.publish(TOPICS.request, {"prompt": prompt, "duration_s": 2},
                          response_topic=reply_topic, correlation_data=request_id.encode())
    assert code == 0
    while True:  # skip what else the device may read (status, progress)
        topic, body, correlation = device.next()
        if topic == reply_topic:
            assert correlation == request_id.encode()
            return body


def _admin(operator: AccountClient, command: str, body: dict[str, Any]) -> dict[str, Any]:
    reply_topic = f"{TOPICS.prefix}/admin-reply/operator/{command}"
    assert operator.subscribe(f"{TOPICS.prefix}/admin-reply/operator/#") == 1
    assert operator.publish(TOPICS.admin(command), body, response_topic=reply_topic) == 0
    topic, reply, _ = operator.next()
    assert topic == reply_topic
    return reply


# -- the service over TLS with its account ------------------------------------------------

def test_service_connects_over_tls_with_its_account_and_answers_a_device(
    secure_service: ServiceProcess, device: AccountClient
) -> None:
    assert '"msg": "connected to broker"' in secure_service.log()
    first = _device_request(device, "rain on a tin roof")
    assert first["status"] == "ok", first
    again = _device_request(device, "rain on a tin roof")
    assert again["status"] == "ok" and again["cached"] is True and again["key"] == first["key"]


def test_device_receives_only_its_own_replies_and_no_admin_traffic(
    secure_service: ServiceProcess, device: AccountClient, operator: AccountClient
) -> None:
    """mosquitto grants any SUBSCRIBE and filters each message by the read ACL instead."""
    assert device.subscribe("audiogen/#") == 1
    assert _admin(operator, "stats", {})["status"] == "ok"
    operator_reply = f"{TOPICS.prefix}/reply/operator/r-1"
    assert operator.subscribe(f"{TOPICS.prefix}/reply/operator/#") == 1
    assert operator.publish(TOPICS.request, {"prompt": "a dog barking", "duration_s": 2},
                            response_topic=operator_reply) == 0
    assert operator.next()[0] == operator_reply
    # published after all of the above, so everything the device may see arrives before it
    own = _device_request(device, "a dog barking")
    assert own["status"] == "ok"
    seen = [topic for topic, _, _ in device.seen]
    assert any(topic.startswith(f"{TOPICS.prefix}/reply/device1/") for topic in seen)
    forbidden = ("/request", "/admin/", "/admin-reply/", "/reply/operator/")
    assert not [topic for topic in seen if any(part in topic for part in forbidden)], seen


def test_device_account_cannot_publish_admin_commands(
    secure_service: ServiceProcess, device: AccountClient, operator: AccountClient
) -> None:
    assert _device_request(device, "a ship's horn in fog")["status"] == "ok"
    before = _admin(operator, "stats", {})
    assert before["status"] == "ok" and before["items"] >= 1

    for command in ("clear", "clean", "remove-pattern", "stats"):
        body = {"confirm": True, "pattern": ".*", "older_than_days": 0, "client_id": "device1"}
        assert device.publish(TOPICS.admin(command), body) == NOT_AUTHORIZED

    after = _admin(operator, "stats", {})  # admin commands run in order: this follows any
    assert after["items"] == before["items"] and after["bytes"] == before["bytes"]
    assert '"client_id": "device1"' not in secure_service.log()


def test_operator_account_runs_destructive_admin_commands_with_confirm_and_is_logged(
    secure_service: ServiceProcess, device: AccountClient, operator: AccountClient
) -> None:
    assert _device_request(device, "a cat purring")["status"] == "ok"
    preview = _admin(operator, "clear", {"client_id": "ops-console"})
    assert preview["status"] == "ok" and preview["dry_run"] is True
    assert preview["confirm_required"] is True and preview["removed_count"] >= 1

    done = _admin(operator, "clear", {"confirm": True, "client_id": "ops-console"})
    assert done["status"] == "ok" and done["dry_run"] is False and done["after_items"] == 0
    removal = [json.loads(line) for line in secure_service.log().splitlines()
               if '"msg": "cache maintenance: clear removed ' in line]
    assert removal and removal[-1]["client_id"] == "ops-console"
    assert removal[-1]["admin_command"] == "clear" and removal[-1]["admin_source"] == "mqtt"
    assert _admin(operator, "stats", {})["items"] == 0


def test_cli_request_works_over_tls_with_the_operator_account(
    secure_service: ServiceProcess, secure_broker: BrokerProcess, pki: Pki, tmp_path: Path
) -> None:
    config = tmp_path / "cli.toml"
    broker = _account(secure_broker, pki, "operator").model_dump(
        include={"host", "port", "embedded", "tls", "ca_file", "username", "password"})
    write_config(config, {"node": {"id": NODE}, "broker": broker})
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "request", "a bell tolling", "--duration", "2",
         "--timeout", "120", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env=_cli_env(),
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert json.loads(result.stdout)["status"] == "ok"


def _cli_env() -> dict[str, str]:
    """This checkout's package, no APPLIANCE_* overrides from the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_wrong_password_is_refused_and_the_service_says_so(
    tmp_path: Path, secure_broker: BrokerProcess, pki: Pki, models_dir: Path
) -> None:
    sections = _service_sections(tmp_path, secure_broker, pki, models_dir, password="wrong")
    svc = ServiceProcess.start(tmp_path, sections)
    try:
        deadline = time.monotonic() + 120
        while "broker refused the connection" not in svc.log():
            assert svc.process.poll() is None, svc.log()
            assert time.monotonic() < deadline, svc.log()
            time.sleep(0.1)
        refusal = next(json.loads(line) for line in svc.log().splitlines()
                       if "broker refused the connection" in line)
        assert refusal["level"] == "error"
        assert refusal["reason"] in ("Bad user name or password", "Not authorized")
        status, body = svc.http_json("/readyz")
        assert status == 503 and "not connected to the broker" in body["reasons"]
    finally:
        assert svc.stop() == 0


def test_client_that_does_not_trust_the_ca_cannot_connect(
    secure_broker: BrokerProcess, pki: Pki
) -> None:
    client = RequestClient(_account(secure_broker, pki, "operator", ca_file=""), TOPICS)
    with pytest.raises(Unavailable, match="certificate verify failed"):
        client.connect(timeout_s=5)


def test_service_connection_logs_why_tls_failed(
    secure_broker: BrokerProcess, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A service that does not trust the broker's CA logs the reason, not only "not ready"."""
    adapter = MqttAdapter(_account(secure_broker, pki, "appliance", ca_file=""),
                          client_id="test-untrusting", status_topic=TOPICS.status,
                          subscriptions=[TOPICS.request], on_message=lambda _: None,
                          metrics=Metrics())
    with caplog.at_level(logging.WARNING, logger="appliance.mqtt"):
        adapter.start()
        try:
            deadline = time.monotonic() + 30
            while not [r for r in caplog.records if r.getMessage() == "cannot connect to the broker"]:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
        finally:
            adapter.stop(timeout_s=1)
    record = next(r for r in caplog.records if r.getMessage() == "cannot connect to the broker")
    assert "certificate verify failed" in record.__dict__["error"]
    assert record.__dict__["tls"] is True and not adapter.connected


def test_host_name_is_checked_unless_tls_insecure(secure_broker: BrokerProcess, pki: Pki) -> None:
    """The certificate names 127.0.0.1 only: "localhost" is the right host, the wrong name."""
    wrong_name = _account(secure_broker, pki, "operator", host="localhost")
    with pytest.raises(Unavailable, match="mismatch"):
        RequestClient(wrong_name, TOPICS).connect(timeout_s=5)
    insecure = RequestClient(wrong_name.model_copy(update={"tls_insecure": True}), TOPICS)
    insecure.connect(timeout_s=5)
    insecure.close()


def test_plaintext_client_is_not_served_by_the_tls_listener(
    secure_broker: BrokerProcess, pki: Pki
) -> None:
    plain = _account(secure_broker, pki, "operator", tls=False, ca_file="")
    with pytest.raises(Unavailable):
        RequestClient(plain, TOPICS).connect(timeout_s=1)


# -- configuration --------------------------------------------------------------------------

def test_tls_settings_are_checked_at_start_and_name_the_key(tmp_path: Path, pki: Pki) -> None:
    cases = {
        '[broker]\nembedded = true\ntls = true\n': "broker.tls",
        '[broker]\nembedded = false\ntls = true\nca_file = "/nonexistent/ca.pem"\n': "broker.ca_file",
        f'[broker]\nembedded = false\ntls = true\nkey_file = "{pki.server_key}"\n': "broker.key_file",
        '[http]\naudio_token = "short"\n': "http.audio_token",
        '[broker]\nhost = "0.0.0.0"\nembedded = true\n': "broker.embedded",
    }
    for text, key in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_settings(path, environ={})
        assert key in info.value.message, info.value.message
    assert "embedded broker is plaintext" in _error('[broker]\nembedded = true\ntls = true\n', tmp_path)
    # with the default, embedded = "auto", TLS means someone else's broker: ours never starts
    assert load_settings(None, environ={"APPLIANCE_BROKER__TLS": "true"}).broker.embedded == "auto"
    ok = load_settings(None, environ={"APPLIANCE_BROKER__EMBEDDED": "false",
                                      "APPLIANCE_BROKER__TLS": "true",
                                      "APPLIANCE_BROKER__CA_FILE": str(pki.ca)})
    assert ok.broker.tls and ok.broker.ca_file == str(pki.ca)


def _error(text: str, tmp_path: Path) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    return info.value.message


def test_defaults_keep_everything_on_loopback_without_tls_or_token() -> None:
    s = Settings()
    assert (s.http.host, s.http.audio_token) == ("127.0.0.1", "")
    assert (s.broker.host, s.broker.tls, s.broker.tls_insecure) == ("127.0.0.1", False, False)


def test_security_doc_shows_the_tested_acl() -> None:
    assert ACL in (REPO / "docs" / "security.md").read_text()


# -- HTTP: the audio token and path-like keys -----------------------------------------------

TOKEN = "t0ken-for-the-audio-endpoint"
SECRET = b"TOP-SECRET-OUTSIDE-THE-CACHE"


@dataclass
class AudioHttp:
    port: int
    key: str
    audio: bytes


def _start_http(tmp_path: Path, token: str) -> Iterator[AudioHttp]:
    (tmp_path / "secret.wav").write_bytes(SECRET)
    cache = CacheStore(tmp_path / "cache")
    key = new_item_key()
    item = CacheItem(
        key=key, exact_key=exact_key("a gong", model="m", duration_s=2.0, loop=False),
        prompt="a gong", model="m", duration_s=2.0, requested_duration_s=2.0, is_loop=False,
        steps=4, guidance_scale=4.5, candidates=1, seed=None, sample_rate=44100, channels=2,
        audio_format="wav", audio_bytes=0, generation_timestamp=time.time(), generation_s=0.1,
    )
    audio = b"RIFF" + b"\0" * 60
    cache.put(item, audio, max_items=10, max_bytes=10**9)
    server = HttpServer("127.0.0.1", 0, cache=cache, metrics=Metrics(),
                        health=lambda: (True, {"status": "ok"}),
                        readiness=lambda: (True, {"status": "ready"}), audio_token=token)
    server.start()
    try:
        yield AudioHttp(server.port, key, audio)
    finally:
        server.stop()
        cache.close()


@pytest.fixture
def audio_http(tmp_path: Path) -> Iterator[AudioHttp]:
    yield from _start_http(tmp_path, TOKEN)


def _get(port: int, target: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A raw GET: the request target goes out byte for byte (no client-side normalising)."""
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{k}: {v}".encode() for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_audio_needs_the_token_when_one_is_set(audio_http: AudioHttp) -> None:
    path = f"/audio/{audio_http.key}.wav".encode()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert _get(audio_http.port, path, bearer) == (200, audio_http.audio)
    assert _get(audio_http.port, path + f"?token={TOKEN}".encode()) == (200, audio_http.audio)
    for headers, query in [({}, b""), ({"Authorization": "Bearer wrong-token-of-same-len"}, b""),
                           ({}, b"?token=nope"), ({"Authorization": f"Basic {TOKEN}"}, b""),
                           ({"Authorization": "Bearer"}, b""), ({}, b"?token=")]:
        status, body = _get(audio_http.port, path + query, headers)
        assert status == 401 and audio_http.audio not in body, (headers, query)
    for open_path in (b"/healthz", b"/readyz", b"/metrics"):
        assert _get(audio_http.port, open_path)[0] == 200


def test_audio_is_open_without_a_configured_token(tmp_path: Path) -> None:
    for http in _start_http(tmp_path, ""):
        assert _get(http.port, f"/audio/{http.key}".encode()) == (200, http.audio)


@pytest.mark.parametrize("target", [
    b"/audio/../secret.wav", b"/audio/..%2fsecret.wav", b"/audio/%2e%2e/secret.wav",
    b"/audio/%2e%2e%2fsecret.wav", b"/audio/%252e%252e%252fsecret.wav", b"/audio/..%5csecret.wav",
    b"/audio/....//secret.wav", b"/audio//etc/passwd", b"/audio/%2fetc%2fpasswd",
    b"/audio/KEY/../../secret.wav", b"/audio/KEY%2f..%2f..%2fsecret.wav", b"/audio/KEY%00.wav",
    b"/audio/%00", b"/audio/KEY.wav%00.txt", b"/audio/KEY/", b"/audio/KEY.mdb", b"/audio/data.mdb",
    b"/audio/../cache/data.mdb", b"/audio/" + b"a" * 5000, b"/audio/KEY" + b"0" * 10_000,
    b"/audio/" + b"%2e%2e%2f" * 2000 + b"secret.wav",
])
def test_audio_refuses_path_like_keys(audio_http: AudioHttp, target: bytes) -> None:
    target = target.replace(b"KEY", audio_http.key.encode())
    status, body = _get(audio_http.port, target, {"Authorization": f"Bearer {TOKEN}"})
    assert status in (400, 404), (status, body[:200])
    assert SECRET not in body and audio_http.audio not in body


def test_audio_refuses_an_absolute_path_and_oversized_request_lines(
    audio_http: AudioHttp, tmp_path: Path
) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    secret = str(tmp_path / "secret.wav").encode()
    for target in (b"/audio/" + secret, b"/audio/%2f" + secret[1:], b"/audio" + secret):
        status, body = _get(audio_http.port, target, bearer)
        assert status in (400, 404) and SECRET not in body, target
    try:  # the request line itself is refused: 414/431, or a reset while it is still sending
        status, body = _get(audio_http.port, b"/audio/" + b"a" * 70_000, bearer)
    except ConnectionResetError:
        status, body = 431, b""
    assert status in (414, 431) and SECRET not in body
