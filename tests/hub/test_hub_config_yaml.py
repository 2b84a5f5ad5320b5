"""hub.yaml is read by the same located loader as mappings and gateway.yaml: what YAML cannot
hold safely is refused with `file:line:col: key.path: message`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.config import HubConfigError, load_config, parse_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hub:\n  id: a\nmqtt: {}\nhub:\n  id: b\n",
         "hub.yaml:4:1: hub: not valid YAML: duplicate key 'hub'"),
        ("suppliers:\n  acme: {}\n  bolt: {}\n  acme: {batch: true}\n",
         "hub.yaml:4:3: suppliers.acme: not valid YAML: duplicate key 'acme'"),
        ("mqtt: &broker {port: 1883}\napi: *broker\n",
         "hub.yaml:1:7: api: not valid YAML: anchors and aliases are not allowed in hub.yaml"),
        ("suppliers:\n  acme: !!python/object/apply:os.system [echo]\n",
         "hub.yaml:2:9: suppliers.acme: not valid YAML: tag "
         "'tag:yaml.org,2002:python/object/apply:os.system' is not allowed "
         "(plain YAML values only)"),
        ("hub: {id: a}\napi:\n  <<: {port: 1}\n",
         "hub.yaml:3:3: api: not valid YAML: keys must be plain scalars"),
        ("hub: {id: [a}\n", "hub.yaml:1:13: not valid YAML: expected ',' or ']', but got '}'"),
    ],
)
def test_unsafe_yaml_is_refused_where_it_stands(text: str, expected: str) -> None:
    with pytest.raises(HubConfigError) as error:
        parse_config(text, "hub.yaml")
    assert str(error.value) == expected


def test_every_refusal_is_reported_at_once() -> None:
    text = "hub: {id: a}\nhub: {id: b}\nmqtt: {port: 1}\nmqtt: {port: 2}\n"
    with pytest.raises(HubConfigError) as error:
        parse_config(text, "hub.yaml")
    assert str(error.value).splitlines() == [
        "hub.yaml:2:1: hub: not valid YAML: duplicate key 'hub'",
        "hub.yaml:4:1: mqtt: not valid YAML: duplicate key 'mqtt'",
    ]


def test_a_file_is_named_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text("api:\n  port: 1\n  port: 2\n")
    with pytest.raises(HubConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}:3:3: api.port: not valid YAML: duplicate key 'port'"


def test_a_bare_timestamp_is_still_a_due_time() -> None:
    config = parse_config("orders:\n  WO-1: {due: 2026-12-01T16:00:00Z}\n", "hub.yaml")
    assert config.orders["WO-1"].due == datetime(2026, 12, 1, 16, 0, tzinfo=UTC)


def test_the_top_must_be_a_mapping() -> None:
    with pytest.raises(HubConfigError) as error:
        parse_config("- a\n- b\n", "hub.yaml")
    assert str(error.value) == "hub.yaml:1:1: (top): expected a mapping at the top, got list"
