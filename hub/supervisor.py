"""The supervisor of the hub's long-running tasks and scheduled jobs.

A task that raises is restarted after a backoff (exponential, capped, with jitter) until the
hub stops; a scheduled job that raises simply runs again at its next time. Failures are logged
as transitions (STYLE "Errors and logs"): the first at ERROR with its traceback, then nothing
above DEBUG while the task keeps failing the same way (same exception type, raised at the same
place), INFO "recovered" once it runs healthy again: a task that has stayed up for
`healthy_after_s`, a job that completed. Restarts and failures are counted for /metrics.

Cancellation is not a failure: a cancelled task ends. Errors listed as `fatal` (a bad config
found late) stop the whole hub instead: `wait` raises them after every task has ended.
This is the one place of the hub with a broad `except Exception`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: `initial_s` doubling per failure up to `max_s`, each shortened by a
    random part of up to `jitter` (so restarts of many hubs do not march in step)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.5

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait before the restart that follows `failures` consecutive failures (>= 1)."""
        base = min(self.max_s, self.initial_s * 2.0 ** min(max(failures - 1, 0), 60))
        return base * (1.0 - self.jitter * (rng or random).random())


@dataclass(slots=True)
class _Health:
    failing: bool = False
    signature: tuple[str, str, int] | None = None
    repeats: int = 0


_HUB_DIR = str(Path(__file__).resolve().parent)


def _signature(error: BaseException) -> tuple[str, str, int]:
    """The "same way" of failing: the exception type and the place in the hub's own code it
    came from (the deepest hub frame: a library raises every database error from one place)."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if f.filename.startswith(_HUB_DIR)]
    if not (ours or frames):
        return (type(error).__qualname__, "", 0)
    where = (ours or frames)[-1]
    return (type(error).__qualname__, where.filename, where.lineno or 0)


class Supervisor:
    """Runs named tasks until `stop` is set, restarting those that fail."""

    def __init__(self, stop: asyncio.Event, *, backoff: Backoff | None = None,
                 healthy_after_s: float = 10.0,
                 fatal: tuple[type[BaseException], ...] = ()) -> None:
        self.stop = stop
        self.backoff = backoff or Backoff()
        self.healthy_after_s = healthy_after_s
        self.fatal = fatal
        # Per task or job name: restarts after a failure, failures in all.
        self.restarts: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self._health: dict[str, _Health] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._fatal_error: BaseException | None = None

    @property
    def names(self) -> list[str]:
        """Every task and job known, in the order first seen."""
        return list(self._health)

    def failing(self, name: str) -> bool:
        """Whether the task's or job's latest run failed (and it has not recovered since)."""
        health = self._health.get(name)
        return health is not None and health.failing

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run `factory()` as a task; make a new one after a failure, until `stop` is set."""
        self._register(name)
        self._tasks.append(asyncio.create_task(self._keep(name, factory), name=f"hub-{name}"))

    async def once(self, name: str, work: Callable[[], Awaitable[T]]) -> T | None:
        """One run of a scheduled job: its result, or None when it failed (logged, counted)."""
        self._register(name)
        try:
            result = await work()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the supervisor boundary: the next run may succeed
            self._failed(name, error, "runs again at its next time")
            return None
        self._healthy(name)
        return result

    async def wait(self) -> None:
        """Until every task has ended; raises the fatal error that stopped them, if one did."""
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._fatal_error is not None:
            raise self._fatal_error

    async def close(self, grace_s: float = 5.0) -> None:
        """Set `stop`, give the tasks `grace_s` to finish their work in hand, cancel the rest."""
        self.stop.set()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, pending_set = await asyncio.wait(pending, timeout=grace_s)
            for task in pending_set:
                task.cancel()
            if pending_set:
                await asyncio.wait(pending_set)

    # -- one task ---------------------------------------------------------------------------

    def _register(self, name: str) -> None:
        self._health.setdefault(name, _Health())
        self.restarts.setdefault(name, 0)
        self.failures.setdefault(name, 0)

    async def _keep(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        streak = 0  # consecutive failures, each within healthy_after_s of its start
        while True:
            started = loop.time()
            timer = loop.call_later(self.healthy_after_s, self._healthy, name)
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except self.fatal as error:
                log.error("hub task %s stopped the hub: %s", name, error)
                self._fatal_error = error
                self.stop.set()
                return
            except Exception as error:  # the supervisor boundary: restart, never end the hub
                streak = 1 if loop.time() - started >= self.healthy_after_s else streak + 1
                delay = self.backoff.delay(streak)
                self._failed(name, error, f"restarting in {delay:.1f} s")
            else:
                if not self.stop.is_set():
                    log.warning("hub task %s ended by itself", name)
                return
            finally:
                timer.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            if self.stop.is_set():
                return
            self.restarts[name] += 1

    def _failed(self, name: str, error: Exception, then: str) -> None:
        self.failures[name] += 1
        health = self._health[name]
        signature = _signature(error)
        if health.failing and signature == health.signature:
            health.repeats += 1
            log.debug("hub task %s failed again (%s); %s", name, error, then)
            return
        health.failing, health.signature, health.repeats = True, signature, 0
        log.error("hub task %s failed; %s", name, then, exc_info=error,
                  extra={"task": name, "failures": self.failures[name]})

    def _healthy(self, name: str) -> None:
        health = self._health[name]
        if health.failing:
            log.info("hub task %s recovered", name,
                     extra={"task": name, "failed_again": health.repeats})
        health.failing, health.signature, health.repeats = False, None, 0
