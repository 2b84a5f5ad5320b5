"""`keyop bench <name>`: the benchmarks' arguments, and each run from them.

Each benchmark prints one JSON line last; the exit code says whether the run met its own check
(nothing lost, every bad frame rejected, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from cli.exits import EXIT_FAILED, EXIT_OK


def add_bench_command(sub: Any) -> None:
    """Register `keyop bench ...` on the CLI's subparsers."""
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
    _add_driver_benches(bench_sub)
    _add_delivery_benches(bench_sub)
    _add_hub_bench(bench_sub)
    _add_board_bench(bench_sub)
    bench.set_defaults(func=cmd_bench)


def _add_driver_benches(bench_sub: Any) -> None:
    poll = bench_sub.add_parser("modbus-poll", help="Modbus polling: requests, cycle, CPU")
    poll.add_argument("--devices", type=int, default=20)
    poll.add_argument("--registers", type=int, default=500)
    poll.add_argument("--interval", default="1s")
    poll.add_argument("--duration", type=float, default=30.0)
    poll.add_argument("--consumer", choices=("sample", "batch"), default="batch",
                      help="queue samples per request (as the gateway does) or one by one")
    sub = bench_sub.add_parser("opcua-subscribe", help="OPC UA subscription: CPU, lag")
    sub.add_argument("--items", type=int, default=1000)
    sub.add_argument("--sampling", default="100ms")
    sub.add_argument("--duration", type=float, default=30.0)
    rec = bench_sub.add_parser("reconnect", help="device return → first good sample")
    rec.add_argument("--down", type=float, default=3.0, help="seconds the device stays off")
    rec.add_argument("--rounds", type=int, default=3)


def _add_delivery_benches(bench_sub: Any) -> None:
    faults = bench_sub.add_parser("faults", help="fault runs with real processes, counted")
    faults.add_argument("--scenario", choices=["kill", "broker-outage", "hub-outage"],
                        default="kill")
    faults.add_argument("--kills", type=int, default=20)
    faults.add_argument("--packets", type=int, default=10_000)
    faults.add_argument("--outage", type=float, default=60.0, help="seconds")
    faults.add_argument("--workdir", type=Path, default=None)
    drain = bench_sub.add_parser("drain", help="time the drain of a backlog after an outage")
    drain.add_argument("--backlog", type=int, default=1_000_000)
    drain.add_argument("--live-rate", type=float, default=100.0,
                       help="live packets/s during the drain")
    drain.add_argument("--hub", choices=["acker", "real"], default="acker",
                       help="acker: a minimal subscriber that acks each batch (the edge's own "
                       "limit); real: `keyop hub` (the hub's ingest limit)")
    drain.add_argument("--workdir", type=Path, default=None)


def _add_hub_bench(bench_sub: Any) -> None:
    from bench.hub import DEFAULT_POSTGRES

    hub = bench_sub.add_parser("hub", help="hub ingest → store → route → fan-out, measured")
    hub.add_argument("--packets", type=int, default=100_000)
    hub.add_argument("--suppliers", type=int, default=50)
    hub.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite",
                     help="postgres: KEYOP_BENCH_POSTGRES_URL, KEYOP_TEST_POSTGRES_URL or "
                     f"{DEFAULT_POSTGRES}, in a schema of its own dropped after")
    hub.add_argument("--gateways", type=int, default=4)
    hub.add_argument("--batch", type=int, default=50, help="events per MQTT message")
    hub.add_argument("--window", type=int, default=500,
                     help="packets per gateway published but not yet acknowledged by the hub")
    hub.add_argument("--workers", type=int, default=1,
                     help="hub worker processes sharing the ingest (use with --db postgres)")
    hub.add_argument("--split-roles", action="store_true",
                     help="this process only fans out, the extra workers only ingest "
                     "(hub.yaml hub.ingest / hub.fanout)")
    hub.add_argument("--hostile", type=float, default=0.0, metavar="PCT",
                     help="this share of the packets are hostile (wrong types, out of range, "
                     "impossible dates, huge strings, NaN): each must become a dead letter")
    hub.add_argument("--webhooks", action="store_true",
                     help="each supplier has one webhook on a loopback receiver: reports "
                     "webhook_events_per_s (docs/webhooks.md)")
    hub.add_argument("--supplier-batch", action="store_true",
                     help="suppliers take CloudEvents batches (hub.yaml suppliers.<id>.batch)")


