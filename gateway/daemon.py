"""The edge daemon's process: load and check everything, then run until SIGINT or SIGTERM.

`keyop run` and `keyop record` start here; the command line only parses arguments and prints
the problems that `load_gateway` raises.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from pathlib import Path

from common.logs import install_level_signals
from drivers.base import Driver
from gateway.config import GatewayConfig, load_gateway_config
from gateway.devices import build_drivers
from gateway.runtime import Gateway
from gateway.service import StopSignals
from mapping.engine import CompiledMapping
from mapping.load import load_mapping


@dataclass(frozen=True, slots=True)
class LoadedGateway:
    """gateway.yaml, its compiled mapping and the drivers it configures, all checked."""

    config: GatewayConfig
    compiled: CompiledMapping
    drivers: list[Driver]


def load_gateway(config_path: Path) -> LoadedGateway:
    """Read and check gateway.yaml, its mapping and drivers; raises `MappingError`.

    Everything is checked before anything is opened: a bad config touches nothing.
    """
    config = load_gateway_config(config_path)
    doc, compiled = load_mapping(config.mapping_path)
    return LoadedGateway(config, compiled, build_drivers(doc, compiled))


def _install_stop(loop: asyncio.AbstractEventLoop, signals: StopSignals) -> None:
    """SIGINT and SIGTERM ask for a graceful stop, a second one for an immediate one;
    SIGUSR1 and SIGUSR2 raise and lower the log level (common/logs.py)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, signals.signal)
    install_level_signals(loop)


def serve(loaded: LoadedGateway) -> None:
    """Run the gateway until SIGINT or SIGTERM; SIGHUP checks the mapping again and swaps it in
    if it passes."""

    async def main() -> None:
        signals = StopSignals()
        loop = asyncio.get_running_loop()
        _install_stop(loop, signals)
        gateway = Gateway(loaded.config, loaded.compiled, loaded.drivers)
        reloads: set[asyncio.Task[object]] = set()

        def reload() -> None:
            task = asyncio.ensure_future(gateway.control.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        await gateway.run(signals.stop, signals.now)

    asyncio.run(main())
