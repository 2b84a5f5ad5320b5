"""Log lines under journald, as JSON, and the level changed while running."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.logs import more_verbose, set_level, setup_logging, under_journald

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger for the test to set up; its previous setup is restored after."""
    logger = logging.getLogger()
    handlers, level = logger.handlers[:], logger.level
    yield logger
    logger.handlers[:], logger.level = handlers, level


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_text_lines_carry_a_timestamp_unless_stderr_is_the_journal_stream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: logging.Logger) -> None:
    journal, other = tmp_path / "journal.log", tmp_path / "other.log"
    with journal.open("w") as stream, other.open("w") as elsewhere:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journald(stream) and not under_journald(elsewhere)
        setup_logging("INFO", stream)
        logging.getLogger("keyop.test").info("outbox full", extra={"pending": 12})
        assert len(root.handlers) == 1
        setup_logging("INFO", elsewhere)  # a redirected stderr keeps the variable only
        logging.getLogger("keyop.test").info("outbox full", extra={"pending": 12})
    assert _lines(journal) == ['level=INFO logger=keyop.test msg="outbox full" pending=12']
    assert STAMP.match(_lines(other)[0]), _lines(other)


def test_json_lines(tmp_path: Path, root: logging.Logger) -> None:
    path = tmp_path / "log.jsonl"
    with path.open("w") as stream:
        setup_logging("INFO", stream, fmt="json")
        assert root.level == logging.INFO
        logging.getLogger("keyop.test").warning("uplink: hub ack overdue",
                                                extra={"acked_seq": 7})
    line = json.loads(_lines(path)[0])
    assert line["level"] == "WARNING" and line["logger"] == "keyop.test"
    assert line["msg"] == "uplink: hub ack overdue" and line["acked_seq"] == 7
    assert STAMP.match(line["ts"] + " ")


def test_level_changes_at_run_time(tmp_path: Path, root: logging.Logger) -> None:
    with (tmp_path / "log").open("w") as stream:
        setup_logging("WARNING", stream)
        assert more_verbose() == logging.INFO == root.level
        assert more_verbose() == logging.DEBUG
        assert more_verbose() == logging.DEBUG
        assert logging.getLogger("pymodbus").level == logging.DEBUG
        assert set_level("error") == logging.ERROR
        with pytest.raises(ValueError, match="log level 'LOUD'"):
            set_level("LOUD")
