"""`keyop init gateway|hub|examples [DIR]`: starter configuration for a new site.

`gateway` writes a commented gateway.yaml and a mapping to edit, `hub` a commented hub.yaml;
both pass `keyop check` as written. They point state at the box's layout (docs/operations.md):
configuration in /etc/keyop, secrets in /etc/keyop/secrets, state in /var/lib/keyop, each
overridable by a flag or `KEYOP_CONFIG_DIR`, `KEYOP_SECRETS_DIR`, `KEYOP_STATE_DIR`.
`examples` copies the example configs that run against the simulators.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from cli.exits import EXIT_FAILED, EXIT_OK
from sync.packet import ID_PATTERN

TEMPLATES = Path(__file__).resolve().parent / "templates"
FILES = {"gateway": ("gateway.yaml", "mapping.yaml"), "hub": ("hub.yaml",)}


@dataclass(frozen=True, slots=True)
class Layout:
    """Where keyop keeps things on a box."""

    config_dir: Path
    secrets_dir: Path
    state_dir: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Layout:
        env = os.environ if environ is None else environ
        config = Path(env.get("KEYOP_CONFIG_DIR") or "/etc/keyop")
        return cls(config, Path(env.get("KEYOP_SECRETS_DIR") or config / "secrets"),
                   Path(env.get("KEYOP_STATE_DIR") or "/var/lib/keyop"))


def add_init_command(sub: Any) -> None:
    """Register `keyop init ...` on the CLI's subparsers."""
    init = sub.add_parser("init", help="write a commented starter configuration")
    init.add_argument("what", choices=["gateway", "hub", "examples"])
    init.add_argument("dir", nargs="?", type=Path, default=None,
                      help="folder to write (default: $KEYOP_CONFIG_DIR or /etc/keyop; "
                           "a gateway: that folder/GATEWAY_ID)")
    init.add_argument("--id", default="edge-01", help="gateway: its id (default edge-01)")
    init.add_argument("--state-dir", type=Path, default=None,
                      help="state folder (default: $KEYOP_STATE_DIR or /var/lib/keyop)")
    init.add_argument("--secrets-dir", type=Path, default=None,
                      help="secrets folder (default: $KEYOP_SECRETS_DIR or CONFIG/secrets)")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    layout = Layout.from_env()
    if not re.match(ID_PATTERN, args.id):
        print(f"keyop init: --id {args.id!r}: expected lowercase letters, digits and '-' "
              f"({ID_PATTERN})", file=sys.stderr)
        return EXIT_FAILED
    folder: Path = args.dir or (layout.config_dir / args.id if args.what == "gateway"
                                else layout.config_dir)
    if args.what == "examples":
        import config as examples

        sources = {name: (examples.DIR / name).read_text(encoding="utf-8")
                   for name in examples.FILES}
    else:
        values = {
            "gateway_id": args.id, "instance": folder.name,
            "config": str(folder / FILES[args.what][0]), "config_dir": str(folder),
            "state_dir": str(args.state_dir or layout.state_dir),
            "secrets_dir": str(args.secrets_dir or layout.secrets_dir),
        }
        sources = {name: Template((TEMPLATES / name).read_text(encoding="utf-8"))
                   .substitute(values) for name in FILES[args.what]}
    existing = [name for name in sources if (folder / name).exists()]
    if existing and not args.force:
        print(f"keyop init: {folder}: {', '.join(existing)} exist(s); nothing written "
              "(--force overwrites)", file=sys.stderr)
        return EXIT_FAILED
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (folder / name).write_text(text, encoding="utf-8")
        print(folder / name)
    return EXIT_OK
