"""`keyop bench hub --webhooks` at a small size: every event reaches the loopback receiver,
live and in the capacity drain, and the figures are reported."""

from __future__ import annotations

import pytest

from bench.hub import run_bench_hub


@pytest.mark.timeout(180)
def test_bench_hub_reports_webhook_figures() -> None:
    result = run_bench_hub(400, 3, "sqlite", gateways=2, webhooks=True)
    assert result["stored"] == 400
    assert result["webhook_events"] == 400  # each packet goes to one supplier's webhook
    assert result["webhook_drain_events"] == 400
    assert result["webhook_events_per_s"] > 0 and result["webhook_drain_events_per_s"] > 0
    assert result["webhook_requests"] >= 3
