"""`keyop hub acl -c hub.yaml --out DIR [--format dynsec|acl-file]`: broker accounts for Mosquitto.

One model, two renderings. `accounts()` lists every broker account hub.yaml implies with its
client id and rules; `--format dynsec` (the default) writes a config for Mosquitto's Dynamic
Security plugin (`hub.dynsec`), and `--format acl-file` a Mosquitto password file and
`acl_file`, with the same accounts, secrets and rules.

What each format enforces (each checked against Mosquitto 2.0.11 by tests/hub/test_hub_acl.py):
- dynsec: each account's client id is bound to it (a CONNECT with another is refused), and a
  SUBSCRIBE outside the account's grants is refused in the SUBACK: `#`, `$SYS/#`, another
  supplier's subtree, and above all the hub's shared subscription, so no other account can
  join the hub's share group and take a share of the gateways' packets.
- acl-file: `use_username_as_clientid`: the broker replaces every client id with the username,
  so no account can take over another's session. But Mosquitto 2.0's `acl_file` grants any
  SUBSCRIBE and only filters deliveries: an account that joins the hub's share group is handed
  its turn of the gateways' packets, which the broker then delivers to nobody: the hub misses
  them until the edges resend. Only for brokers whose account holders are all trusted.
Both set `message_size_limit` (MESSAGE_SIZE_LIMIT).

Accounts (MQTT usernames): the hub (`mqtt.username`, default its id), the other hub processes
(`mqtt.worker_accounts`), each gateway of `gateways:` and each supplier of `suppliers:`. A name
may belong to one account only: gateway and supplier ids are separate realms in docs/packet.md but
share one namespace on the broker. Client ids (`Account.client_id`, bound by dynsec): the hub's
`mqtt.client_id`, a worker's `client_id` (default its username), `keyop-edge-{id}` for a
gateway (what sync/uplink.py sends), the supplier's id for a supplier.

Rules (default deny: an account has exactly its own rules, and no rule holds `%u`/`%c`
patterns, so no username can widen anything):
- a gateway writes `keyop/v1/up/{id}/#` and reads `keyop/v1/down/{id}/#`;
- a supplier reads `keyop/v1/sup/{id}/#` and the hub's status, `keyop/v1/hub/status`;
- the hub reads `keyop/v1/up/#` (also as `$share/{mqtt.share_group}/...`), writes
  `keyop/v1/down/#` and `keyop/v1/sup/#`, and reads and writes its status topic.
  Nobody may subscribe to `#` or `$SYS/#`.

Secrets: an account's password is read from its `mqtt_password_file` (the hub's from
`mqtt.password_file`); when that is not given, or the file does not exist yet, a random one is
generated and written there (or to `DIR/secrets/`), mode 0600. A secret file read back must be
a regular file (not a symbolic link) owned by the user running the command, with no access for
group or others. Every file is created with O_EXCL | O_NOFOLLOW (outputs through a fresh
temporary file renamed over the old one), so a planted symbolic link is never written through.
No default passwords. Password hashes use Mosquitto 2's PBKDF2-SHA512, 101 iterations, 12-byte
salt, in both formats.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hub.config import HubConfig, HubConfigError, check_private, load_config
from hub.mqtt import INFLIGHT_MAX
from sync import topics
from sync.packet import MAX_EVENT_BYTES

log = logging.getLogger(__name__)

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd and mosquitto_ctrl 2.0 write
SALT_BYTES = 12  # Mosquitto 2.0 keeps exactly 12 salt bytes
# The files each `--format` writes into DIR, besides mosquitto.conf and secrets/.
OUTPUTS = {"dynsec": ("dynamic-security.json",), "acl-file": ("passwd", "acl")}
FORMATS = tuple(OUTPUTS)
DEFAULT_FORMAT = "dynsec"
# The client id sync/uplink.py's UplinkConfig sends for a gateway (hub/ may not import it).
EDGE_CLIENT_ID = "keyop-edge-{gateway}"
# Every message keyop publishes carries at most MAX_EVENT_BYTES of payload: an event, and a
# batch of events, from the edge (sync/uplink.py) and from the fan-out (hub/fanout.py); acks,
# states and statuses are far smaller. The broker refuses larger payloads; the headroom lets a
# slightly oversized event (a supplier copy whose `station_names` are longer than the paths
# they replace; an edge event over the cap) still reach its reader, where the hub dead-letters
# it with its reason instead of the broker dropping it unseen.
MESSAGE_SIZE_LIMIT = 2 * MAX_EVENT_BYTES

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
    # The one client id this account may connect with (bound by dynsec; with acl-file the
    # broker uses the username instead).
    client_id: str


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
    """Every broker account hub.yaml implies, with its rules. Raises HubConfigError on a clash."""
    mqtt = config.mqtt
    hub_user = mqtt.username or config.hub.id
    prefix = topics.PREFIX
    hub_rules = (Rule("read", f"{prefix}/up/#", shared_group=mqtt.share_group),
                 Rule("write", f"{prefix}/down/#"), Rule("write", f"{prefix}/sup/#"),
                 Rule("readwrite", topics.hub_status()))
    hubs = [(hub_user, mqtt.password_file, mqtt.client_id)]
    hubs += [(name, worker.password_file, worker.client_id or name)
             for name, worker in mqtt.worker_accounts.items()]
    found: list[Account] = []
    for username, password_file, client_id in hubs:
        topics.check_id("hub username", username)
        found.append(Account(
            username, "hub",
            Path(password_file) if password_file else out / "secrets" / f"hub-{username}.secret",
            hub_rules, client_id,
        ))
    for gateway, settings in config.gateways.items():
        topics.check_id("gateway", gateway)
        found.append(Account(
            gateway, "gateway",
            Path(settings.mqtt_password_file) if settings.mqtt_password_file
            else out / "secrets" / f"gateway-{gateway}.secret",
            (Rule("write", f"{prefix}/up/{gateway}/#"), Rule("read", f"{prefix}/down/{gateway}/#")),
            EDGE_CLIENT_ID.format(gateway=gateway),
        ))
    for supplier, rules in config.suppliers.items():
        topics.check_id("supplier", supplier)
        found.append(Account(
            supplier, "supplier",
            Path(rules.mqtt_password_file) if rules.mqtt_password_file
            else out / "secrets" / f"supplier-{supplier}.secret",
            (Rule("read", topics.sup_all(supplier)), Rule("read", topics.hub_status())),
            supplier,
        ))
    _check_unique(found)
    return found


def _check_unique(found: Sequence[Account]) -> None:
    """One account per username and per client id: a shared client id would let two accounts
    take each other's sessions."""
    keys: tuple[tuple[Callable[[Account], str], str], ...] = (
        (lambda a: a.username, "broker username"), (lambda a: a.client_id, "client id"))
    for key, what in keys:
        seen: dict[str, Account] = {}
        for account in found:
            other = seen.setdefault(key(account), account)
            if other is account:
                continue
            owners = (f"both a {other.kind} and a {account.kind}" if other.kind != account.kind
                      else f"used by two {account.kind} accounts")
            raise HubConfigError(f"{what} {key(account)!r} is {owners} ({other.username}, "
                              f"{account.username}): every account needs one of its own")


