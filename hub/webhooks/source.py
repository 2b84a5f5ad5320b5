"""What webhook delivery needs of the supplier feed (hub/feed.py): read after a position, and
the heads. A Protocol, so delivery depends on this shape only, not on how the feed is kept."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol


class Entry(Protocol):
    """One feed entry (hub.feed.FeedEntry has these and more)."""

    @property
    def position(self) -> int:
        """Per supplier 1, 2, 3, ... without gaps."""
        ...

    @property
    def type(self) -> str:
        """The CloudEvent type."""
        ...

    @property
    def body(self) -> bytes:
        """The redacted CloudEvent JSON, exactly as every channel delivers it."""
        ...


class FeedReader(Protocol):
    """The supplier feed, read from worker threads (its methods block)."""

    def read(self, supplier: str, after: int, limit: int) -> Sequence[Entry]:
        """Up to `limit` entries of `supplier` after position `after`, in position order."""
        ...

    def head(self, supplier: str) -> int:
        """The position of `supplier`'s newest entry (0 when its feed is empty)."""
        ...

    def heads(self, suppliers: Iterable[str]) -> dict[str, int]:
        """`head` of each of `suppliers`, in one read."""
        ...
