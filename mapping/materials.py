"""Material points: tag reads and scans at a dock or a line side become material events.

A read of a GS1-identified item (an SGTIN or SSCC tag, or a barcode with (01)/(00)) gives a
`keyop.material.received|consumed|produced` packet whose `epcis` is the EPCIS 2.0
ObjectEvent of the observation. Pure, like the rest of the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.base import Sample, SampleValue, Scan
from mapping.model import MaterialPoint
from sync.packet import Draft, format_time

if TYPE_CHECKING:
    from mapping.engine import Engine

DIGITAL_LINK = "https://id.gs1.org"


@dataclass(frozen=True)
class CompiledMaterialPoint:
    id: str
    spec: MaterialPoint
    equipment_path: str


def epcis_identity(scan: Scan) -> tuple[list[str], list[dict[str, Any]]]:
    """`epcList` for serialised items, or `quantityList` for a class (GTIN + lot) read."""
    fields = scan.field_map
    if scan.epc and not scan.epc.startswith("urn:epc:raw:"):
        return [scan.epc], []
    if "00" in fields:
        return [f"{DIGITAL_LINK}/00/{fields['00']}"], []
    if "01" in fields and "21" in fields:
        return [f"{DIGITAL_LINK}/01/{fields['01']}/21/{fields['21']}"], []
    if "01" in fields:
        lot = f"/10/{fields['10']}" if "10" in fields else ""
        return [], [{"epcClass": f"{DIGITAL_LINK}/01/{fields['01']}{lot}", "quantity": 1}]
    if scan.epc:
        return [scan.epc], []
    return [], []


class MaterialRuntime:
    """One material point bound to the engine."""

    def __init__(self, engine: Engine, compiled: CompiledMaterialPoint) -> None:
        self.engine = engine
        self.compiled = compiled
        self.spec = compiled.spec
        self.type = f"keyop.material.{self.spec.use.lower()}"

    def on_sample(
        self, name: str, value: SampleValue, previous: SampleValue, sample: Sample,
        out: list[Draft],
    ) -> None:
        if not isinstance(value, Scan) or value.event != self.spec.on:
            return
        epcs, quantities = epcis_identity(value)
        if not epcs and not quantities:
            return  # not a GS1-identified item: nothing an EPCIS consumer could use
        fields = value.field_map
        material: dict[str, Any] = {"use": self.spec.use}
        if "01" in fields or "00" in fields:
            material["materialId"] = fields.get("01") or fields["00"]
        if "10" in fields:
            material["lotId"] = fields["10"]
        if epcs:
            material["epcs"] = epcs
        else:
            material["quantity"] = 1
            material["uom"] = "C62"
        data: dict[str, Any] = {
            "kopVersion": "1.0",
            "equipment": {"path": self.compiled.equipment_path,
                          "level": self.spec.equipment.level},
            "materials": [material],
            "scan": scan_json(value),
        }
        self.engine.common_fields(data, name, sample.time)
        event: dict[str, Any] = {
            "type": "ObjectEvent",
            "eventTime": format_time(sample.time),
            "eventTimeZoneOffset": data["tzOffset"],
            "action": "OBSERVE",
            "bizStep": self.spec.biz_step,
            "disposition": self.spec.disposition,
            "readPoint": {"id": f"urn:keyop:equipment:{self.compiled.equipment_path}"},
        }
        if epcs:
            event["epcList"] = epcs
        else:
            event["quantityList"] = quantities
        data["epcis"] = event
        out.append(Draft(self.type, self.compiled.equipment_path, sample.time, data))


def scan_json(scan: Scan) -> dict[str, Any]:
    """A scan as docs/packet.md's `scan` field."""
    result: dict[str, Any] = {"kind": scan.kind, "code": scan.code}
    if scan.fields:
        result["fields"] = scan.field_map
    return result

