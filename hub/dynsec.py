"""The broker accounts of `hub.acl` as a config for Mosquitto's Dynamic Security plugin.

Why this format: the plugin checks a SUBSCRIBE against the account's `subscribePattern` grants
and refuses what they do not cover with "not authorized" (0x87) in the SUBACK, so a supplier
asking for `#`, `$SYS/#` or another supplier's subtree is told no, instead of being granted a
subscription that Mosquitto 2.0's `acl_file` would merely starve.

The file follows Mosquitto 2.0.x (checked against 2.0.11 by tests/hub/test_hub_acl.py):
`defaultACLAccess` denies all four kinds of access; each account is one client with its own
role, bound to the account's one client id (`clientid`: a CONNECT with another is refused, so
no account can take over another's session); a client's `password`/`salt` are base64 of the
PBKDF2-SHA512 digest (64 bytes) and salt (12 bytes) with `iterations`. A rule maps to ACL
entries as follows: `read` is `subscribePattern` + `unsubscribePattern` +
`publishClientReceive`, `write` is `publishClientSend`. Entries name each account's topics
literally (no username substitution), so a username cannot widen them. The plugin compares a
wildcard SUBSCRIBE with a `subscribePattern` level by level (`keyop/v1/sup/+/events/#` is not
within `keyop/v1/sup/bolt/#`), and a `$share/{group}/...` filter with its prefix, hence the
hub's extra grant for its share group.

There is no admin client: nobody may publish to `$CONTROL/dynamic-security/#` (default deny),
so the file stays the one source of truth. To change accounts, run `keyop hub acl --format
dynsec` again and restart Mosquitto (2.0.11 does not reload the file on SIGHUP).
"""

from __future__ import annotations

import base64
import glob
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub.acl import BROKER_TUNING, PBKDF2_ITERATIONS, Account, Rule, pbkdf2


def _installed_plugin() -> str:
    """Where the `mosquitto` package put the plugin (Debian/Ubuntu: a multiarch folder)."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    return found[0] if found else "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


PLUGIN = _installed_plugin()

DEFAULT_ACL_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": False,
}


def acl_entries(rule: Rule) -> list[dict[str, Any]]:
    """The Dynamic Security ACL entries that grant one rule, and nothing more."""
    granted: list[tuple[str, str]] = []
    if rule.access in ("write", "readwrite"):
        granted.append(("publishClientSend", rule.topic))
    if rule.access in ("read", "readwrite"):
        granted.append(("publishClientReceive", rule.topic))
        filters = [rule.topic]
        if rule.shared_group:
            filters.append(f"$share/{rule.shared_group}/{rule.topic}")
        for topic_filter in filters:
            granted += [("subscribePattern", topic_filter), ("unsubscribePattern", topic_filter)]
    return [{"acltype": acltype, "topic": topic, "allow": True} for acltype, topic in granted]


def client_password(password: str, salt: bytes | None = None) -> dict[str, Any]:
    """The `password`, `salt` and `iterations` fields of a client (a fresh salt unless given)."""
    salt, digest = pbkdf2(password, salt)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": PBKDF2_ITERATIONS,
    }


def config(credentials: Sequence[tuple[Account, str]]) -> dict[str, Any]:
    """The plugin's config: one client and one role per account, default deny."""
    clients: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    for account, secret in credentials:
        # Role names are a namespace of their own; the kind keeps them readable in logs.
        rolename = f"{account.kind}-{account.username}"
        roles.append({
            "rolename": rolename,
            "acls": [entry for rule in account.rules for entry in acl_entries(rule)],
        })
        clients.append({
            "username": account.username,
            # The plugin refuses this account's CONNECT with any other client id.
            "clientid": account.client_id,
            "textname": f"keyop {account.kind}",
            # Explicit, so an account never depends on the plugin's default for a new client.
            "disabled": False,
            **client_password(secret),
            "roles": [{"rolename": rolename}],
        })
    return {
        "defaultACLAccess": DEFAULT_ACL_ACCESS,
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def config_text(credentials: Sequence[tuple[Account, str]]) -> str:
    return json.dumps(config(credentials), indent=2) + "\n"


def mosquitto_snippet(config_file: Path, plugin: str = PLUGIN) -> str:
    return "\n".join([
        "# Include in mosquitto.conf (Mosquitto 2): authenticated accounts only, checked by the",
        "# Dynamic Security plugin (elsewhere than Debian, point `plugin` at your build's",
        "# mosquitto_dynamic_security.so). The config is mode 0600: chown it to the user",
        "# Mosquitto runs as (`user`, default mosquitto). Do not combine with password_file or",
        "# acl_file.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {plugin}",
        f"plugin_opt_config_file {config_file.resolve()}",
        *BROKER_TUNING,
        "",
    ])
