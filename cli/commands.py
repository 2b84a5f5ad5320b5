"""The edge and authoring commands: `keyop run`, `check`, `replay`, `record`, `schema`, `demo`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING

from cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, print_problems
from mapping.errors import MappingError, Problem

if TYPE_CHECKING:
    from gateway.daemon import LoadedGateway


def _load_gateway(args: argparse.Namespace, command: str) -> LoadedGateway | None:
    """The checked gateway.yaml, mapping and drivers; None (problems printed) when refused."""
    from gateway.daemon import load_gateway

    try:
        return load_gateway(args.config)
    except MappingError as error:
        print_problems(error)
        print(f"keyop {command}: refusing to start ({len(error.problems)} problem(s))",
              file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from common.logs import setup_logging
    from gateway.daemon import serve

    setup_logging(args.log_level, fmt=args.log_format)
    loaded = _load_gateway(args, "run")
    if loaded is None:
        return EXIT_CONFIG
    serve(loaded)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.config import load_gateway_config
    from gateway.devices import build_drivers
    from mapping.load import load_mapping, read_document

    failed = warned = False
    for file in args.files:
        offline: list[Problem] | None = [] if args.offline else None
        try:
            doc = read_document(file)
            if isinstance(doc.value, dict) and "hub" in doc.value:
                failed = not _check_hub(file) or failed
                continue
            mapping_path = file
            if isinstance(doc.value, dict) and "gateway" in doc.value:
                mapping_path = str(load_gateway_config(file).mapping_path)
            mdoc, compiled = load_mapping(mapping_path)
            build_drivers(mdoc, compiled, offline=offline)
        except MappingError as error:
            print_problems(error)
            failed = True
            continue
        warnings = sorted([*compiled.warnings, *(offline or ())],
                          key=lambda p: (p.file, p.line, p.column))
        for problem in warnings:
            print(problem, file=sys.stderr)
        warned = warned or bool(warnings)
        print(f"{file}: ok ({len(compiled.stations)} station(s), "
              f"{len(compiled.model.signals)} signal(s)"
              f"{f', {len(warnings)} warning(s)' if warnings else ''})")
    return EXIT_FAILED if failed or (args.strict and warned) else EXIT_OK


def _check_hub(file: str) -> bool:
    """A hub.yaml: its problems on stderr, or `ok` with what it configures."""
    from hub.config import HubConfigError, load_config

    try:
        config = load_config(file)
    except HubConfigError as error:
        print(error, file=sys.stderr)
        return False
    print(f"{file}: ok (hub {config.hub.id}, {len(config.suppliers)} supplier(s), "
          f"{len(config.routes)} route(s))")
    return True


def cmd_replay(args: argparse.Namespace) -> int:
    from cli.record import replay_file

    try:
        count = replay_file(args.mapping, args.recording)
    except MappingError as error:
        print_problems(error)
        return EXIT_FAILED
    print(f"{count} packet(s)", file=sys.stderr)
    return EXIT_OK


def cmd_record(args: argparse.Namespace) -> int:
    from cli.record import record
    from common.logs import setup_logging

    setup_logging(args.log_level, fmt=args.log_format)
    loaded = _load_gateway(args, "record")
    if loaded is None:
        return EXIT_CONFIG
    with args.out.open("w") as out:
        result = asyncio.run(record(loaded.drivers, out, args.duration))
    print(f"{result.count} sample(s) written to {args.out}", file=sys.stderr)
    silent = result.silent(loaded.drivers)
    for line in silent:
        print(f"no usable sample from {line}", file=sys.stderr)
    return EXIT_FAILED if silent else EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    if args.what == "packet":
        from sync.packet_schema import json_schema

        schema = json_schema()
    else:
        from mapping.model import MappingFile

        schema = MappingFile.model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = "keyop mapping v1"
    print(json.dumps(schema, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from common.logs import setup_logging
    from devstack.demo import run_demo

    setup_logging(args.log_level, stream=sys.stderr, fmt=args.log_format)
    return run_demo(duration=args.duration, broker=args.broker, workdir=args.workdir)
