"""One hub process per broker identity: database leases on its MQTT client id and username.

Two processes connecting with one client id take the broker session from each other over and
over (MQTT 5 reason 0x8E, "Session taken over"): each gets part of the ingest and loses what it
had in flight. So every hub process on a database holds the lease `mqtt-client:{client id}`,
and `mqtt-user:{username}` when it logs in (with `acl-file` the broker keys sessions by
username, hub/acl.py), from before it connects until after it has disconnected, renewing them
while it runs. A second process with the same identity finds them held and refuses to start.

A process that died without releasing its leases leaves them until they expire, so a start
waits up to one lease time (LEASE_TTL_S) for them before refusing: a restart after a crash
goes ahead, a duplicate of a live process (which keeps renewing) does not. When the holder
ran on this host and its pid is gone (a kill -9, a crash), the lease is taken over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import time

from sqlalchemy.exc import SQLAlchemyError

from hub.config import HubConfigError, MqttSection
from hub.store import Store

log = logging.getLogger(__name__)

LEASE_TTL_S = 15.0
_HOLDER = re.compile(r" pid (\d+) on (\S+) #[0-9a-f]+$")
_NAME_MAX = 64  # leases.name
_HOLDER_MAX = 128  # leases.holder


class ClientIdInUse(HubConfigError):
    """Another live hub process holds this process's client id (or username)."""


def lease_names(mqtt: MqttSection) -> list[str]:
    """The leases a process with this broker identity holds."""
    names = [_lease_name("mqtt-client", mqtt.client_id)]
    if mqtt.username is not None:
        names.append(_lease_name("mqtt-user", mqtt.username))
    return names


def _lease_name(kind: str, value: str) -> str:
    name = f"{kind}:{value}"
    if len(name) <= _NAME_MAX:
        return name
    return f"{kind}:sha256:{hashlib.sha256(value.encode()).hexdigest()[:40]}"


def dead_here(holder: str) -> bool:
    """Whether a lease holder (as `holder_name` writes it) ran on this host and is gone."""
    found = _HOLDER.search(holder)
    if found is None or found[2] != socket.gethostname():
        return False
    try:
        os.kill(int(found[1]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # alive under another user; or no pid at all
    return False


def holder_name(hub_id: str) -> str:
    """Who holds a lease, as the other process's refusal names it: hub id, host and pid (and a
    random tag, so two processes never share a name)."""
    name = f"{hub_id} pid {os.getpid()} on {socket.gethostname()} #{secrets.token_hex(4)}"
    return name if len(name) <= _HOLDER_MAX else name[:_HOLDER_MAX - 10] + name[-10:]


class ClientLease:
    """The broker identity's leases for one hub process: `acquire`, `run`, `release`."""

    def __init__(self, store: Store, mqtt: MqttSection, hub_id: str, *,
                 ttl_s: float | None = None) -> None:
        self.store = store
        self.mqtt = mqtt
        self.names = lease_names(mqtt)
        self.holder = holder_name(hub_id)
        self.ttl_s = LEASE_TTL_S if ttl_s is None else ttl_s
        self.held = False

    async def acquire(self) -> None:
        """Take every lease, waiting up to one lease time for a dead holder's to expire;
        raise ClientIdInUse naming the client id and the holder otherwise."""
        deadline = time.monotonic() + self.ttl_s
        waiting_logged = False
        while True:
            other = await asyncio.to_thread(self._take)
            if other is None:
                self.held = True
                return
            name, holder = other
            if time.monotonic() >= deadline:
                await asyncio.to_thread(self._release)
                raise ClientIdInUse(self._refusal(name, holder))
            if not waiting_logged:
                log.info("hub identity in use; waiting for it to expire",
                         extra={"lease": name, "holder": holder, "within_s": self.ttl_s})
                waiting_logged = True
            await asyncio.sleep(min(1.0, self.ttl_s / 5))

    async def run(self, stop: asyncio.Event) -> None:
        """Renew the leases every third of their time until `stop`; raise ClientIdInUse if
        another process took one meanwhile (this one could not renew it in time)."""
        failing = False
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl_s / 3)
            if stop.is_set():
                return
            try:
                other = await asyncio.to_thread(self._take)
            except SQLAlchemyError as error:
                if not failing:
                    log.warning("hub identity lease not renewed: %s",
                                str(error).splitlines()[0], extra={"leases": self.names})
                    failing = True
                continue
            failing = False
            if other is not None:
                self.held = False
                raise ClientIdInUse(self._refusal(*other))

    async def release(self) -> None:
        """Give the leases back (after the broker connection is closed)."""
        if self.held:
            self.held = False
            with contextlib.suppress(SQLAlchemyError):
                await asyncio.to_thread(self._release)

    def _take(self) -> tuple[str, str] | None:
        """Take or renew every lease; the first held by another, as (name, holder)."""
        for name in self.names:
            if self.store.try_lease(name, self.holder, self.ttl_s):
                continue
            other = self.store.lease_holder(name) or "(unknown)"
            if not (dead_here(other)
                    and self.store.take_over_lease(name, other, self.holder, self.ttl_s)):
                return name, other
            log.info("hub identity lease taken over from a process that is gone",
                     extra={"lease": name, "holder": other})
        return None

    def _release(self) -> None:
        for name in self.names:
            self.store.release_lease(name, self.holder)

    def _refusal(self, name: str, holder: str) -> str:
        what = (f"MQTT client id {self.mqtt.client_id!r}" if name.startswith("mqtt-client:")
                else f"MQTT username {self.mqtt.username!r}")
        return (f"{what} is in use by another hub process on this database ({holder}): give "
                "each hub process its own mqtt.client_id and broker account (README, "
                "\"Broker accounts\")")
