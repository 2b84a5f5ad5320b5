"""hub.yaml: the hub's configuration, validated by pydantic (`extra="forbid"`: a typo is an error).

Errors name the file, the line and column when known, the key path and what was expected:
`config/hub.yaml:12:5: routes.0.supplier: unknown supplier 'acmee' (known: acme, bolt)`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"


class ConfigError(ValueError):
    """hub.yaml is unreadable or invalid; the message names the file and the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSection(_Strict):
    """The hub itself."""

    id: str = Field(default="hub", pattern=ID_PATTERN, description="the hub's id (logs, status)")
    database: str = Field(
        default="sqlite:///var/hub.db",
        description="SQLAlchemy URL; a relative SQLite path is relative to the working directory",
    )


class MqttSection(_Strict):
    """The broker connection (MQTT 5, persistent session)."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(default="keyop-hub-1", min_length=1, max_length=128)
    share_group: str = Field(default="keyop-hub", pattern=ID_PATTERN)
    username: str | None = None
    password: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    # Messages wait in the broker session while the hub is away (the edge outbox is the real
    # buffer; this only saves resends).
    session_expiry_s: int = Field(default=86_400, ge=0)
    # Bound of the ingest hand-off from paho's thread; when full, paho's thread waits (TCP
    # backpressure to the broker) instead of dropping.
    ingest_queue: int = Field(default=5_000, ge=10)


class SupplierConfig(_Strict):
    """What one supplier may see."""

    partner_params: bool = Field(default=False, description="receive params of class 'partner'")
    params: list[str] | None = Field(
        default=None, description="allow-list of param names (still subject to class rules)"
    )


class Route(_Strict):
    """Packets that concern one supplier: every criterion given must match."""

    supplier: str
    work_orders: list[str] | None = Field(default=None, description="fnmatch patterns")
    customer_orders: list[str] | None = Field(default=None, description="fnmatch patterns")
    operations: list[str] | None = Field(default=None, description="fnmatch patterns")
    types: list[str] | None = Field(default=None, description="fnmatch patterns on `type`")
    equipment: list[str] | None = Field(default=None, description="equipment path prefixes")

    @model_validator(mode="after")
    def _some_criterion(self) -> Route:
        # A route without criteria would send everything; make that an explicit `types: ["*"]`.
        criteria = (self.work_orders, self.customer_orders, self.operations, self.types,
                    self.equipment)
        if all(c is None for c in criteria):
            raise ValueError(
                "a route needs at least one of work_orders, customer_orders, operations, "
                "types, equipment (use types: ['*'] to route everything)"
            )
        return self


class HubConfig(_Strict):
    """The whole hub.yaml."""

    hub: HubSection = HubSection()
    mqtt: MqttSection = MqttSection()
    suppliers: dict[str, SupplierConfig] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)

    @model_validator(mode="after")
    def _suppliers_known(self) -> HubConfig:
        for name in self.suppliers:
            if not re.match(ID_PATTERN, name):
                raise ValueError(
                    f"suppliers.{name}: id {name!r} must match {ID_PATTERN} "
                    "(lowercase letters, digits, '-')"
                )
        for index, route in enumerate(self.routes):
            if route.supplier not in self.suppliers:
                known = ", ".join(sorted(self.suppliers)) or "none"
                raise ValueError(
                    f"routes.{index}.supplier: unknown supplier {route.supplier!r} "
                    f"(known: {known})"
                )
        return self


_INNER_LOC = re.compile(r"^([A-Za-z0-9_.-]+): (.*)$", re.S)


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The YAML node at a pydantic error location, for its line and column."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    # An unknown key is best shown at the key itself.
                    node = key if part == loc[-1] else value
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def parse_config(text: str, name: str = "<hub.yaml>") -> HubConfig:
    """Validate hub.yaml text; `name` prefixes every error message."""
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{name}: not valid YAML: {error}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping at the top, got {type(raw).__name__}")
    try:
        return HubConfig.model_validate(raw)
    except ValidationError as error:
        lines = []
        for item in error.errors():
            loc = tuple(item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            inner = _INNER_LOC.match(message) if not loc else None
            if inner:
                # Cross-checks of the whole file name their own key path in the message.
                loc = tuple(int(p) if p.isdigit() else p for p in inner[1].split("."))
                message = inner[2]
            where = ".".join(str(p) for p in loc) or "(top)"
            node = _node_at(root, loc)
            mark = f":{node.start_mark.line + 1}:{node.start_mark.column + 1}" if node else ""
            if item["type"] == "extra_forbidden":
                message = f"unknown key {str(loc[-1])!r}"
            lines.append(f"{name}{mark}: {where}: {message}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path) -> HubConfig:
    """Read and validate a hub.yaml file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    return parse_config(text, str(path))
