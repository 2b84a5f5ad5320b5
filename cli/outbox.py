"""`keyop outbox stats|export|purge -c gateway.yaml`: the outbox for the person on site.

- `stats` prints one JSON object: pending packets and bytes, first/last pending sequence, the
  epoch, the bounds and policy, the file size and every recorded gap. Safe while the gateway
  runs (a read beside its writes).
- `export` writes every pending packet as JSON lines (stdout or `--out FILE`), oldest first, in
  chunks, so a million-packet backlog does not fill memory. Safe while the gateway runs.
- `purge` deletes every pending packet and records the loss: a gap row per deleted range that
  the hub receives when the gateway is back, plus the durable gap record. It asks for the
  gateway id as confirmation (or `--yes`) and refuses while the gateway runs (the outbox has one
  writer: two would collide on sequence numbers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, print_problems


def add_outbox_command(sub: Any) -> None:
    """Register `keyop outbox ...` on the CLI's subparsers."""
    outbox = sub.add_parser("outbox", help="inspect, export or purge the gateway's outbox")
    actions = outbox.add_subparsers(dest="outbox_command", required=True)
    for name, text in (("stats", "pending packets, bytes, bounds and gaps as JSON"),
                       ("export", "pending packets as JSON lines, oldest first"),
                       ("purge", "delete every pending packet, recording a gap")):
        action = actions.add_parser(name, help=text)
        action.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
        if name == "export":
            action.add_argument("--out", type=Path, default=None,
                                help="write here instead of stdout")
        if name == "purge":
            action.add_argument("--yes", action="store_true",
                                help="do not ask for confirmation")
            action.add_argument("--reason", default="purged by operator",
                                help="the reason the gap record carries")
    outbox.set_defaults(func=cmd_outbox)


def cmd_outbox(args: argparse.Namespace) -> int:
    from edge_store import OutboxError
    from gateway.config import load_gateway_config
    from gateway.runtime import open_outbox
    from mapping.errors import MappingError

    try:
        config = load_gateway_config(args.config)
    except MappingError as error:
        print_problems(error)
        return EXIT_CONFIG
    if not config.outbox_path.exists():
        print(f"keyop outbox: no outbox at {config.outbox_path}", file=sys.stderr)
        return EXIT_FAILED
    command = args.outbox_command
    try:
        # stats/export read beside a running gateway: no lock, no corruption check (a
        # corrupt file is the daemon's to move aside, at its start).
        outbox = open_outbox(config, _compiled(config), exclusive=command == "purge",
                             check=False)
    except OutboxError as error:
        print(f"keyop outbox: {error}", file=sys.stderr)
        return EXIT_FAILED
    with outbox:
        if command == "stats":
            print(json.dumps(dataclasses.asdict(outbox.stats()), indent=2))
            return EXIT_OK
        if command == "export":
            if args.out is None:
                count = _export(outbox, sys.stdout)
            else:
                with args.out.open("w") as out:
                    count = _export(outbox, out)
            print(f"exported {count} packet(s)", file=sys.stderr)
            return EXIT_OK
        stats = outbox.stats()
        if stats.pending == 0:
            print("keyop outbox: nothing pending, nothing to purge")
            return EXIT_OK
        if not args.yes:
            print(f"This deletes {stats.pending} pending packet(s) "
                  f"(seq {stats.first_pending_seq}..{stats.last_pending_seq}) of "
                  f"{config.source} that the hub has not acknowledged. They are lost; a gap "
                  "record tells the hub.", file=sys.stderr)
            print(f"Type the gateway id ({config.gateway_id}) to confirm: ", end="",
                  file=sys.stderr, flush=True)
            answer = sys.stdin.readline()
            if answer.strip() != config.gateway_id:
                print("keyop outbox: not confirmed, nothing deleted", file=sys.stderr)
                return EXIT_FAILED
        evictions = outbox.purge(args.reason)
        print(json.dumps({"purged": sum(e.count for e in evictions),
                          "ranges": [[e.first, e.last] for e in evictions],
                          "reason": args.reason}))
        return EXIT_OK


def _export(outbox: Any, out: TextIO) -> int:
    count = 0
    for row in outbox.export():
        out.write(row.body.decode())
        out.write("\n")
        count += 1
    return count


def _compiled(config: Any) -> Any:
    """The mapping, for the gap records' equipment path and time zone; None if unreadable."""
    from mapping.errors import MappingError
    from mapping.load import load_mapping

    try:
        return load_mapping(config.mapping_path)[1]
    except (MappingError, OSError):
        return None
