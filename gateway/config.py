"""gateway.yaml: who this gateway is, which mapping it runs, where its outbox and broker are.

Relative paths are resolved against the folder of the config file, so a service unit and a
person at a shell get the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mapping import yamlsrc
from mapping.errors import MappingError
from mapping.load import read_document, validation_problems
from mapping.types import ID_PATTERN, Duration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identity(_Strict):
    site: str = Field(pattern=ID_PATTERN)
    id: str = Field(pattern=ID_PATTERN, description="gateway id: MQTT username and topic level")


class OutboxSettings(_Strict):
    path: str = "var/outbox.db"
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL survives power loss; NORMAL may lose the last commits on power loss",
    )


class MqttSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    session_expiry: Duration = 86400.0
    keepalive: Duration = 15.0
    ack_timeout: Duration = 10.0
    batch_max_events: int = Field(default=100, ge=1, le=1000)
    username_env: str | None = None
    password_env: str | None = None


class GatewaySettings(_Strict):
    gateway: Identity
    mapping: str = "mapping.yaml"
    outbox: OutboxSettings = OutboxSettings()
    mqtt: MqttSettings = MqttSettings()


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


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read gateway.yaml; raise `MappingError` (file:line:col problems) when it is wrong."""
    doc: yamlsrc.Document = read_document(path)
    if not isinstance(doc.value, dict):
        raise MappingError([doc.problem((), "gateway config must be a YAML mapping")])
    try:
        settings = GatewaySettings.model_validate(doc.value)
    except ValidationError as error:
        raise MappingError(validation_problems(doc, error)) from None
    return GatewayConfig(Path(path).resolve(), settings)
