"""The errors of edge_store: every one is an `OutboxError`."""

from __future__ import annotations


class OutboxError(Exception):
    """Base of the edge_store errors."""


class SourceMismatch(OutboxError):
    """The outbox file belongs to another source than the one opening it."""


class OutboxClosed(OutboxError):
    """The outbox (or its writer) is closed."""


class OutboxLocked(OutboxError):
    """Another process holds the outbox exclusively (a running gateway)."""


class OutboxFull(OutboxError):
    """A bound (or the disk) is full and the policy refuses new rows; nothing was stored."""


class RenderError(OutboxError):
    """An entry's `render` failed; nothing of that append was committed.

    `index` is the entry's position in the appended sequence, so a group committer can drop
    that one entry and commit the others.
    """

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(f"entry {index}: render failed: {cause!r}")
        self.index = index
        self.cause = cause
