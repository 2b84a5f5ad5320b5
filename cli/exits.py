"""The exit codes of every `keyop` command, and how a refused file is reported."""

from __future__ import annotations

import sys

from mapping.errors import MappingError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def print_problems(error: MappingError) -> None:
    """Each problem on its own line (`file:line:col: message`) on stderr."""
    for problem in error.problems:
        print(problem, file=sys.stderr)
