"""Routing (which suppliers a packet concerns), redaction (what each may see), hub.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from factories import progress_draft, render_event

from hub.config import ConfigError, HubConfig, load_config, parse_config
from hub.routing import redact, route_matches, state_of, suppliers_for
from sync import packet as pk

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
suppliers:
  acme: {partner_params: false}
  bolt: {partner_params: true, params: [pressForce, weldCurrent]}
  cargo: {partner_params: true}
routes:
  - supplier: acme
    work_orders: ["WO-1001", "WO-1003*"]
  - supplier: bolt
    work_orders: ["WO-1002", "WO-1003"]
  - supplier: cargo
    customer_orders: ["PO-77*"]
    operations: ["OP3?"]
    equipment: [plant1/body]
"""

PARAMS = {
    "weldCurrent": {"value": 212.5, "uom": "AMP", "class": "restricted"},
    "pressForce": {"value": 8.1, "uom": "KNT", "class": "partner"},
    "cycleTime": {"value": 41.0, "uom": "SEC", "class": "public"},
    "oilTemp": {"value": 55, "class": "partner"},
}


def event(work_order: str = "WO-1001", *, operation: str = "OP30",
          path: str = "plant1/body/line-3/welder-2", customer: str = "PO-7781",
          params: dict[str, Any] | None = None) -> dict[str, Any]:
    draft = progress_draft(work_order=work_order, operation=operation, path=path,
                           customer_orders=[customer], params=params, good=3, scrap=0)
    result: dict[str, Any] = json.loads(render_event(draft, seq=7))
    return result


@pytest.fixture
def config() -> HubConfig:
    return parse_config(CONFIG, "test.yaml")


@pytest.mark.parametrize(
    ("work_order", "expected"),
    [
        ("WO-1001", ["acme", "cargo"]),
        ("WO-1002", ["bolt", "cargo"]),
        ("WO-1003", ["acme", "bolt", "cargo"]),
        ("WO-10031", ["acme", "cargo"]),
    ],
)
def test_work_order_patterns(config: HubConfig, work_order: str, expected: list[str]) -> None:
    assert suppliers_for(event(work_order), config) == expected


def test_every_criterion_of_a_route_must_match(config: HubConfig) -> None:
    cargo = config.routes[2]
    assert route_matches(cargo, event("WO-9"))
    assert not route_matches(cargo, event("WO-9", customer="PO-1"))
    assert not route_matches(cargo, event("WO-9", operation="OP40"))
    # `equipment` is a path prefix at level boundaries, not a string prefix.
    assert not route_matches(cargo, event("WO-9", path="plant1/bodyshop/line-1"))
    assert route_matches(cargo, event("WO-9", path="plant1/body"))
    assert suppliers_for(event("WO-9", customer="PO-1"), config) == []


def test_types_route_and_missing_fields() -> None:
    config = parse_config("suppliers: {acme: {}}\nroutes: [{supplier: acme, "
                          "types: ['keyop.station.*']}]")
    station = {"type": "keyop.station.alarm", "data": {"equipment": {"path": "p/a"}}}
    assert suppliers_for(station, config) == ["acme"]
    assert suppliers_for(event(), config) == []
    only_orders = parse_config("suppliers: {acme: {}}\nroutes: [{supplier: acme, "
                               "work_orders: ['*']}]")
    # A packet without a work order does not match a work order pattern, even '*'.
    assert suppliers_for(station, only_orders) == []


def test_redaction_by_class_and_allow_list(config: HubConfig) -> None:
    original = event(params=PARAMS)
    acme = json.loads(redact(original, config.suppliers["acme"]))
    bolt = json.loads(redact(original, config.suppliers["bolt"]))
    cargo = json.loads(redact(original, config.suppliers["cargo"]))
    # restricted never; partner only when allowed; allow-list narrows further.
    assert set(acme["data"]["params"]) == {"cycleTime"}
    assert set(bolt["data"]["params"]) == {"pressForce"}
    assert set(cargo["data"]["params"]) == {"cycleTime", "pressForce", "oilTemp"}
    # Everything else is kept as it was, identity included; the original is untouched.
    for copy in (acme, bolt, cargo):
        assert {k: v for k, v in copy.items() if k != "data"} == {
            k: v for k, v in original.items() if k != "data"}
        assert copy["data"]["quantities"] == original["data"]["quantities"]
    assert set(original["data"]["params"]) == set(PARAMS)


def test_redaction_drops_an_emptied_params_and_keeps_packets_without(config: HubConfig) -> None:
    only_restricted = event(params={"weldCurrent": PARAMS["weldCurrent"]})
    copy = json.loads(redact(only_restricted, config.suppliers["cargo"]))
    assert "params" not in copy["data"]
    pk.from_obj(copy)  # still a valid packet
    plain = event()
    assert json.loads(redact(plain, config.suppliers["acme"])) == plain


def test_state_document() -> None:
    state = json.loads(state_of(event()) or b"null")
    assert state["state"] == "Running"
    assert state["sequence"] == pk.format_sequence(7)
    assert state["quantities"]["good"] == 3
    assert state_of({"type": "keyop.station.state", "data": {}}) is None


def test_unknown_supplier_in_a_route_is_named() -> None:
    text = "suppliers:\n  acme: {}\nroutes:\n  - supplier: acmee\n    work_orders: [WO-1]\n"
    with pytest.raises(ConfigError) as error:
        parse_config(text, "hub.yaml")
    message = str(error.value)
    assert "hub.yaml:4:5: routes.0.supplier" in message
    assert "'acmee'" in message and "known: acme" in message


def test_typo_key_is_named_with_file_and_path(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text("hub:\n  id: hub\n  databse: sqlite:///x.db\nmqtt: {port: 1883}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert f"{path}:3:3: hub.databse: unknown key 'databse'" in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt: {port: seventeen}", "mqtt.port: Input should be a valid integer"),
        ("suppliers: {Acme: {}}", "suppliers.Acme: id 'Acme' must match"),
        ("suppliers: {acme: {}}\nroutes: [{supplier: acme}]", "routes.0: a route needs"),
        ("- a\n- b", "expected a mapping at the top"),
        ("hub: [unclosed", "not valid YAML"),
        ("hub: !!python/object:os.system {}", "not valid YAML"),
    ],
)
def test_config_errors_say_where_and_what(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"^x\.yaml") as error:
        parse_config(text, "x.yaml")
    assert expected in str(error.value)


def test_example_config_loads() -> None:
    config = load_config(ROOT / "config" / "hub.yaml")
    assert set(config.suppliers) == {"acme", "bolt"}
    assert config.suppliers["bolt"].params == ["pressForce"]
    assert suppliers_for(event("WO-1003"), config) == ["acme", "bolt"]


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothere\.yaml: cannot read"):
        load_config(tmp_path / "nothere.yaml")
