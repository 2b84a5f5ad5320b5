"""`keyop`: the command line of the edge daemon, the hub, the authoring tools and benchmarks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cli.bench import add_bench_command
from cli.commands import cmd_check, cmd_demo, cmd_record, cmd_replay, cmd_run, cmd_schema
from cli.hub import add_hub_command
from cli.init import add_init_command
from cli.outbox import add_outbox_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyop", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", default="auto", choices=["auto", "text", "json"],
                        help="text lines (auto: without timestamps under journald) or JSON "
                             "lines")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the edge gateway")
    run.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    run.set_defaults(func=cmd_run)

    add_hub_command(sub)
    add_init_command(sub)

    check = sub.add_parser(
        "check", help="check mapping files (or gateway.yaml files)",
        description="Check mapping files, or gateway.yaml files (then the mapping they name), "
        "without connecting to any device: every problem is printed as file:line:col: message "
        "on stderr, warnings as file:line:col: warning: message. Exit status 0 when every "
        "file is usable, 1 when one is not. See docs/mapping.md.")
    check.add_argument("files", nargs="+", metavar="FILE",
                       help="a mapping file or a gateway.yaml")
    check.add_argument("--offline", action="store_true",
                       help="checking away from the gateway: a missing certificate, private "
                       "key, trust folder, password file or password variable is a warning, "
                       "not an error (keyop run still refuses to start without them)")
    check.add_argument("--strict", action="store_true",
                       help="warnings fail the check too (exit status 1)")
    check.set_defaults(func=cmd_check)

    replay = sub.add_parser(
        "replay", help="run a mapping over a recording; print packets",
        description="Run a mapping over a recording (from keyop record, or written by hand) "
        "with the recording's own time, and print the packets it makes, one JSON object a "
        "line on stdout (sequence, type, subject, time, data). The same files give the same "
        "packets every time. The recording format is in docs/mapping.md, \"Recordings\".")
    replay.add_argument("mapping", type=Path, help="the mapping file")
    replay.add_argument("recording", type=Path,
                        help="JSON lines, one sample each: signal, value, time (epoch "
                        "seconds), optional quality, monotonic, reason")
    replay.set_defaults(func=cmd_replay)

    record = sub.add_parser(
        "record", help="capture live samples as JSON lines",
        description="Connect to the devices of a gateway.yaml's mapping and write every "
        "sample they deliver, good or bad, as JSON lines that keyop replay reads "
        "(docs/mapping.md, \"Recordings\"). Nothing is sent to the hub.")
    record.add_argument("-c", "--config", required=True, type=Path,
                        help="the gateway.yaml whose mapping names the devices")
    record.add_argument("--out", required=True, type=Path,
                        help="the file to write (replaced if it exists)")
    record.add_argument("--duration", type=float, default=60.0,
                        help="seconds to record (default 60)")
    record.set_defaults(func=cmd_record)

    schema = sub.add_parser("schema", help="print a JSON Schema")
    schema.add_argument("what", choices=["packet", "mapping"])
    schema.set_defaults(func=cmd_schema)

    demo = sub.add_parser("demo", help="simulator + gateway + hub + a supplier's feed")
    demo.add_argument("--duration", type=float, default=None,
                      help="seconds to run, then print a JSON summary (default: until Ctrl-C)")
    demo.add_argument("--broker", default=None, help="HOST:PORT of a broker to use instead")
    demo.add_argument("--workdir", type=Path, default=None, help="keep files here")
    demo.set_defaults(func=cmd_demo)

    add_bench_command(sub)
    add_outbox_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
