"""Property: for thousands of generated packets and supplier policies, no supplier's copy
(MQTT payload or API event) holds a param it may not see, nor the plant's signal origin."""

from __future__ import annotations

import json
from typing import Any

from factories import progress_draft, render_event
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.config import SupplierConfig
from hub.routing import redact, redacted
from sync import packet as pk

NAMES = ["weldCurrent", "pressForce", "cycleTime", "oilTemp", "torque", "x", "class", "params"]
CLASSES = ["public", "partner", "restricted", "Public", "", "secret"]

params_st = st.dictionaries(
    st.sampled_from(NAMES),
    st.fixed_dictionaries({"value": st.one_of(st.integers(), st.floats(allow_nan=False),
                                              st.text(max_size=5), st.booleans()),
                           "class": st.sampled_from(CLASSES)}),
    max_size=8,
)
policy_st = st.builds(
    SupplierConfig,
    partner_params=st.booleans(),
    params=st.one_of(st.none(), st.lists(st.sampled_from(NAMES), max_size=4)),
    station_names=st.one_of(st.none(), st.just({"plant1/body/line-3/welder-2": "Cell 2"})),
)


def allowed(name: str, klass: str, policy: SupplierConfig) -> bool:
    if klass == "public":
        ok = True
    elif klass == "partner":
        ok = policy.partner_params
    else:
        ok = False
    return ok and (policy.params is None or name in policy.params)


@settings(max_examples=1000, deadline=None)
@given(params=params_st, policies=st.lists(policy_st, min_size=3, max_size=3),
       with_origin=st.booleans())
def test_no_supplier_copy_holds_a_field_it_may_not_see(
        params: dict[str, Any], policies: list[SupplierConfig], with_origin: bool) -> None:
    extra: dict[str, Any] = {"origin": {"protocol": "opcua", "ref": "ns=3;s=W2"}} \
        if with_origin else {}
    event = json.loads(render_event(progress_draft(params=params or None, **extra)))
    for policy in policies:
        check(event, params, policy)


def check(event: dict[str, Any], params: dict[str, Any], policy: SupplierConfig) -> None:
    for copy in (json.loads(redact(event, policy)), redacted(event, policy)):
        data = copy["data"]
        assert "origin" not in data
        for name, value in (data.get("params") or {}).items():
            assert allowed(name, value["class"], policy), (name, value, policy)
        # Everything allowed is still there, unchanged.
        kept = {n for n, v in params.items() if allowed(n, v["class"], policy)}
        assert set(data.get("params") or {}) == kept
        if policy.station_names:
            assert data["equipment"] == {"path": "Cell 2"}
        assert {k: v for k, v in copy.items() if k != "data"} == {
            k: v for k, v in event.items() if k != "data"}
    if all(v["class"] in ("public", "partner", "restricted") for v in params.values()):
        pk.from_obj(json.loads(redact(event, policy)))  # still a valid packet
