"""`keyop outbox stats|export|purge -c gateway.yaml` on a real outbox file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from factories import outbox_entry

from edge_store import Outbox
from gateway.config import load_gateway_config
from gateway.runtime import open_outbox
from sync import packet as pk
from sync import packet_codec as codec

SOURCE = "plant1/edge-07"


def _setup(tmp_path: Path, packets: int) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text("gateway: {site: plant1, id: edge-07}\nmapping: missing.yaml\n"
                      "outbox: {path: outbox.db, max_packets: 1000, policy: evict_low_priority}\n")
    with Outbox(tmp_path / "outbox.db", SOURCE) as outbox:
        outbox.append([outbox_entry(source=SOURCE, good=i) for i in range(packets)])
    return config


def _keyop(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", "--log-level", "ERROR", *args],
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_stats_and_export(tmp_path: Path) -> None:
    config = _setup(tmp_path, 25)
    stats = _keyop("outbox", "stats", "-c", str(config))
    assert stats.returncode == 0, stats.stderr
    body = json.loads(stats.stdout)
    assert (body["pending"], body["last_seq"], body["first_pending_seq"]) == (25, 25, 1)
    assert (body["max_packets"], body["policy"]) == (1000, "evict_low_priority")
    out = tmp_path / "export.jsonl"
    export = _keyop("outbox", "export", "-c", str(config), "--out", str(out))
    assert export.returncode == 0, export.stderr
    lines = out.read_text().splitlines()
    assert [codec.decode(line).seq for line in lines] == list(range(1, 26))


def test_purge_asks_then_records_a_gap_the_hub_will_receive(tmp_path: Path) -> None:
    config = _setup(tmp_path, 10)
    refused = _keyop("outbox", "purge", "-c", str(config), stdin="no\n")
    assert refused.returncode == 1 and "not confirmed" in refused.stderr
    assert json.loads(_keyop("outbox", "stats", "-c", str(config)).stdout)["pending"] == 10
    done = _keyop("outbox", "purge", "-c", str(config), stdin="edge-07\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["purged"] == 10
    with Outbox(tmp_path / "outbox.db", SOURCE) as outbox:
        rows = list(outbox.export())
        assert [r.kind for r in rows] == ["keyop.outbox.gap"]
        gap = codec.decode(rows[0].body)
        assert gap.seq == 11 and gap.data.gap is not None
        assert (gap.data.gap.fromSequence, gap.data.gap.toSequence) == (
            pk.format_sequence(1), pk.format_sequence(10))
        assert gap.data.gap.reason == "purged by operator"
        assert [(g.first, g.last) for g in outbox.stats().gaps] == [(1, 10)]


def test_purge_refuses_while_the_gateway_holds_the_outbox(tmp_path: Path) -> None:
    config = _setup(tmp_path, 3)
    with open_outbox(load_gateway_config(config)):  # as `keyop run` holds it
        busy = _keyop("outbox", "purge", "-c", str(config), "--yes")
        assert busy.returncode == 1 and "in use by another process" in busy.stderr
        assert _keyop("outbox", "stats", "-c", str(config)).returncode == 0
