"""`keyop hub [run|acl] -c hub.yaml`: the collaboration hub and its broker accounts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK


def add_hub_command(sub: Any) -> None:
    """Register `keyop hub ...` on the CLI's subparsers."""
    hub = sub.add_parser("hub", help="run the collaboration hub")
    hub.add_argument("hub_command", nargs="?", choices=["run", "acl", "check", "user"],
                     default="run",
                     help="run: the hub; acl: write Mosquitto broker accounts and API keys; "
                          "check: validate hub.yaml, its includes and key files; "
                          "user add NAME: a board user's hub.yaml entry (password on stdin)")
    hub.add_argument("user_action", nargs="?", choices=["add"], help=argparse.SUPPRESS)
    hub.add_argument("user_name", nargs="?", help=argparse.SUPPRESS)
    who = hub.add_mutually_exclusive_group()
    who.add_argument("--supplier", help="user add: the supplier the user belongs to")
    who.add_argument("--plant", action="store_true",
                     help="user add: the plant's coordinator (every supplier, edge health)")
    hub.add_argument("-c", "--config", required=True, type=Path, help="hub.yaml")
    hub.add_argument("--out", type=Path, default=Path("broker-acl"),
                     help="acl: folder for the broker files and generated secrets")
    hub.add_argument("--format", choices=["dynsec", "acl-file"], default="dynsec",
                     help="acl: a Dynamic Security plugin config (default; binds client ids, "
                          "refuses a forbidden SUBSCRIBE in the SUBACK), or passwd + acl_file")
    hub.add_argument("--add-key", action="append", default=[], metavar="SUPPLIER",
                     help="acl: make one more API key for SUPPLIER (rotation: both work)")
    hub.set_defaults(func=cmd_hub)


def cmd_hub(args: argparse.Namespace) -> int:
    from common.logs import setup_logging
    from hub.service import main as hub_main

    if args.hub_command == "run" or args.hub_command is None:
        setup_logging(args.log_level, fmt=args.log_format)
        return hub_main(args.config)
    if args.hub_command == "user":
        from cli.board_user import add_user

        return add_user(args.config, args.user_action, args.user_name, args.supplier,
                        args.plant)
    if args.hub_command == "acl":
        from hub.acl import main as acl_main

        return acl_main(args.config, args.out, args.format, tuple(args.add_key))
    if args.hub_command == "check":
        return _check(args.config)
    return EXIT_FAILED


def _check(path: Path) -> int:
    """`keyop hub check`: hub.yaml with its includes, and every API key file, as the hub
    start reads them."""
    from hub.api.auth import Keys
    from hub.config import HubConfigError, load_config

    try:
        config = load_config(path)
        keys = Keys(config)
    except HubConfigError as error:
        print(f"keyop hub check: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: ok ({len(config.suppliers)} supplier(s), {keys.count()} API key(s))")
    return EXIT_OK
