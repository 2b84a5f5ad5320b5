"""`keyop`: the command line of the edge daemon, the hub, the authoring tools and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mapping.errors import MappingError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def _print_problems(error: MappingError) -> None:
    for problem in error.problems:
        print(problem, file=sys.stderr)


def _install_stop(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


def _load_gateway(args: argparse.Namespace, command: str) -> tuple[Any, Any, Any] | None:
    """gateway.yaml, its compiled mapping and drivers; None (problems printed) when refused.

    Everything is checked before anything is opened: a bad config touches nothing.
    """
    from gateway.config import load_gateway_config
    from gateway.devices import build_drivers
    from mapping.load import load_mapping

    try:
        config = load_gateway_config(args.config)
        doc, compiled = load_mapping(config.mapping_path)
        return config, compiled, build_drivers(doc, compiled)
    except MappingError as error:
        _print_problems(error)
        print(f"keyop {command}: refusing to start ({len(error.problems)} problem(s))",
              file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from gateway.runtime import Gateway

    setup_logging(args.log_level)
    loaded = _load_gateway(args, "run")
    if loaded is None:
        return EXIT_CONFIG
    config, compiled, drivers = loaded

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        _install_stop(loop, stop)
        gateway = Gateway(config, compiled, drivers)
        reloads: set[asyncio.Task[object]] = set()

        def reload() -> None:
            task = asyncio.ensure_future(gateway.control.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        # SIGHUP: check the mapping file again and swap it in if it passes.
        loop.add_signal_handler(signal.SIGHUP, reload)
        await gateway.run(stop)

    asyncio.run(main())
    return EXIT_OK


def cmd_hub(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from hub.service import main as hub_main

    if args.hub_command == "run" or args.hub_command is None:
        setup_logging(args.log_level)
        return hub_main(args.config)
    if args.hub_command == "acl":
        from hub.acl import main as acl_main

        return acl_main(args.config, args.out, args.format)
    return EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.config import load_gateway_config
    from gateway.devices import build_drivers
    from mapping.load import load_mapping, read_document

    failed = False
    for file in args.files:
        try:
            doc = read_document(file)
            mapping_path = file
            if isinstance(doc.value, dict) and "gateway" in doc.value:
                mapping_path = str(load_gateway_config(file).mapping_path)
            mdoc, compiled = load_mapping(mapping_path)
            build_drivers(mdoc, compiled)
        except MappingError as error:
            _print_problems(error)
            failed = True
            continue
        print(f"{file}: ok ({len(compiled.stations)} station(s), "
              f"{len(compiled.model.signals)} signal(s))")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from cli.record import replay_file

    try:
        count = replay_file(args.mapping, args.recording)
    except MappingError as error:
        _print_problems(error)
        return EXIT_FAILED
    print(f"{count} packet(s)", file=sys.stderr)
    return EXIT_OK


def cmd_record(args: argparse.Namespace) -> int:
    from cli.record import record
    from gateway.logs import setup_logging

    setup_logging(args.log_level)
    loaded = _load_gateway(args, "record")
    if loaded is None:
        return EXIT_CONFIG
    _, _, drivers = loaded
    with args.out.open("w") as out:
        count = asyncio.run(record(drivers, out, args.duration))
    print(f"{count} sample(s) written to {args.out}", file=sys.stderr)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    if args.what == "packet":
        from sync.packet import json_schema

        schema = json_schema()
    else:
        from mapping.model import MappingFile

        schema = MappingFile.model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = "keyop mapping v1"
    print(json.dumps(schema, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from devstack.demo import run_demo
    from gateway.logs import setup_logging

    setup_logging(args.log_level, stream=sys.stderr)
    return run_demo(duration=args.duration, broker=args.broker, workdir=args.workdir)


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.e2e import run_bench_e2e
    from gateway.logs import setup_logging

    setup_logging(args.log_level)
    if args.bench == "serial":
        import logging

        from bench.serial import run_bench_serial

        logging.getLogger("drivers.serial_reader").setLevel(logging.ERROR)  # 5% are bad on purpose
        result = run_bench_serial(args.frames)
        print(json.dumps(result))
        return EXIT_OK if result["rejected"] == result["injected_bad"] else EXIT_FAILED
    if args.bench == "mapping":
        from bench.mapping import run_bench_mapping

        print(json.dumps(run_bench_mapping(args.stations, args.samples,
                                           polls_per_part=args.polls_per_part)))
        return EXIT_OK
    if args.bench == "e2e":
        result = asyncio.run(run_bench_e2e(packets=args.packets, rate=args.rate, hub=args.hub))
        print(json.dumps(result))
        return EXIT_OK if result["lost"] == 0 and result["duplicates"] == 0 else EXIT_FAILED
    if args.bench in ("modbus-poll", "opcua-subscribe", "reconnect"):
        from bench.drivers import run_driver_bench

        driver_result = run_driver_bench(args)
        print(json.dumps(driver_result))
        return EXIT_OK
    if args.bench == "hub":
        from bench.hub import run_hub_bench

        hub_result = run_hub_bench(args)
        print(json.dumps(hub_result))
        return EXIT_OK if hub_result["stored"] == hub_result["packets"] else EXIT_FAILED
    if args.bench in ("drain", "faults"):
        from bench.delivery import run_delivery_bench

        delivery = run_delivery_bench(args)
        print(json.dumps(delivery))
        return EXIT_OK if delivery.get("ok", True) else EXIT_FAILED
    return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyop", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the edge gateway")
    run.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    run.set_defaults(func=cmd_run)

    hub = sub.add_parser("hub", help="run the collaboration hub")
    hub.add_argument("hub_command", nargs="?", choices=["run", "acl"], default="run",
                     help="run: the hub; acl: write Mosquitto broker accounts")
    hub.add_argument("-c", "--config", required=True, type=Path, help="hub.yaml")
    hub.add_argument("--out", type=Path, default=Path("broker-acl"),
                     help="acl: folder for the broker files and generated secrets")
    hub.add_argument("--format", choices=["dynsec", "acl-file"], default="dynsec",
                     help="acl: a Dynamic Security plugin config (default; binds client ids, "
                          "refuses a forbidden SUBSCRIBE in the SUBACK), or passwd + acl_file")
    hub.set_defaults(func=cmd_hub)

    check = sub.add_parser("check", help="check mapping files (or gateway.yaml files)")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=cmd_check)

    replay = sub.add_parser("replay", help="run a mapping over a recording; print packets")
    replay.add_argument("mapping", type=Path)
    replay.add_argument("recording", type=Path)
    replay.set_defaults(func=cmd_replay)

    record = sub.add_parser("record", help="capture live samples as JSON lines")
    record.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    record.add_argument("--out", required=True, type=Path)
    record.add_argument("--duration", type=float, default=60.0, help="seconds")
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

    bench = sub.add_parser("bench", help="benchmarks; each prints one JSON line last")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bench_serial = bench_sub.add_parser("serial", help="frames through a pty into the driver")
    bench_serial.add_argument("--frames", type=int, default=100_000)
    bench_map = bench_sub.add_parser("mapping", help="samples through the pure engine")
    bench_map.add_argument("--stations", type=int, default=200)
    bench_map.add_argument("--samples", type=int, default=1_000_000)
    bench_map.add_argument("--polls-per-part", type=int, default=10,
                           help="polls of a station per part made (1: every poll changes)")
    e2e = bench_sub.add_parser("e2e", help="mapping → outbox → uplink → broker → hub")
    e2e.add_argument("--packets", type=int, default=20_000)
    e2e.add_argument("--rate", type=float, default=None, help="packets/s offered (default: max)")
    e2e.add_argument("--hub", choices=["real", "acker"], default="real",
                     help="acker: a subscriber that acks at once (the gateway's own figures)")
    from bench.drivers import add_driver_benches

    add_driver_benches(bench_sub)
    from bench.delivery import add_delivery_benches
    from cli.outbox import add_outbox_command

    add_delivery_benches(bench_sub)
    from bench.hub import add_hub_bench

    add_hub_bench(bench_sub)
    bench.set_defaults(func=cmd_bench)
    add_outbox_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
