"""Every 422 names the invalid parameter in `errors`, as docs/api.md promises ("`errors`
names each one (`query.limit`, `path.order`, ...)"): the hub's own checks (a limit over
`api.max_limit`, a cursor that is not one, a time without a zone) answer like request
validation does, so a client reads `errors[].location` whatever the check."""

from __future__ import annotations

from typing import Any

import pytest
from test_hub_api import Api, api  # noqa: F401  (the fixture)


@pytest.mark.parametrize(("path", "params", "headers", "location"), [
    ("/v1/events", {"limit": 51}, {}, "query.limit"),
    ("/v1/events", {"limit": 0}, {}, "query.limit"),  # request validation: the reference
    ("/v1/events", {"after": "-1"}, {}, "query.after"),
    ("/v1/alerts", {"after": "x"}, {}, "query.after"),
    ("/v1/orders", {"limit": 51}, {}, "query.limit"),
    ("/v1/orders", {"updated_since": "2026-01-01T00:00:00"}, {}, "query.updated_since"),
    ("/v1/stream", {}, {"Last-Event-ID": "x"}, "header.last-event-id"),
])
def test_every_422_names_its_parameter(api: Api,  # noqa: F811
                                       path: str, params: dict[str, Any],
                                       headers: dict[str, str], location: str) -> None:
    answer = api.client.get(path, params=params, headers={
        "Authorization": f"Bearer {api.keys['acme']}", **headers})
    assert answer.status_code == 422
    body = answer.json()
    assert [e["location"] for e in body["errors"]] == [location], body
    assert body["detail"].startswith(f"{location}: ")


@pytest.mark.parametrize(("body", "location"), [
    ({"suppliers": ["nobody"]}, "body.suppliers"),
    ({"suppliers": ["acme"], "due": "2026-12-05T10:00:00"}, "body.due"),
])
def test_an_assignment_422_names_its_field(api: Api,  # noqa: F811
                                           body: dict[str, Any], location: str) -> None:
    answer = api.client.put("/v1/admin/orders/WO-9/assignment", json=body,
                            headers={"Authorization": f"Bearer {api.keys['admin']}"})
    assert answer.status_code == 422
    assert [e["location"] for e in answer.json()["errors"]] == [location]
