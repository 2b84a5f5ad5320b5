"""`keyop hub user add NAME --supplier ID | --plant -c hub.yaml`: a progress board user.

Reads the password from standard input (asked twice on a terminal, never echoed) and prints
the user's entry for hub.yaml's `board.users`, with its scrypt hash (hub/board/passwords.py):
the password itself is written nowhere.
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

from cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from hub.board.passwords import hash_password
from hub.config import HubConfigError, load_config

MIN_LENGTH = 10


def _password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            print("keyop hub user add: the two passwords differ", file=sys.stderr)
            return None
        return first
    return sys.stdin.readline().rstrip("\r\n")


def add_user(config_path: Path, action: str | None, name: str | None, supplier: str | None,
             plant: bool) -> int:
    if action != "add" or not name:
        print("usage: keyop hub user add NAME (--supplier ID | --plant) -c hub.yaml",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        config = load_config(config_path)
    except HubConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIG
    if not plant and supplier not in config.suppliers:
        known = ", ".join(sorted(config.suppliers)) or "none"
        print(f"keyop hub user add: --supplier {supplier!r} is not in {config_path} "
              f"(known: {known}); or --plant for the coordinator", file=sys.stderr)
        return EXIT_FAILED
    password = _password()
    if password is None:
        return EXIT_FAILED
    if len(password) < MIN_LENGTH:
        print(f"keyop hub user add: the password needs {MIN_LENGTH} characters or more",
              file=sys.stderr)
        return EXIT_FAILED
    side = "plant: true" if plant else f"supplier: {supplier}"
    print(f"# hub.yaml, under board: users:\n    {json.dumps(name)}: "
          f"{{{side}, password_hash: \"{hash_password(password)}\"}}")
    return EXIT_OK
