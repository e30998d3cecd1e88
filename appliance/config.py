"""Settings: one TOML file plus environment overrides, validated once at start.

The file is ``config/appliance.toml`` (documented key by key); every key can be overridden
by an environment variable ``APPLIANCE_<SECTION>__<KEY>`` (for example
``APPLIANCE_BROKER__PORT=1884``), read by pydantic-settings: a value is the string it is
until its key's type says otherwise (a password ``12345678`` stays a string), and a list or
table is written as JSON (``APPLIANCE_WORKERS__DEVICES='["0", "1"]'``).
"""

from __future__ import annotations

import logging
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from appliance.audio import AudioFormat
from appliance.cache.reuse import DEFAULT_THRESHOLDS
from appliance.errors import ConfigError

ENV_PREFIX = "APPLIANCE_"
CONFIG_ENV = "APPLIANCE_CONFIG"

log = logging.getLogger(__name__)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSettings(_Section):
    id: str = Field(default="", description="node id; empty means the host name")
    base_topic: str = "audiogen"
    share_group: str = ""

    @field_validator("base_topic", "id")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        if any(c in value for c in "#+\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError("must not contain '#', '+', NUL, or start/end with '/'")
        return value

    @property
    def node_id(self) -> str:
        return self.id or socket.gethostname().split(".")[0] or "appliance"


class BrokerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    # "auto": use a broker already answering on host:port, else start ours (appliance/broker.py)
    embedded: bool | Literal["auto"] = "auto"
    protocol: Literal["5", "3.1.1"] = "5"
    username: str = ""
    password: str = ""
    client_id: str = ""
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    max_packet_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # TLS to the broker (docs/security.md). The embedded broker is plaintext on loopback only.
    tls: bool = False
    ca_file: str = Field(default="", description="CA bundle (PEM); empty: the system's CAs")
    cert_file: str = Field(default="", description="client certificate (PEM); empty: none")
    key_file: str = Field(default="", description="client key (PEM); empty: in cert_file")
    tls_insecure: bool = Field(default=False, description="skip the host name check (never)")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable_file(cls, value: str) -> str:
        if value and not (Path(value).is_file() and os.access(value, os.R_OK)):
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("key_file")
    @classmethod
    def _key_needs_cert(cls, value: str, info: ValidationInfo) -> str:
        if value and not info.data.get("cert_file"):
            raise ValueError("a client key needs broker.cert_file (the client certificate)")
        return value

    @field_validator("embedded")
    @classmethod
    def _embedded_on_loopback(cls, value: bool | str, info: ValidationInfo) -> bool | str:
        host = str(info.data.get("host", "127.0.0.1"))
        if value is True and not (host.startswith("127.") or host in ("localhost", "::1")):
            raise ValueError(
                f"the embedded broker is anonymous and plaintext, so it listens on loopback only, "
                f"not {host!r}: for devices on the network run mosquitto with TLS, accounts and "
                "an ACL (docs/security.md) and set broker.embedded = false"
            )
        return value

    @field_validator("tls")
    @classmethod
    def _no_tls_to_embedded(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("embedded") is True:
            raise ValueError(
                "the embedded broker is plaintext on loopback only; TLS is for a separate "
                "broker: set broker.embedded = false (and host/port of that broker) or tls = false"
            )
        return value
    # the broker keeps the supervisor's subscriptions and queues its QoS 1 requests while it
    # is away (a reconnect, a restart) for this long; 0: a clean session on every connect
    session_expiry_s: int = Field(default=3600, ge=0, le=7 * 86400)
    # MQTT 5 flow control (docs/performance.md): unacknowledged requests the broker may push
    # to us; the intake acknowledges at wire speed and sheds with `busy`, so this is high
    receive_maximum: int = Field(default=65535, ge=1, le=65535)
    # audio published and not yet acknowledged by the broker; `deliver: mqtt` beyond it: busy
    outgoing_audio_budget_bytes: int = Field(default=64 * 1024**2, ge=1024 * 1024)


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8380, ge=0, le=65535)
    public_url: str = Field(default="", description="base of audio_url; empty: http://host:port")
    audio_token: str = Field(default="", description="bearer token for /audio; empty: none")

    @field_validator("audio_token")
    @classmethod
    def _token_shape(cls, value: str) -> str:
        if value and (len(value) < 16 or not value.isascii() or any(c.isspace() for c in value)):
            raise ValueError("use at least 16 ASCII characters without spaces (or empty: no token)")
        return value


class CacheSettings(_Section):
    dir: Path = Path("var/cache")
    max_items: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=2 * 1024**3, ge=1024 * 1024)
    map_size_bytes: int = Field(default=16 * 1024**3, ge=1024 * 1024)
    semantic: bool = True
    tau_semantic: float = Field(default=DEFAULT_THRESHOLDS.tau_semantic, ge=-1, le=1)
    # "model": the threshold shipped with the reuse model (chosen out of sample)
    tau_reuse: Annotated[float, Field(ge=0, le=1)] | Literal["model"] = "model"
    top_k: int = Field(default=8, ge=1, le=100)
    duration_tolerance_s: float = Field(default=0.5, ge=0)
    clap_check: Literal["auto", "on", "off"] = "auto"
    tau_clap_reuse: float = Field(default=0.3, ge=-1, le=1)
    max_pending_lookups: int = Field(default=256, ge=1)
    # "postgres": one store shared by a fleet (docs/fleet.md); "lmdb": this node alone
    backend: Literal["lmdb", "postgres"] = "lmdb"
    postgres_dsn: str = Field(default="", validate_default=True)

    @field_validator("postgres_dsn")
    @classmethod
    def _dsn_for_postgres(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("backend") == "postgres" and not value:
            raise ValueError('cache.backend = "postgres" needs cache.postgres_dsn '
                             '(e.g. "postgresql://appliance@db.example/appliance")')
        return value


class GenerationSettings(_Section):
    default_duration_s: float = Field(default=8.0, gt=0)
    max_duration_s: float = Field(default=30.0, gt=0, le=30.0)
    default_steps: int = Field(default=25, ge=1)
    max_steps: int = Field(default=100, ge=1, le=1000)
    default_guidance_scale: float = Field(default=4.5, ge=0)
    max_guidance_scale: float = Field(default=20.0, ge=0)
    max_candidates: int = Field(default=4, ge=1, le=16)
    max_prompt_chars: int = Field(default=500, ge=1, le=10_000)
    loop_crossfade_s: float = Field(default=0.25, ge=0, le=5)
    tau_accept_new: float = Field(default=0.4, ge=-1, le=1)
    # "auto": gate only with a real CLAP scorer (a random-weight scorer's scores mean nothing)
    quality_gate: Literal["auto", "on", "off"] = "auto"


class ModelSettings(_Section):
    dir: Path = Path("var/models")
    tangoflux: str = Field(default="", description="directory of real weights; empty: tiny model")
    clap: str = Field(default="", description="directory of real CLAP weights; empty: tiny CLAP")
    embedder: str = Field(default="", description="sentence-transformers dir; empty: MiniLM")
    sa3: str = Field(default="", description="Stable Audio 3 snapshot dir; empty: tiny SA3")
    # more generators a worker may name: key -> directory (TangoFlux or SA3, told by its files)
    generators: dict[str, str] = Field(default_factory=dict)
    # the model of a request that names none: a generator key or name; empty: the first worker's
    default_model: str = ""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    latent_frames: Literal["needed", "reference"] = "needed"

    @field_validator("generators")
    @classmethod
    def _extra_generators(cls, value: dict[str, str]) -> dict[str, str]:
        for key, directory in value.items():
            if key in ("tangoflux", "sa3"):
                raise ValueError(f"{key!r} is built in: set models.{key} instead")
            if not directory:
                raise ValueError(f"{key}: a directory is required")
        return value

    def tangoflux_dir(self) -> Path:
        """The generator directory the workers load: real weights if configured, else tiny."""
        return Path(self.tangoflux) if self.tangoflux else self.dir / "tiny-tangoflux"

    @property
    def uses_tiny(self) -> bool:
        return not self.tangoflux

    def clap_dir(self) -> Path:
        """The CLAP scorer directory the workers load: real weights if configured, else tiny."""
        return Path(self.clap) if self.clap else self.dir / "tiny-clap"

    @property
    def uses_tiny_clap(self) -> bool:
        return not self.clap


class WorkerEntry(_Section):
    """One worker: the device it owns and the generator it loads."""

    device: str = "cpu"  # "cpu", a GPU index ("0") or "cuda:0"
    model: str = "tangoflux"  # "tangoflux", "sa3" or a key of models.generators

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        index = value.removeprefix("cuda:")
        if value != "cpu" and not index.isdigit():
            raise ValueError(f"{value!r} is neither 'cpu' nor a GPU like '0' or 'cuda:0'")
        return "cpu" if value == "cpu" else index


class WorkerSettings(_Section):
    devices: list[str] = Field(default_factory=lambda: ["cpu"], min_length=1)
    # when set, replaces devices: e.g. [{device = "0", model = "tangoflux"},
    # {device = "cpu", model = "sa3"}]
    pool: list[WorkerEntry] = Field(default_factory=list)
    queue_size: int = Field(default=32, ge=1)
    generation_timeout_s: float = Field(default=300.0, gt=0)
    ready_timeout_s: float = Field(default=300.0, gt=0)
    restart_backoff_initial_s: float = Field(default=0.5, ge=0)
    restart_backoff_max_s: float = Field(default=30.0, ge=0)

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: list[str]) -> list[str]:
        for device in value:
            if device != "cpu" and not device.isdigit():
                raise ValueError(f"{device!r} is neither 'cpu' nor a GPU index like '0'")
        if len(set(value)) != len(value):
            raise ValueError("each device may appear once")
        return value

    def entries(self) -> list[WorkerEntry]:
        """The workers to start: ``pool``, else one TangoFlux worker per entry of ``devices``."""
        return list(self.pool) or [WorkerEntry(device=d, model="tangoflux") for d in self.devices]


