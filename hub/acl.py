"""`keyop hub acl -c hub.yaml --out DIR [--format acl-file|dynsec]`: broker accounts for Mosquitto.

One model, two renderings. `accounts()` lists every broker account hub.yaml implies with its
rules; `--format acl-file` (the default) writes a Mosquitto password file and `acl_file`, and
`--format dynsec` writes a config for Mosquitto's Dynamic Security plugin (`hub.dynsec`) with the
same accounts, secrets and rules.

Prefer dynsec whenever the broker ships the plugin (Debian's does), and above all when suppliers
connect from outside: Mosquitto 2.0's `acl_file` grants any SUBSCRIBE (`#`, `$SYS/#`, another
supplier's subtree) and only filters what it delivers, while the plugin checks the SUBSCRIBE
itself and answers "not authorized" in the SUBACK. The `acl_file` needs no plugin.

Accounts (MQTT usernames): the hub (`mqtt.username`, default its id), each gateway of
`gateways:` and each supplier of `suppliers:`. A name may belong to one account only: gateway
and supplier ids are separate realms in PACKET.md but share one namespace on the broker.

Rules (default deny: an account has exactly its own rules, and no rule holds `%u`/`%c`
patterns, so no username can widen anything):
- a gateway writes `keyop/v1/up/{id}/#` and reads `keyop/v1/down/{id}/#`;
- a supplier reads `keyop/v1/sup/{id}/#`;
- the hub reads `keyop/v1/up/#` (also as `$share/{mqtt.share_group}/...`), writes
  `keyop/v1/down/#` and `keyop/v1/sup/#`, and reads and writes its status topic.
  Nobody may subscribe to `#` or `$SYS/#`.

Secrets: an account's password is read from its `mqtt_password_file` (the hub's from
`mqtt.password_file`); when that is not given, or the file does not exist yet, a random one is
generated and written there (or to `DIR/secrets/`), mode 0600. No default passwords.
Password hashes use Mosquitto 2's PBKDF2-SHA512, 101 iterations, 12-byte salt, in both formats.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hub.config import ConfigError, HubConfig, hash_key, load_config, read_secret
from hub.mqtt import INFLIGHT_MAX
from sync import topics

log = logging.getLogger(__name__)

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd and mosquitto_ctrl 2.0 write
SALT_BYTES = 12  # Mosquitto 2.0 keeps exactly 12 salt bytes
# The files each `--format` writes into DIR, besides mosquitto.conf and secrets/.
OUTPUTS = {"acl-file": ("passwd", "acl"), "dynsec": ("dynamic-security.json",)}
FORMATS = tuple(OUTPUTS)

Access = Literal["read", "write", "readwrite"]


@dataclass(frozen=True, slots=True)
class Rule:
    """What an account may do with one topic filter: `read` is subscribe (and unsubscribe) and
    receive, `write` is publish."""

    access: Access
    topic: str
    # The filter may also be subscribed as `$share/{shared_group}/{topic}` (the hub's ingest).
    shared_group: str | None = None


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    kind: str  # "hub", "gateway" or "supplier"
    secret_file: Path
    rules: tuple[Rule, ...]


def pbkdf2(password: str, salt: bytes | None = None) -> tuple[bytes, bytes]:
    """(salt, digest) of Mosquitto 2's PBKDF2-SHA512; a fresh random salt unless given."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    return salt, hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)