def _secret_for(path: Path) -> tuple[str, bool]:
    """The secret in a file, or a new random one generated into it (True if new)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32)
        _private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as error:
            raise HubConfigError(f"{path}: cannot create secret file: {error.strerror}") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")
        return secret, True
    except OSError as error:
        # ELOOP: the last component is a symbolic link.
        hint = " (a symbolic link: give the file itself)" if os.path.islink(path) else ""
        raise HubConfigError(f"{path}: cannot open secret file{hint}: {error.strerror}") from None
    with os.fdopen(fd, encoding="utf-8") as handle:
        check_private(path, os.fstat(handle.fileno()))
        text = handle.read()
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(secret) < 16:
        raise HubConfigError(f"{path}: secret is shorter than 16 characters")
    return secret, False


def _private_dir(path: Path) -> None:
    """Create a folder for secrets (0700) if it is missing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


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
    f"# keyop's messages carry at most {MAX_EVENT_BYTES} bytes (the packet cap); a larger payload",
    "# is dropped, never delivered (MQTT 5: answered 0x95, packet too large).",
    f"message_size_limit {MESSAGE_SIZE_LIMIT}",
)


def mosquitto_snippet(out: Path) -> str:
    return "\n".join([
        "# Include in mosquitto.conf (Mosquitto 2): authenticated accounts only. The files are",
        "# mode 0600: chown them to the user Mosquitto runs as (`user`, default mosquitto).",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out.resolve() / 'passwd'}",
        f"acl_file {out.resolve() / 'acl'}",
        "# Every session is keyed by its username, whatever client id the client sends: no",
        "# account can take over another's session.",
        "use_username_as_clientid true",
        *BROKER_TUNING,
        "",
    ])


def write(config: HubConfig, out: Path, fmt: str = DEFAULT_FORMAT,
          add_keys: tuple[str, ...] = ()) -> list[Path]:
    """Write the broker files of `fmt` (OUTPUTS), DIR/mosquitto.conf to include, any missing
    secret, and the API keys (hub/api_keys.py; one more for each supplier in `add_keys`).
    Returns the secret files it generated."""
    # hub.dynsec and hub.api_keys build on this module (its model, hashing and secret
    # files): imported here, not at the top.
    from hub import api_keys, dynsec

    if fmt not in FORMATS:
        raise HubConfigError(f"broker file format {fmt!r}: expected one of {', '.join(FORMATS)}")
    found = accounts(config, out)
    out.mkdir(parents=True, exist_ok=True)
    paired, generated = credentials(found)
    generated += api_keys.write(config, out, add_keys)
    if fmt == "dynsec":
        config_file = out / OUTPUTS["dynsec"][0]
        _write_private(config_file, dynsec.config_text(paired))
        _write_private(out / "mosquitto.conf", dynsec.mosquitto_snippet(config_file), 0o644)
    else:
        passwd = "".join(f"{account.username}:{password_hash(secret)}\n"
                         for account, secret in paired)
        _write_private(out / "passwd", passwd)
        _write_private(out / "acl", acl_text(found))
        _write_private(out / "mosquitto.conf", mosquitto_snippet(out), 0o644)
    return generated


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` with `text` through a new temporary file (O_EXCL | O_NOFOLLOW: never a
    file or link planted there); the rename replaces a link at `path` itself, never its
    target."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as error:
        raise HubConfigError(f"{tmp}: cannot create: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def main(config_path: str | Path, out: str | Path, fmt: str = DEFAULT_FORMAT,
         add_keys: tuple[str, ...] = ()) -> int:
    """Exit 0 when written, 2 on a bad config."""
    try:
        # Without its includes: hub.yaml may include the api-keys.yaml this writes.
        config = load_config(config_path, includes=False)
        unknown = sorted(set(add_keys) - set(config.suppliers))
        if unknown:
            raise HubConfigError(f"--add-key: unknown supplier {', '.join(unknown)}")
        generated = write(config, Path(out), fmt, add_keys)
    except (HubConfigError, topics.TopicError) as error:
        print(f"keyop hub acl: {error}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(f"{out}/{name}" for name in (*OUTPUTS[fmt], "mosquitto.conf",
                                                           "api-keys.yaml")))
    for path in generated:
        print(f"generated secret: {path}")
    return 0
