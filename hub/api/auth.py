"""API credentials: per-supplier API keys (Bearer), stored as hashes; an admin key for the
hub's own operations. hub/api/guard.py checks them on every request; routes depend on
`supplier` or `admin`."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hub.config import HubConfig, HubConfigError, hash_key, read_secret

ADMIN = "*admin*"  # never a supplier id (ids match sync.packet.ID_PATTERN)

_bearer = HTTPBearer(auto_error=False, description="the supplier's API key")


class Keys:
    """Key hash -> principal (a supplier id, or ADMIN). An account may have several keys
    (`api_key_hashes`): each works until it is removed from hub.yaml, for rotation.

    Raises HubConfigError when two accounts have the same key (naming both): a key must say who
    is calling, and a supplier must never hold the admin's.
    """

    def __init__(self, config: HubConfig) -> None:
        self._by_hash: dict[str, str] = {}
        where: dict[str, str] = {}
        found: list[tuple[str, str, str]] = []  # (digest, principal, config field)
        for name, supplier in config.suppliers.items():
            if supplier.api_key_hash:
                found.append((supplier.api_key_hash, name, f"suppliers.{name}.api_key_hash"))
            if supplier.api_key_file:
                found.append((hash_key(read_secret(supplier.api_key_file)), name,
                              f"suppliers.{name}.api_key_file"))
            found += [(digest, name, f"suppliers.{name}.api_key_hashes.{i}")
                      for i, digest in enumerate(supplier.api_key_hashes)]
        if config.api.admin_key_hash:
            found.append((config.api.admin_key_hash, ADMIN, "api.admin_key_hash"))
        found += [(digest, ADMIN, f"api.admin_key_hashes.{i}")
                  for i, digest in enumerate(config.api.admin_key_hashes)]
        if config.api.admin_key_file:
            found.append((hash_key(read_secret(config.api.admin_key_file)), ADMIN,
                          "api.admin_key_file"))
        for digest, who, field in found:
            other = self._by_hash.get(digest)
            if other is not None and other != who:
                raise HubConfigError(f"{where[digest]} and {field}: the same API key for two "
                                  "accounts (give each account its own key)")
            self._by_hash[digest] = who
            where.setdefault(digest, field)

    def count(self) -> int:
        """How many distinct keys are known."""
        return len(self._by_hash)

    def principal(self, key: str) -> str | None:
        digest = hash_key(key)
        found = self._by_hash.get(digest)
        # The dict lookup is on a hash of the key; compare again in constant time anyway.
        if found is not None and any(hmac.compare_digest(digest, d) for d in self._by_hash):
            return found
        return None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


async def principal(request: Request,
                    _credentials: Annotated[HTTPAuthorizationCredentials | None,
                                            Depends(_bearer)]) -> str:
    """Who is calling, as hub/api/guard.py found before the body was read (the dependency
    on the bearer scheme documents it in OpenAPI)."""
    found = getattr(request.state, "principal", None)
    if found is None:
        raise _unauthorized("credentials required (Authorization: Bearer <API key>)")
    return str(found)


async def supplier(who: Annotated[str, Depends(principal)]) -> str:
    """The calling supplier; the admin key is not a supplier (403)."""
    if who == ADMIN:
        raise HTTPException(status_code=403, detail="the admin key reads no supplier data")
    return who


async def admin(who: Annotated[str, Depends(principal)]) -> str:
    if who != ADMIN:
        raise HTTPException(status_code=403, detail="admin key required")
    return who