def password_hash(password: str, salt: bytes | None = None) -> str:
    """A Mosquitto 2 password file hash (`$7$101$salt$hash`)."""
    salt, digest = pbkdf2(password, salt)
    return (f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def accounts(config: HubConfig, out: Path) -> list[Account]:
    """Every broker account hub.yaml implies, with its rules. Raises ConfigError on a clash."""
    hub_user = config.mqtt.username or config.hub.id
    topics.check_id("hub username", hub_user)
    prefix = topics.PREFIX
    found = [Account(
        hub_user, "hub",
        Path(config.mqtt.password_file) if config.mqtt.password_file
        else out / "secrets" / f"hub-{hub_user}.secret",
        (Rule("read", f"{prefix}/up/#", shared_group=config.mqtt.share_group),
         Rule("write", f"{prefix}/down/#"), Rule("write", f"{prefix}/sup/#"),
         Rule("readwrite", topics.hub_status())),
    )]
    for gateway, settings in config.gateways.items():
        topics.check_id("gateway", gateway)
        found.append(Account(
            gateway, "gateway",
            Path(settings.mqtt_password_file) if settings.mqtt_password_file
            else out / "secrets" / f"gateway-{gateway}.secret",
            (Rule("write", f"{prefix}/up/{gateway}/#"), Rule("read", f"{prefix}/down/{gateway}/#")),
        ))
    for supplier, rules in config.suppliers.items():
        topics.check_id("supplier", supplier)
        found.append(Account(
            supplier, "supplier",
            Path(rules.mqtt_password_file) if rules.mqtt_password_file
            else out / "secrets" / f"supplier-{supplier}.secret",
            (Rule("read", topics.sup_all(supplier)),),
        ))
    seen: dict[str, str] = {}
    for account in found:
        if account.username in seen:
            raise ConfigError(
                f"broker username {account.username!r} is both a {seen[account.username]} and "
                f"a {account.kind}: every account needs a name of its own")
        seen[account.username] = account.kind
    return found


def _secret_for(path: Path) -> tuple[str, bool]:
    """The secret in a file, or a new random one generated into it (True if new)."""
    if path.exists():
        return read_secret(path), False
    secret = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret, True


def credentials(found: Sequence[Account]) -> tuple[list[tuple[Account, str]], list[Path]]:
    """Each account with its password, and the secret files generated on the way."""
    paired: list[tuple[Account, str]] = []
    generated: list[Path] = []
    for account in found:
        secret, new = _secret_for(account.secret_file)
        if new:
            generated.append(account.secret_file)
        paired.append((account, secret))
    return paired, generated


def acl_text(found: Sequence[Account]) -> str:
    # Mosquitto 2.0's acl_file grants any SUBSCRIBE and checks deliveries against the real
    # topic, so `read` of a filter also covers its `$share/...` form: no extra line for it.
    lines = ["# keyop broker ACL, written by `keyop hub acl`. Default deny: an account may do",
             "# only what the lines under its name allow; there are no pattern lines.", ""]
    for account in found:
        lines.append(f"# {account.kind}")
        lines.append(f"user {account.username}")
        lines += [f"topic {rule.access} {rule.topic}" for rule in account.rules]
        lines.append("")
    return "\n".join(lines)


# Both formats: Mosquitto sends max_inflight_messages as its Receive Maximum, which bounds the
# hub's fan-out window (hub/mqtt.py); the default, 20, slows the fan-out.
BROKER_TUNING = (
    "# The hub keeps up to this many QoS 1 messages unacknowledged (Mosquitto's default: 20).",
    f"max_inflight_messages {INFLIGHT_MAX}",
)


def mosquitto_snippet(out: Path) -> str:
    return "\n".join([
        "# Include in mosquitto.conf (Mosquitto 2): authenticated accounts only. The files are",
        "# mode 0600: chown them to the user Mosquitto runs as (`user`, default mosquitto).",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out.resolve() / 'passwd'}",
        f"acl_file {out.resolve() / 'acl'}",
        *BROKER_TUNING,
        "",
    ])


def write(config: HubConfig, out: Path, fmt: str = "acl-file") -> list[Path]:
    """Write the broker files of `fmt` (OUTPUTS), DIR/mosquitto.conf to include, and any
    missing secret. Returns the secret files it generated."""
    # hub.dynsec builds on this module (its model and hashing): imported here, not at the top.
    from hub import dynsec

    if fmt not in FORMATS:
        raise ConfigError(f"broker file format {fmt!r}: expected one of {', '.join(FORMATS)}")
    found = accounts(config, out)
    out.mkdir(parents=True, exist_ok=True)
    paired, generated = credentials(found)
    generated += _api_keys(config, out)
    if fmt == "dynsec":
        config_file = out / OUTPUTS["dynsec"][0]
        _write_private(config_file, dynsec.config_text(paired))
        (out / "mosquitto.conf").write_text(dynsec.mosquitto_snippet(config_file))
    else:
        passwd = "".join(f"{account.username}:{password_hash(secret)}\n"
                         for account, secret in paired)
        _write_private(out / "passwd", passwd)
        _write_private(out / "acl", acl_text(found))
        (out / "mosquitto.conf").write_text(mosquitto_snippet(out))
    return generated


def _api_keys(config: HubConfig, out: Path) -> list[Path]:
    """API keys for suppliers that have none in hub.yaml: DIR/secrets/api-{id}.key (give it to
    the supplier) and DIR/api-keys.yaml (the hashes, to copy into hub.yaml)."""
    generated: list[Path] = []
    lines = ["# API key hashes for hub.yaml (suppliers.<id>.api_key_hash); the keys are in",
             "# secrets/api-<id>.key, to hand to each supplier.", "suppliers:"]
    for supplier, rules in config.suppliers.items():
        if rules.api_key_hash or rules.api_key_file:
            continue
        path = out / "secrets" / f"api-{supplier}.key"
        key, new = _secret_for(path)
        if new:
            generated.append(path)
        lines.append(f"  {supplier}: {{api_key_hash: \"{hash_key(key)}\"}}")
    if len(lines) > 3:
        (out / "api-keys.yaml").write_text("\n".join(lines) + "\n")
    return generated


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def main(config_path: str | Path, out: str | Path, fmt: str = "acl-file") -> int:
    """Exit 0 when written, 2 on a bad config."""
    try:
        config = load_config(config_path)
        generated = write(config, Path(out), fmt)
    except (ConfigError, topics.TopicError) as error:
        print(f"keyop hub acl: {error}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(f"{out}/{name}" for name in (*OUTPUTS[fmt], "mosquitto.conf")))
    for path in generated:
        print(f"generated secret: {path}")
    return 0
