"""The webhook parts of hub.yaml: the hub-level `webhooks:` section and each supplier's
`webhooks:` endpoints (validated with the rest of hub.yaml, errors at file:line:col)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

# An event type (`keyop.operation.started`) or a prefix pattern ending in `.*`
# (`keyop.alert.*`); `*` alone takes every type.
_TYPE_FILTER = re.compile(r"^(\*|[a-z0-9_-]+(\.[a-z0-9_-]+)*(\.\*)?)$")
# A host name as DNS allows it (labels of letters, digits and '-'), lowercase.
_HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
                        r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _destination(value: str) -> str:
    """An allow-list entry: an IP address, a network (CIDR) or a host name."""
    try:
        ipaddress.ip_network(value, strict=False)
        return value
    except ValueError:
        pass
    if not _HOST_NAME.match(value):
        raise ValueError(f"{value!r} is not an IP address, a network (10.0.0.0/24) or a "
                         "lowercase host name (erp.example.com)")
    return value


def _type_filter(value: str) -> str:
    if not _TYPE_FILTER.match(value):
        raise ValueError(f"{value!r} is not an event type (keyop.operation.started), a prefix "
                         "pattern (keyop.alert.*) or '*'")
    return value


class WebhooksSection(_Strict):
    """How the hub delivers webhooks: where it may connect, and how patiently."""

    allow: list[Annotated[str, AfterValidator(_destination)]] = Field(
        default_factory=list,
        description="destinations the hub may POST to: IP addresses, networks (CIDR) and host "
        "names; empty (the default) allows none. A host name allows only public addresses "
        "(loopback, private and link-local ones must be listed as addresses)")
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60,
                                     description="TCP (and TLS) connection timeout")
    timeout_s: float = Field(default=15.0, gt=0, le=300,
                             description="whole-request timeout: connect, send, answer")
    max_response_bytes: int = Field(default=4096, ge=0, le=2**20,
                                    description="bytes of an answer's body read at most")
    retry_min_s: float = Field(default=1.0, gt=0, description="first retry wait")
    retry_max_s: float = Field(default=300.0, gt=0, description="longest retry wait")
    failing_after_s: float = Field(
        default=300.0, ge=0,
        description="an endpoint failing this long is marked failing and alerted")
    poll_s: float = Field(default=0.5, gt=0, le=60,
                          description="how often the hub looks for events that other hub "
                          "processes stored (its own wake the endpoints at once)")


class WebhookEndpoint(_Strict):
    """One endpoint of a supplier: what it is sent and how it is signed."""

    url: str = Field(description="http:// or https:// URL the batches are POSTed to")
    types: list[Annotated[str, AfterValidator(_type_filter)]] = Field(
        default_factory=lambda: ["*"], min_length=1,
        description="event types sent: exact types and prefix patterns (keyop.alert.*)")
    secret_file: str = Field(description="file holding the signing secret (mode 0600, ours)")
    batch: int = Field(default=100, ge=1, le=1000, description="events per POST at most")
    start: Literal["head", "oldest"] = Field(
        default="head", description="where a new endpoint's cursor starts: the feed's head "
        "(events from now on) or its oldest entry")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        # The HTTP client takes ASCII URLs only (it raises on anything else, at delivery).
        if not value.isascii() or not value.isprintable() or " " in value:
            raise ValueError(f"{value!r}: only printable ASCII without spaces (percent-encode "
                             "the path; a non-ASCII host in its xn-- form)")
        try:
            parts = urlsplit(value)
            port = parts.port  # raises on a port that is not a number in range
        except ValueError as error:
            raise ValueError(f"{value!r} is not a URL: {error}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{value!r}: the scheme must be http or https")
        if not parts.hostname:
            raise ValueError(f"{value!r}: no host")
        if not _HOST_NAME.match(parts.hostname) and not _is_ip(parts.hostname):
            raise ValueError(f"{value!r}: the host is neither an IP address nor a host name")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{value!r}: no credentials in the URL (the signature "
                             "authenticates the hub)")
        if parts.fragment:
            raise ValueError(f"{value!r}: no #fragment")
        if port == 0:
            raise ValueError(f"{value!r}: port 0")
        return value

    def accepts(self, event_type: str) -> bool:
        """Whether events of `event_type` go to this endpoint."""
        for pattern in self.types:
            if pattern == "*" or pattern == event_type:
                return True
            if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
                return True
        return False
