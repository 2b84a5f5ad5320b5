"""hub.yaml: the hub's configuration, validated by pydantic (`extra="forbid"`: a typo is an error).

Errors name the file, the line and column when known, the key path and what was expected:
`hub.yaml:12:5: routes.0.supplier: unknown supplier 'acmee' (known: acme, bolt)`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import url as sa_url

from common import yamlsrc
from common.mqtt_tls import TlsSettings
from hub import config_include
from hub.board.settings import BoardSection
from hub.webhooks.settings import WebhookEndpoint, WebhooksSection
from sync.packet import ID_PATTERN


class HubConfigError(ValueError):
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
    database_password_file: str | None = Field(
        default=None, description="file holding the database password (kept out of the URL)"
    )
    # Roles of this process. Several hub processes on one database and share group split the
    # work: all that ingest share the uplink; one at a time fans out (a lease). Giving the
    # fan-out to a process that does not ingest balances two processes best (README).
    ingest: bool = Field(default=True, description="take packets from the uplink")
    fanout: bool = Field(default=True, description="fan out to suppliers (one process at a time)")
    status_interval_s: float = Field(
        default=15.0, ge=0.1, le=3600,
        description="how often the hub republishes its retained keyop/v1/hub/status")
    tz_offset: str | None = Field(
        default=None, pattern=r"^[+-](0\d|1[0-4]):[0-5]\d$",
        description="the plant's UTC offset (`+01:00`) for the times of the hub's own events "
        "(alerts, assignments); default: the tzOffset of the newest event of the order")
    max_future_skew_s: float = Field(
        default=300.0, ge=0,
        description="an event time later than the hub's receive time by more than this is "
        "flagged and ordered as if it happened on receipt (it never wins operation state)")

    @field_validator("database_password_file")
    @classmethod
    def _password_in_one_place(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or "database" not in info.data:
            return value
        url = sa_url.make_url(info.data["database"])
        if url.get_backend_name() == "sqlite":
            raise ValueError("SQLite has no password: remove it or use a PostgreSQL URL")
        if url.password is not None:
            raise ValueError("hub.database already holds a password: give it in one place")
        return value

    def database_url(self) -> str:
        """The database URL with the password from `database_password_file` applied."""
        if self.database_password_file is None:
            return self.database
        password = read_secret(self.database_password_file, min_length=1)
        url = sa_url.make_url(self.database).set(password=password)
        return url.render_as_string(hide_password=False)


class HubWorkerAccount(_Strict):
    """The broker account of one more hub process (its key is the MQTT username)."""

    client_id: str | None = Field(default=None, min_length=1, max_length=128,
                                  description="the process's mqtt.client_id (default: the "
                                              "username)")
    password_file: str | None = Field(
        default=None, description="file holding the broker password (`keyop hub acl`)"
    )


class MqttSection(_Strict):
    """The broker connection (MQTT 5, persistent session)."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(default="keyop-hub-1", min_length=1, max_length=128)
    # The shared subscription group the ingesting processes split the uplink in; null: a
    # plain subscription, for a broker without shared subscriptions (one hub process only).
    share_group: str | None = Field(default="keyop-hub", pattern=ID_PATTERN)
    username: str | None = None
    # The hub's broker password is read from this file (never written in hub.yaml).
    password_file: str | None = None
    # TLS towards the broker; none: plain TCP.
    tls: TlsSettings | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    # Messages wait in the broker session while the hub is away (the edge outbox is the real
    # buffer; this only saves resends).
    session_expiry_s: int = Field(default=86_400, ge=0)
    # Bound of the ingest queue; when full, the hub stops reading the socket (TCP
    # backpressure to the broker) instead of dropping.
    ingest_queue: int = Field(default=5_000, ge=10)
    # Broker accounts of the other hub processes on this database and share group, for
    # `keyop hub acl` only: each process connects with an account of its own (README).
    worker_accounts: dict[str, HubWorkerAccount] = Field(default_factory=dict)


KEY_HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"


