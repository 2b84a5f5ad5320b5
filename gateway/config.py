"""gateway.yaml: who this gateway is, which mapping it runs, where its outbox and broker are.

Relative paths are resolved against the folder of the config file, so a service unit and a
person at a shell get the same files.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from common import yamlsrc
from common.mqtt_tls import TlsSettings
from mapping.errors import MappingError
from mapping.load import read_document, validation_problems
from mapping.types import Duration
from sync.packet import ID_PATTERN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identity(_Strict):
    site: str = Field(pattern=ID_PATTERN)
    id: str = Field(pattern=ID_PATTERN, description="gateway id: MQTT username and topic level")


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
          "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def parse_size(value: object) -> object:
    """`1000`, `"500MB"`, `"2GiB"` -> bytes; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"size {value!r}: expected a number of bytes with an optional "
                             "unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. '500MB'")
        return int(match.group(1)) * _UNITS[match.group(2)]
    return value


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=1)]


class OutboxSettings(_Strict):
    path: str = "var/outbox.db"
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL survives power loss; NORMAL may lose the last commits on power loss",
    )
    max_packets: int | None = Field(default=None, ge=1,
                                    description="bound on pending packets (none: unbounded)")
    max_bytes: Size | None = Field(default=None,
                                   description="bound on pending packet bytes, e.g. '1GB'")
    policy: Literal["refuse", "evict_low_priority"] = Field(
        default="refuse",
        description="when a bound is reached: refuse (new packets wait, alarm) or "
        "evict_low_priority (oldest progress/state first; every eviction a gap record)",
    )
    max_file_bytes: Size | None = Field(
        default=None,
        description="hard cap on the SQLite file; past it appends meet 'disk full' and follow "
        "the policy (keep it above max_bytes: the file holds pages, index and free space)",
    )


class MqttSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    session_expiry: Duration = 86400.0
    keepalive: Duration = 15.0
    ack_timeout: Duration = 10.0
    batch_max_events: int = Field(default=100, ge=1, le=1000)
    username: str | None = Field(default=None, description="MQTT username (none: no login)")
    username_env: str | None = Field(default=None,
                                     description="read the username from this env variable")
    password_env: str | None = Field(default=None,
                                     description="read the password from this env variable")
    password_file: str | None = Field(
        default=None, description="read the password from this file (first line)")
    tls: TlsSettings | None = None


class CredentialsError(ValueError):
    """A configured credential source (env variable or file) is missing or unreadable."""


def is_loopback(host: str) -> bool:
    """Whether a bind address or Host name stays on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiSettings(_Strict):
    """The gateway's local HTTP API (health, status, metrics, mapping check and reload).

    Every request must name an allowed `Host` (loopback, the bound address or `allowed_hosts`)
    and carry no `Origin` of another host; with `token_file`, also the bearer token.
    """

    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="loopback unless you mean otherwise")
    port: int = Field(default=8471, ge=0, le=65535, description="0 picks a free port")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="other names the API may be called by (Host and Origin), e.g. the "
        "gateway's DNS name")
    token_file: str | None = Field(
        default=None,
        description="file holding a bearer token every request must carry; required when "
        "`host` is not loopback")

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> ApiSettings:
        if self.enabled and self.token_file is None and not is_loopback(self.host):
            raise ValueError(f"token_file: required when host {self.host!r} is not loopback "
                             "(anyone on the network could reload the mapping)")
        return self


class ServiceSettings(_Strict):
    """How the daemon stops (docs/operations.md, "Stopping")."""

    stop_timeout: Duration = Field(
        default=5.0,
        description="on SIGTERM, how long the uplink may go on publishing and waiting for the "
        "hub's acks before the gateway exits; what is not acknowledged stays in the outbox "
        "(keep it below the unit's TimeoutStopSec)")


class GatewaySettings(_Strict):
    gateway: Identity
    mapping: str = "mapping.yaml"
    outbox: OutboxSettings = OutboxSettings()
    mqtt: MqttSettings = MqttSettings()
    api: ApiSettings = ApiSettings()
    service: ServiceSettings = ServiceSettings()


@dataclass(frozen=True)
class GatewayConfig:
    file: Path
    settings: GatewaySettings

    @property
    def source(self) -> str:
        return f"{self.settings.gateway.site}/{self.settings.gateway.id}"

    @property
    def gateway_id(self) -> str:
        return self.settings.gateway.id

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else (self.file.parent / path).resolve()

    @property
    def mapping_path(self) -> Path:
        return self.resolve(self.settings.mapping)

    @property
    def outbox_path(self) -> Path:
        return self.resolve(self.settings.outbox.path)

    def mqtt_credentials(self) -> tuple[str | None, str | None]:
        """(username, password) from the config, its env variables or its password file.

        Raises `CredentialsError` naming the variable or file when it cannot be read; never
        logs or returns the secret in an error.
        """
        mqtt = self.settings.mqtt
        username = mqtt.username
        if mqtt.username_env:
            username = os.environ.get(mqtt.username_env)
            if not username:
                raise CredentialsError(f"mqtt.username_env: environment variable "
                                       f"{mqtt.username_env!r} is not set")
        password: str | None = None
        if mqtt.password_env:
            password = os.environ.get(mqtt.password_env)
            if password is None:
                raise CredentialsError(f"mqtt.password_env: environment variable "
                                       f"{mqtt.password_env!r} is not set")
        elif mqtt.password_file:
            path = self.resolve(mqtt.password_file)
            try:
                password = path.read_text().splitlines()[0] if path.stat().st_size else ""
            except OSError as error:
                raise CredentialsError(f"mqtt.password_file: cannot read {path}: "
                                       f"{error.strerror}") from None
        if password is not None and username is None:
            raise CredentialsError("mqtt: a password is configured but no username "
                                   "(username or username_env)")
        return username, password


def read_api_token(config: GatewayConfig) -> str | None:
    """The local API's bearer token (`api.token_file`, first line), or None when not set.
    Raises `CredentialsError` naming the field when the file is unreadable or too short."""
    name = config.settings.api.token_file
    if name is None:
        return None
    path = config.resolve(name)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CredentialsError(f"api.token_file: cannot read {path}: {error.strerror}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < 16:
        raise CredentialsError(f"api.token_file: {path}: token is shorter than 16 characters")
    return token


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read gateway.yaml; raise `MappingError` (file:line:col problems) when it is wrong."""
    doc: yamlsrc.Document = read_document(path, "gateway.yaml")
    if not isinstance(doc.value, dict):
        raise MappingError([doc.problem((), "gateway config must be a YAML mapping")])
    try:
        settings = GatewaySettings.model_validate(doc.value)
    except ValidationError as error:
        raise MappingError(validation_problems(doc, error)) from None
    return GatewayConfig(Path(path).resolve(), settings)
