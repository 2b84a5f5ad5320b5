"""gateway.yaml is read by the same located loader as mappings and hub.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_gateway_config
from mapping.errors import MappingError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gateway: {site: plant1, id: edge-01}\nmapping: a.yaml\nmapping: b.yaml\n",
         "3:1: duplicate key 'mapping'"),
        ("gateway: &me {site: plant1, id: edge-01}\noutbox: *me\n",
         "1:10: anchors and aliases are not allowed in gateway.yaml"),
        ("gateway: !!python/object/apply:os.system [echo]\n",
         "1:10: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed "
         "(plain YAML values only)"),
    ],
)
def test_unsafe_yaml_is_refused_where_it_stands(tmp_path: Path, text: str,
                                                expected: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as error:
        load_gateway_config(path)
    assert str(error.value) == f"{path}:{expected}"
