"""TLS towards the broker and the blocking connect, shared by the edge uplink and the hub.

The connect (TCP, then the TLS handshake) blocks, so callers run `open_socket` in a worker
thread and hand the connected socket to paho; paho then only speaks MQTT on it.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS towards the broker: CA bundle, optional client certificate, optional server name."""

    ca_file: str | None = None
    """PEM bundle of the CAs to trust; None: the system's trust store."""
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    """The name the broker's certificate must carry (and SNI), when it differs from `host`."""

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the broker's certificate and host name."""
        context = (_NamedContext(ssl.PROTOCOL_TLS_CLIENT) if self.server_name
                   else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        if isinstance(context, _NamedContext):
            context.server_name = self.server_name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if self.ca_file:
            context.load_verify_locations(cafile=self.ca_file)
        else:
            context.load_default_certs()
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class TlsSettings(BaseModel):
    """`mqtt.tls` of gateway.yaml and hub.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str | None = Field(default=None, description="PEM CA bundle (none: system CAs)")
    cert_file: str | None = Field(default=None, description="client certificate (PEM)")
    key_file: str | None = Field(default=None, description="client key (PEM)")
    server_name: str | None = Field(
        default=None, description="name the broker certificate must carry, if not `host`")

    def tls(self, resolve: Callable[[str], str] | None = None) -> Tls:
        """The connection's TLS; `resolve` turns each file name into the path to open."""
        def path(value: str | None) -> str | None:
            return value if value is None or resolve is None else resolve(value)

        return Tls(ca_file=path(self.ca_file), cert_file=path(self.cert_file),
                   key_file=path(self.key_file), server_name=self.server_name)


class _NamedContext(ssl.SSLContext):
    """paho passes the host it dials as `server_hostname`; this verifies another name instead
    (a broker reached by IP address or through a tunnel whose certificate names its DNS name)."""

    server_name: str | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        if self.server_name:
            kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


def open_socket(host: str, port: int, timeout_s: float, tls: Tls | None) -> socket.socket:
    """A TCP connection to the broker, TLS-wrapped and handshaken when `tls` is given.

    Blocking (run it in a worker thread); raises `OSError` (`ssl.SSLError` included) when the
    broker cannot be reached or its certificate is refused.
    """
    sock = socket.create_connection((host, port), timeout_s)
    if tls is None:
        return sock
    try:
        return tls.context().wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
