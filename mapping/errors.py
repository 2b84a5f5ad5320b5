"""Errors that point into the integrator's YAML: `file:line:col: message`."""

from __future__ import annotations

from common.yamlsrc import LocatedError, Problem

__all__ = ["MappingError", "Problem"]


class MappingError(LocatedError):
    """A mapping (or gateway.yaml) that cannot be used; carries every problem found."""
