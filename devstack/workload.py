"""A synthetic supplier workload: valid v1 progress packets for many gateways, each packet
concerning one of N suppliers (its work orders) and carrying params of every class to redact.
`keyop bench hub` publishes these; the hub's validation tests check that they pass unchanged.
"""

from __future__ import annotations

from sync import packet as pk
from sync import packet_codec as codec

EPOCH = "01JCZ0K3M9B4X2W7Q5N8D1F6HA"
PARAMS = {"weldCurrent": {"value": 212.5, "uom": "AMP", "class": "restricted"},
          "cycleTime": {"value": 41.0, "uom": "SEC", "class": "public"},
          "pressForce": {"value": 8.1, "uom": "KNT", "class": "partner"}}


def work_order(supplier: int, k: int) -> str:
    """The k-th of supplier `supplier`'s four work orders (k wraps)."""
    return f"WO-{supplier:03d}-{k % 4}"


def render_progress(gateway: str, seq: int, suppliers: int) -> bytes:
    """Packet `seq` of `gateway` (source `plant1/{gateway}`, epoch EPOCH), rendered as the edge
    renders it; the suppliers take the packets in turn."""
    supplier = seq % suppliers
    order = work_order(supplier, seq // suppliers)
    good = seq // 7
    data = {
        "kopVersion": "1.0",
        "workOrder": {"id": order, "customerOrders": [f"PO-{supplier}"]},
        "operation": {"id": "OP30", "name": "welding"},
        "runId": f"{order}.OP30.{gateway}.1",
        "equipment": {"path": f"plant1/body/{gateway}/welder-2", "level": "WorkUnit"},
        "state": {"value": "Running"},
        "quantities": {"uom": "C62", "planned": 10**9, "produced": good, "good": good,
                       "scrap": 0, "rework": 0},
        "params": PARAMS,
        "tzOffset": "+01:00",
        "timeQuality": "synced",
        "origin": {"protocol": "opcua", "ref": "ns=3;s=W2.Count"},
    }
    ident = f"01JDA5Q1Y4S7M{abs(hash(gateway)) % 1000:03d}{seq:010d}"
    draft = pk.Draft("keyop.operation.progress", f"{order}/OP30", 1_795_000_000.0 + seq, data)
    return codec.render(draft, id=ident, source=f"plant1/{gateway}", sequence=seq, epoch=EPOCH,
                     recorded=1_795_000_000.05 + seq)
