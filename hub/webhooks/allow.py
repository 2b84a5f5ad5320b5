"""The destinations webhooks may reach (`webhooks.allow`), checked when connecting.

A URL's host is resolved by the hub itself and every address it connects to is checked, then
the connection goes to that very address (TLS still verifies the URL's host name): a name that
resolves to an allowed address at one moment and to an internal one the next (DNS rebinding)
is refused at the next connection. Address entries (an IP or a CIDR) allow those addresses for
any host; a host-name entry allows that name on public addresses only, so a listed name can
never lead to loopback, private, link-local or other non-public addresses unless they are
listed as addresses too. An empty list allows nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DestinationRefused(Exception):
    """The URL's host, or every address it resolves to, is outside `webhooks.allow`."""


class AllowList:
    """The parsed `webhooks.allow` entries."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: list[IPNetwork] = []
        self.names: set[str] = set()
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.add(entry.lower().rstrip("."))

    def allows(self, host: str, address: IPAddress) -> bool:
        """Whether connecting to `address`, which `host` resolved to, is allowed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(address in network for network in self.networks):
            return True
        return host.lower().rstrip(".") in self.names and address.is_global


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to for TCP (an IP literal is itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise httpcore.ConnectError(f"cannot resolve {host}: {error.strerror}") from None
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the allow-list allows."""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port)
        allowed = [a for a in addresses if self.allow.allows(host, a)]
        if not allowed:
            shown = ", ".join(str(a) for a in addresses) or "no address"
            raise DestinationRefused(f"{host} ({shown}) is not in webhooks.allow")
        last: Exception | None = None
        for address in allowed:
            try:
                return await self._inner.connect_tcp(str(address), port, timeout,
                                                     local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last = error
        assert last is not None
        raise last

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