def hash_key(key: str) -> str:
    """The stored form of an API key: `sha256:<hex>`.

    API keys are 256-bit random tokens (`keyop hub acl` makes them), so a fast hash is enough:
    there is nothing to brute-force, unlike a human password.
    """
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def read_secret(path: str | Path, min_length: int = 16, *, private: bool = False) -> str:
    """A secret from a file: its first line, stripped (`min_length`: 16 for keyop's own
    generated secrets; a database password is the database's business). `private`: the file
    must also be a regular file of ours, closed to group and others (`check_private`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW) if private else None
        if fd is None:
            text = Path(path).read_text(encoding="utf-8")
        else:
            with os.fdopen(fd, encoding="utf-8") as handle:
                check_private(Path(path), os.fstat(handle.fileno()))
                text = handle.read()
    except OSError as error:
        raise HubConfigError(f"{path}: cannot read secret: {error.strerror}") from None
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(secret) < min_length:
        raise HubConfigError(f"{path}: secret is shorter than {min_length} characters")
    return secret


def check_private(path: Path, info: os.stat_result) -> None:
    """Refuse a secret file that is not a regular file of ours, closed to group and others."""
    if not stat.S_ISREG(info.st_mode):
        raise HubConfigError(f"{path}: secret file is not a regular file")
    if info.st_uid != os.geteuid():
        raise HubConfigError(f"{path}: secret file is owned by uid {info.st_uid}, not by the user "
                             f"running this command (uid {os.geteuid()}): chown it")
    if info.st_mode & 0o077:
        raise HubConfigError(f"{path}: secret file has mode {stat.S_IMODE(info.st_mode):04o}: "
                             "group or others may read or write it; chmod 600 it")


class SupplierConfig(_Strict):
    """What one supplier may see, and how it proves who it is."""

    partner_params: bool = Field(default=False, description="receive params of class 'partner'")
    params: list[str] | None = Field(
        default=None, description="allow-list of param names (still subject to class rules)"
    )
    batch: bool = Field(
        default=False,
        description="receive events as CloudEvents batches (one MQTT message per work order "
        "and fan-out step, application/cloudevents-batch+json) instead of one per event",
    )
    station_names: dict[str, str] | None = Field(
        default=None,
        description="equipment path -> the public name this supplier sees instead",
    )
    api_key_hash: str | None = Field(
        default=None, pattern=KEY_HASH_PATTERN, description="sha256:<hex> of the API key"
    )
    api_key_file: str | None = Field(
        default=None, description="file holding the API key (hashed when the hub loads it)"
    )
    api_key_hashes: list[Annotated[str, Field(pattern=KEY_HASH_PATTERN)]] = Field(
        default_factory=list, max_length=16,
        description="more keys of this supplier (sha256:<hex> each): every key listed works, "
        "so a new key can be handed out before the old one is removed (`keyop hub acl` "
        "writes them to api-keys.yaml)")
    mqtt_password_file: str | None = Field(
        default=None, description="file holding the broker password (`keyop hub acl`)"
    )
    webhooks: dict[str, WebhookEndpoint] = Field(
        default_factory=dict, description="webhook endpoints by name (docs/webhooks.md)")


class GatewayEntry(_Strict):
    """An edge gateway allowed on the broker (its id is its MQTT username), and what it may
    report for: packets outside it are dead-lettered (hub/admission.py)."""

    site: str = Field(pattern=ID_PATTERN, description="the site it speaks for: its packets' "
                      "source must be {site}/{gateway id} and their equipment under the site")
    areas: list[str] | None = Field(default=None, description="allowed areas (second level of "
                                    "the equipment path); all when absent")
    lines: list[str] | None = Field(default=None, description="allowed lines (third level of "
                                    "the equipment path); all when absent")
    equipment: list[str] | None = Field(default=None, description="allowed equipment path "
                                        "prefixes; all under the site when absent")
    work_orders: list[str] | None = Field(default=None, description="fnmatch patterns of the "
                                          "work orders it may report; all when absent")

    mqtt_password_file: str | None = Field(
        default=None, description="file holding the broker password (`keyop hub acl`)"
    )


def _ip_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or network "
                         "(e.g. 10.0.0.5 or 10.0.0.0/24)") from None
    return value


class ApiSection(_Strict):
    """The supplier REST API, served by the hub process."""

    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="bind address; loopback by default")
    port: int = Field(default=8710, ge=0, le=65535, description="0 picks a free port")
    public_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s]+$",
        description="the URL suppliers reach the API at (the OpenAPI `servers` entry); "
        "none: the API's own address, as a relative `/`")
    max_limit: int = Field(default=1000, ge=1, le=10_000, description="largest page size")
    stream_poll_s: float = Field(default=1.0, gt=0, le=60,
                                 description="SSE: how often to look for other workers' rows")
    admin_key_hash: str | None = Field(default=None, pattern=KEY_HASH_PATTERN)
    admin_key_file: str | None = None
    admin_key_hashes: list[Annotated[str, Field(pattern=KEY_HASH_PATTERN)]] = Field(
        default_factory=list, max_length=16,
        description="more admin keys (sha256:<hex> each; `keyop hub acl` writes them)")
    max_body_bytes: int = Field(default=65_536, ge=1024, le=16 * 2**20,
                                description="largest request body; 413 past it")
    max_streams_per_key: int = Field(default=4, ge=1, le=10_000,
                                     description="open SSE streams per API key; 429 past it")
    rate_per_s: float = Field(default=20.0, gt=0,
                              description="requests per second per API key (token bucket)")
    burst: int = Field(default=40, ge=1, description="requests a key may make at once")
    threads: int = Field(default=2, ge=1, le=64,
                         description="threads (and database connections) for API reads")
    audit_flush_s: float = Field(default=1.0, gt=0, le=60,
                                 description="how often buffered audit rows are written")
    audit_buffer: int = Field(default=10_000, ge=10,
                              description="audit rows held at most; a full buffer is written "
                              "before the next answer leaves")
    trusted_proxies: list[Annotated[str, AfterValidator(_ip_network)]] = Field(
        default_factory=list,
        description="addresses (or networks) of reverse proxies whose X-Forwarded-For is "
        "believed; none: the socket peer is the client")


class OrderConfig(_Strict):
    """What hub.yaml knows about one work order (the API may add assignments and due times)."""

    due: datetime | None = Field(default=None, description="RFC 3339 due time of the order")
    planned: int | None = Field(default=None, ge=0, le=2**53,
                                description="the order's planned quantity (else the largest "
                                "planned quantity its operations report)")


class AlertsSection(_Strict):
    """Delay alerts: periodic evaluation of every running operation."""

    enabled: bool = True
    interval_s: float = Field(default=30.0, gt=0, description="evaluation period")
    margin_s: float = Field(default=600.0, ge=0,
                            description="alert when the estimate passes the due time by more")
    stall_after_s: float = Field(default=300.0, gt=0,
                                 description="a running operation silent this long is stalled")
    window: int = Field(default=20, ge=2, le=1000,
                        description="recent progress points used for the rate")


class RetentionSection(_Strict):
    """How long the hub keeps dead letters and its audit log; 0 or null keeps them forever."""

    dead_letters_days: float | None = Field(
        default=30, ge=0, description="dead letters older than this are deleted")
    audit_days: float | None = Field(
        default=90, ge=0, description="audit log rows older than this are deleted")
    interval_s: float = Field(default=3600.0, gt=0, description="how often the purge runs")


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
    api: ApiSection = ApiSection()
    alerts: AlertsSection = AlertsSection()
    retention: RetentionSection = RetentionSection()
    webhooks: WebhooksSection = WebhooksSection()
    gateways: dict[str, GatewayEntry] = Field(default_factory=dict)
    suppliers: dict[str, SupplierConfig] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    orders: dict[str, OrderConfig] = Field(default_factory=dict)
    board: BoardSection = BoardSection()

    @model_validator(mode="after")
    def _suppliers_known(self) -> HubConfig:
        # Ids become MQTT usernames and topic levels: '+', '#' or '/' could widen an ACL.
        for section, names in (("suppliers", self.suppliers), ("gateways", self.gateways)):
            for name in names:
                if not re.match(ID_PATTERN, name):
                    raise ValueError(
                        f"{section}.{name}: id {name!r} must match {ID_PATTERN} "
                        "(lowercase letters, digits, '-')"
                    )
        for supplier, settings in self.suppliers.items():
            for endpoint in settings.webhooks:
                if not re.match(ID_PATTERN, endpoint):
                    raise ValueError(
                        f"suppliers.{supplier}.webhooks.{endpoint}: name {endpoint!r} must "
                        f"match {ID_PATTERN} (lowercase letters, digits, '-')")
        for index, route in enumerate(self.routes):
            if route.supplier not in self.suppliers:
                known = ", ".join(sorted(self.suppliers)) or "none"
                raise ValueError(
                    f"routes.{index}.supplier: unknown supplier {route.supplier!r} "
                    f"(known: {known})"
                )
        for name, user in self.board.users.items():
            if user.supplier is not None and user.supplier not in self.suppliers:
                raise ValueError(f"board.users.{name}.supplier: unknown supplier "
                                 f"{user.supplier!r}")
        return self


_INNER_LOC = re.compile(r"^([A-Za-z0-9_.-]+): (.*)$", re.S)


def _position(doc: config_include.Sources, loc: tuple[Any, ...]) -> tuple[str, int, int]:
    """File, line and column of a pydantic error location: the key itself when the whole
    path exists (an unknown key is best shown there), else the value of the deepest part that
    does (a missing key is reported at the mapping that lacks it)."""
    path: yamlsrc.Path = ()
    for part in loc:
        for candidate in (part, str(part)):
            if (*path, candidate) in doc.positions:
                path = (*path, candidate)
                break
        else:
            return doc.positions.get((*path, "__value__")) or doc.locate(path)
    return doc.locate(path)


def _yaml_problem(problem: yamlsrc.Problem) -> str:
    where = "" if problem.path is None else f" {'.'.join(map(str, problem.path)) or '(top)'}:"
    message = problem.message.removeprefix("YAML: ")
    return f"{problem.file}:{problem.line}:{problem.column}:{where} not valid YAML: {message}"


def parse_config(text: str, name: str = "<hub.yaml>", base: Path | None = None, *,
                 includes: bool = True) -> HubConfig:
    """Validate hub.yaml text; `name` prefixes every error message, `base` is the folder its
    `include:` files are relative to (default: the working directory). Without `includes`,
    `include:` is left out (what `keyop hub acl` reads: it writes an included file)."""
    try:
        # A due time may be written as a bare YAML timestamp (`due: 2026-12-01T16:00:00Z`).
        parsed = yamlsrc.load(text, name, kind="hub.yaml", timestamps=True)
        if not isinstance(parsed.value, dict):
            line, column = parsed.locate(())
            raise HubConfigError(f"{name}:{line}:{column}: (top): expected a mapping at the "
                                 f"top, got {type(parsed.value).__name__}")
        if not includes:
            parsed.value.pop(config_include.KEY, None)
        doc = config_include.resolve(parsed, base or Path())
    except yamlsrc.LocatedError as error:
        raise HubConfigError("\n".join(_yaml_problem(p) for p in error.problems)) from None
    except config_include.IncludeError as error:
        raise HubConfigError(str(error)) from None
    try:
        return HubConfig.model_validate(doc.value)
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
            file, line, column = _position(doc, loc)
            if item["type"] == "extra_forbidden":
                message = f"unknown key {str(loc[-1])!r}"
            lines.append(f"{file}:{line}:{column}: {where}: {message}")
        raise HubConfigError("\n".join(lines)) from None


def load_config(path: str | Path, *, includes: bool = True) -> HubConfig:
    """Read and validate a hub.yaml file (and the files it includes)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise HubConfigError(f"{path}: cannot read: {error.strerror}") from None
    return parse_config(text, str(path), path.parent, includes=includes)
