"""`keyop hub acl -c hub.yaml --out DIR`: Mosquitto password and ACL files for every account.

Accounts (MQTT usernames): the hub (`mqtt.username`, default its id), each gateway of
`gateways:` and each supplier of `suppliers:`. A name may belong to one account only: gateway
and supplier ids are separate realms in PACKET.md but share one namespace on the broker.

ACL (default deny: an account has exactly the lines under its name, and no `pattern` lines
exist, so no username can widen anything):
- a gateway writes `keyop/v1/up/{id}/#` and reads `keyop/v1/down/{id}/#`;
- a supplier reads `keyop/v1/sup/{id}/#`;
- the hub reads `keyop/v1/up/#`, writes `keyop/v1/down/#` and `keyop/v1/sup/#`, and reads and
  writes its status topic. Nobody may subscribe to `#` or `$SYS/#`.

Secrets: an account's password is read from its `mqtt_password_file` (the hub's from
`mqtt.password_file`); when that is not given, or the file does not exist yet, a random one is
generated and written there (or to `DIR/secrets/`), mode 0600. No default passwords.
Password hashes use Mosquitto 2's format: `$7$` = PBKDF2-SHA512, 101 iterations, 12-byte salt.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from hub.config import ConfigError, HubConfig, hash_key, load_config, read_secret
from sync import topics

log = logging.getLogger(__name__)

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
SALT_BYTES = 12


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    kind: str  # "hub", "gateway" or "supplier"
    secret_file: Path
    rules: tuple[tuple[str, str], ...]  # (access, topic filter)


def password_hash(password: str, salt: bytes | None = None) -> str:
    """A Mosquitto 2 password file hash (`$7$101$salt$hash`)."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
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
        (("read", f"{prefix}/up/#"), ("write", f"{prefix}/down/#"),
         ("write", f"{prefix}/sup/#"), ("readwrite", topics.hub_status())),
    )]
    for gateway, settings in config.gateways.items():
        topics.check_id("gateway", gateway)
        found.append(Account(
            gateway, "gateway",
            Path(settings.mqtt_password_file) if settings.mqtt_password_file
            else out / "secrets" / f"gateway-{gateway}.secret",
            (("write", f"{prefix}/up/{gateway}/#"), ("read", f"{prefix}/down/{gateway}/#")),
        ))
    for supplier, rules in config.suppliers.items():
        topics.check_id("supplier", supplier)
        found.append(Account(
            supplier, "supplier",
            Path(rules.mqtt_password_file) if rules.mqtt_password_file
            else out / "secrets" / f"supplier-{supplier}.secret",
            (("read", topics.sup_all(supplier)),),
        ))
    seen: dict[str, str] = {}
    for account in found:
        if account.username in seen:
            raise ConfigError(
                f"broker username {account.username!r} is both a {seen[account.username]} and "
                f"a {account.kind}: every account needs a name of its own")
        seen[account.username] = account.kind
    return found


def _secret_for(account: Account) -> tuple[str, bool]:
    """The account's password, read from its file or generated into it (True if new)."""
    if account.secret_file.exists():
        return read_secret(account.secret_file), False
    secret = secrets.token_urlsafe(32)
    account.secret_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(account.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret, True


def acl_text(found: list[Account]) -> str:
    lines = ["# keyop broker ACL, written by `keyop hub acl`. Default deny: an account may do",
             "# only what the lines under its name allow; there are no pattern lines.", ""]
    for account in found:
        lines.append(f"# {account.kind}")
        lines.append(f"user {account.username}")
        lines += [f"topic {access} {topic}" for access, topic in account.rules]
        lines.append("")
    return "\n".join(lines)


def mosquitto_snippet(out: Path) -> str:
    return "\n".join([
        "# Include in mosquitto.conf (Mosquitto 2): authenticated accounts only. The files are",
        "# mode 0600: chown them to the user Mosquitto runs as (`user`, default mosquitto).",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out.resolve() / 'passwd'}",
        f"acl_file {out.resolve() / 'acl'}",
        "",
    ])


def write(config: HubConfig, out: Path) -> list[Path]:
    """Write DIR/passwd, DIR/acl and DIR/mosquitto.conf (and any generated secret)."""
    found = accounts(config, out)
    out.mkdir(parents=True, exist_ok=True)
    generated: list[Path] = []
    passwd_lines = []
    for account in found:
        secret, new = _secret_for(account)
        if new:
            generated.append(account.secret_file)
        passwd_lines.append(f"{account.username}:{password_hash(secret)}")
    generated += _api_keys(config, out)
    _write_private(out / "passwd", "\n".join(passwd_lines) + "\n")
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
        key, new = _secret_for(Account(supplier, "supplier", path, ()))
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


def main(config_path: str | Path, out: str | Path) -> int:
    """Exit 0 when written, 2 on a bad config."""
    try:
        config = load_config(config_path)
        generated = write(config, Path(out))
    except (ConfigError, topics.TopicError) as error:
        print(f"keyop hub acl: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}/passwd, {out}/acl, {out}/mosquitto.conf")
    for path in generated:
        print(f"generated secret: {path}")
    return 0