class RequestSettings(_Section):
    max_payload_bytes: int = Field(default=64 * 1024, ge=256)
    # per client (reply address; one shared bucket for requests naming none); 0: off
    rate_limit_per_s: float = Field(default=0.0, ge=0)
    rate_limit_burst: int = Field(default=100, ge=1)
    # every request together, beside the per-client limit; 0: off
    global_rate_limit_per_s: float = Field(default=0.0, ge=0)
    global_rate_limit_burst: int = Field(default=1000, ge=1)
    # the intake (docs/performance.md): the network thread only enqueues; full: `busy` at once
    intake_size: int = Field(default=4000, ge=1)
    dispatch_threads: int = Field(default=4, ge=1, le=64)
    # identical requests that may wait on one generation; more: `busy`
    max_waiters_per_generation: int = Field(default=64, ge=1)


class StatsSettings(_Section):
    interval_s: float = Field(default=60.0, ge=0, description="retained <base>/<node>/stats; 0: off")


class HomeAssistantSettings(_Section):
    """MQTT discovery (docs/home-assistant.md): the node appears in Home Assistant as a device."""

    discovery: bool = Field(default=True, description="false: remove the device from HA")
    prefix: str = Field(default="homeassistant", description="HA's discovery prefix")
    birth_topic: str = Field(default="homeassistant/status", description="HA's birth message")
    device_name: str = Field(default="", description="empty: Audio generator <node>")
    # mp3: every HA media player and ESPHome speaker plays it, at 1/12 of WAV's size
    audio_format: AudioFormat = Field(default="mp3", description="format of the clips HA gets")

    @field_validator("prefix", "birth_topic")
    @classmethod
    def _plain_topic(cls, value: str) -> str:
        if not value or any(c in value for c in "#+\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError("must be a topic without '#', '+', NUL or a leading/trailing '/'")
        return value


class WyomingSettings(_Section):
    """The Wyoming TTS server (docs/wyoming.md): off unless asked for."""

    enabled: bool = False
    # 10200 is Piper's by convention, so another port
    uri: str = Field(default="tcp://127.0.0.1:10300", description="tcp://host:port or unix://path")

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        scheme, _, rest = value.partition("://")
        host, _, port = rest.rpartition(":")
        if scheme == "unix" and rest:
            return value
        if scheme != "tcp" or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be tcp://host:port (port 0: any free port) or unix://path")
        return value


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(_Section):
    """The whole configuration tree."""

    node: NodeSettings = NodeSettings()
    broker: BrokerSettings = BrokerSettings()
    http: HttpSettings = HttpSettings()
    cache: CacheSettings = CacheSettings()
    generation: GenerationSettings = GenerationSettings()
    models: ModelSettings = ModelSettings()
    workers: WorkerSettings = WorkerSettings()
    requests: RequestSettings = RequestSettings()
    stats: StatsSettings = StatsSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    wyoming: WyomingSettings = WyomingSettings()
    logging: LoggingSettings = LoggingSettings()


def default_config_path() -> Path | None:
    """``$APPLIANCE_CONFIG``, else ``config/appliance.toml`` when it exists in the cwd."""
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    candidate = Path("config/appliance.toml")
    return candidate if candidate.is_file() else None


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file (if any), apply environment overrides, validate.

    Raises ConfigError naming the offending key (``section.key``) and where its value came
    from: the file, or the environment variable (an override is not the file's fault).
    """
    data: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = TomlConfigSettingsSource(_Sources, toml_file=path)()
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    overrides = _read_environment(os.environ if environ is None else environ)
    for values in overrides.values():
        data = _merge(data, values)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            variable = next((name for name, values in overrides.items()
                             if _provides(values, error["loc"])), None)
            source = f" (from {variable})" if variable else f" (file {path})" if path else ""
            problems.append(f"{key}{source}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc


class _Sources(BaseSettings, Settings):
    """The settings tree as pydantic-settings reads it; only its sources are used, so that
    ``Settings()`` itself stays the plain defaults."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False)


def _read_environment(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Each ``APPLIANCE_*`` variable's values, read alone so that a bad one can be named.

    Values are taken as the strings they are (the field's type decides), except that a list
    or a table is written as JSON. A variable that names no setting is ignored with a warning.
    """
    overrides: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        source = EnvSettingsSource(_Sources)
        source.env_vars = {name.lower(): raw}
        try:
            values = source()
        except SettingsError as exc:
            raise ConfigError(f"environment variable {name}: {raw!r} is not valid JSON, "
                              "which a list or a table is written in") from exc
        if values:
            overrides[name] = values
        else:
            log.warning("environment variable %s names no setting and is ignored: settings are "
                        "%s<SECTION>__<KEY> (two underscores), e.g. %sBROKER__PORT",
                        name, ENV_PREFIX, ENV_PREFIX)
    return overrides


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def _provides(values: Any, loc: tuple[int | str, ...]) -> bool:
    """Whether ``values`` (one variable's) set the value at ``loc`` or a table above it."""
    for part in loc:
        if not isinstance(values, dict):
            return True
        if part not in values:
            return False
        values = values[part]
    return True