def _add_board_bench(bench_sub: Any) -> None:
    board = bench_sub.add_parser("board", help="the progress board in headless Chromium: "
                                 "first render and live update rate")
    board.add_argument("--orders", type=int, default=500)
    board.add_argument("--operations", type=int, default=10)
    board.add_argument("--rates", default="50,100,200",
                       help="live phases: events per second, comma-separated")
    board.add_argument("--seconds", type=float, default=6.0, help="length of each phase")


def _interval(text: str) -> float:
    """`1s`, `100ms` or plain seconds."""
    text = text.strip()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    if text.endswith("s"):
        return float(text[:-1])
    return float(text)


def _driver_bench(args: argparse.Namespace) -> dict[str, Any]:
    from bench.drivers import bench_modbus_poll, bench_opcua_subscribe, bench_reconnect

    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    if args.bench == "modbus-poll":
        return asyncio.run(bench_modbus_poll(devices=args.devices, registers=args.registers,
                                             interval_s=_interval(args.interval),
                                             duration_s=args.duration,
                                             consumer=args.consumer))
    if args.bench == "opcua-subscribe":
        return asyncio.run(bench_opcua_subscribe(items=args.items,
                                                 sampling_s=_interval(args.sampling),
                                                 duration_s=args.duration))
    return asyncio.run(bench_reconnect(down_s=args.down, rounds=args.rounds))


def _hub_bench(args: argparse.Namespace) -> dict[str, Any]:
    from bench.hub import run_bench_hub

    if args.split_roles and args.workers < 2:
        raise SystemExit("keyop bench hub: --split-roles needs --workers 2 or more")
    return run_bench_hub(args.packets, args.suppliers, args.db, gateways=args.gateways,
                         batch=args.batch, window=args.window,
                         supplier_batch=args.supplier_batch, workers=args.workers,
                         split_roles=args.split_roles, hostile=args.hostile,
                         webhooks=args.webhooks)


def _delivery_bench(args: argparse.Namespace) -> dict[str, Any]:
    from bench.delivery import run_drain, run_faults

    if args.bench == "drain":
        return run_drain(args.workdir, backlog=args.backlog, live_rate=args.live_rate,
                         hub=args.hub)
    return run_faults(args.workdir, scenario=args.scenario, kills=args.kills,
                      packets=args.packets, outage=args.outage)


def cmd_bench(args: argparse.Namespace) -> int:
    from common.logs import setup_logging

    setup_logging(args.log_level, fmt=args.log_format)
    if args.bench == "serial":
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
        from bench.e2e import run_bench_e2e

        result = asyncio.run(run_bench_e2e(packets=args.packets, rate=args.rate, hub=args.hub))
        print(json.dumps(result))
        return EXIT_OK if result["lost"] == 0 and result["duplicates"] == 0 else EXIT_FAILED
    if args.bench in ("modbus-poll", "opcua-subscribe", "reconnect"):
        print(json.dumps(_driver_bench(args)))
        return EXIT_OK
    if args.bench == "board":
        from bench.board import run_bench_board

        rates = tuple(float(r) for r in args.rates.split(",") if r.strip())
        board = run_bench_board(args.orders, args.operations, rates, args.seconds)
        print(json.dumps(board))
        return EXIT_OK if board["requests_off_loopback"] == 0 else EXIT_FAILED
    if args.bench == "hub":
        hub_result = _hub_bench(args)
        print(json.dumps(hub_result))
        return EXIT_OK if hub_result["stored"] == hub_result["packets"] else EXIT_FAILED
    if args.bench in ("drain", "faults"):
        delivery = _delivery_bench(args)
        print(json.dumps(delivery))
        return EXIT_OK if delivery.get("ok", True) else EXIT_FAILED
    return EXIT_FAILED
