"""The garbage collector tuned for a long-running daemon's steady state."""

from __future__ import annotations

import gc

# A young generation this large lets the many short-lived objects of each packet or batch
# (samples, drafts, rows, decoded JSON dicts) die before they are promoted; the default (700)
# promotes many of them and collects the older generations over and over.
YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Freeze what exists now and widen the young generation; call once a daemon has built
    everything long-lived (modules, config, compiled mapping or router, store, drivers).

    Frozen objects are no longer rescanned by every full collection (`keyop bench e2e` and
    `keyop bench hub` show the gain). Cyclic garbage made of frozen objects (e.g. a mapping
    replaced by a reload) is never collected: a few kB a reload.
    """
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 100)
