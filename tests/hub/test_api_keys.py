"""API keys: `keyop hub acl` makes the admin key and every supplier's, writes api-keys.yaml
(0600) that hub.yaml includes; several keys per supplier all work (rotation), a removed one
stops working; the include is checked like hub.yaml itself (file:line:col, no tags)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cli.main import main as keyop
from hub.api import ApiContext, create_app
from hub.api.auth import ADMIN, Keys
from hub.config import HubConfig, HubConfigError, load_config
from hub.store import Store

HUB_YAML = """
hub: {{id: hub, database: "sqlite:///{db}"}}
include: [acl/api-keys.yaml]
suppliers:
  acme: {{partner_params: false}}
  bolt: {{}}
routes: [{{supplier: acme, work_orders: ["*"]}}]
"""


def _acl(hub_yaml: Path, *extra: str) -> None:
    assert keyop(["hub", "acl", "-c", str(hub_yaml), "--out",
                  str(hub_yaml.parent / "acl"), *extra]) == 0


def _key(out: Path, name: str) -> str:
    return (out / "secrets" / name).read_text().strip()


@pytest.fixture
def hub_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "hub.yaml"
    path.write_text(HUB_YAML.format(db=tmp_path / "hub.db"))
    return path


def _status(config: HubConfig, key: str) -> int:
    store = Store(config.hub.database_url())
    try:
        with TestClient(create_app(ApiContext(config, store))) as client:
            return client.get("/v1/orders", headers={"Authorization": f"Bearer {key}"}
                              ).status_code
    finally:
        store.close()


def test_acl_writes_the_keys_hub_yaml_includes(hub_yaml: Path, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    out = hub_yaml.parent / "acl"
    _acl(hub_yaml)
    keys_file = out / "api-keys.yaml"
    assert keys_file.stat().st_mode & 0o777 == 0o600
    assert (out / "secrets" / "api-admin.key").stat().st_mode & 0o777 == 0o600
    config = load_config(hub_yaml)
    keys = Keys(config)
    assert keys.principal(_key(out, "api-acme.key")) == "acme"
    assert keys.principal(_key(out, "api-bolt.key")) == "bolt"
    assert keys.principal(_key(out, "api-admin.key")) == ADMIN
    # What the hub start reads, checked the same way.
    capsys.readouterr()
    assert keyop(["hub", "check", "-c", str(hub_yaml)]) == 0
    assert "ok (2 supplier(s), 3 API key(s))" in capsys.readouterr().out
    # Again: the same keys (the files are kept), api-keys.yaml rewritten.
    _acl(hub_yaml)
    assert Keys(load_config(hub_yaml)).principal(_key(out, "api-acme.key")) == "acme"


def test_a_second_key_works_beside_the_first_and_removing_one_revokes_it(hub_yaml: Path
                                                                         ) -> None:
    out = hub_yaml.parent / "acl"
    _acl(hub_yaml)
    old = _key(out, "api-acme.key")
    _acl(hub_yaml, "--add-key", "acme")
    new = _key(out, "api-acme.2.key")
    config = load_config(hub_yaml)
    assert _status(config, old) == 200 and _status(config, new) == 200
    # The supplier now uses the new key; the old one goes.
    (out / "secrets" / "api-acme.key").unlink()
    _acl(hub_yaml)
    assert not (out / "secrets" / "api-acme.key").exists()  # not made again
    config = load_config(hub_yaml)
    assert _status(config, new) == 200
    assert _status(config, old) == 401
    assert _status(config, _key(out, "api-bolt.key")) == 200


def test_an_include_is_checked_where_it_stands(hub_yaml: Path) -> None:
    out = hub_yaml.parent / "acl"
    out.mkdir()
    keys = out / "api-keys.yaml"
    with pytest.raises(HubConfigError, match=r"hub\.yaml:3:\d+: include: cannot read .*"
                                             r"api-keys\.yaml"):
        load_config(hub_yaml)
    keys.write_text("suppliers:\n  acme:\n    api_key_hashes: [\"sha256:nothex\"]\n")
    with pytest.raises(HubConfigError, match=r"api-keys\.yaml:3:\d+: "
                                             r"suppliers\.acme\.api_key_hashes\.0: "):
        load_config(hub_yaml)
    keys.write_text("suppliers:\n  zed: {api_key_hashes: []}\n")
    with pytest.raises(HubConfigError, match=r"api-keys\.yaml:2:3: suppliers\.zed: not in "
                                             r"hub\.yaml"):
        load_config(hub_yaml)
    keys.write_text("suppliers:\n  acme: {partner_params: true}\n")
    with pytest.raises(HubConfigError, match=r"api-keys\.yaml:2:\d+: suppliers\.acme\."
                                             r"partner_params: already set at .*hub\.yaml:5"):
        load_config(hub_yaml)
    keys.write_text("suppliers: !!python/object:os.system {}\n")
    with pytest.raises(HubConfigError, match=r"api-keys\.yaml:1:\d+: .*not allowed"):
        load_config(hub_yaml)
    keys.write_text("a: &x {}\nb: *x\ninclude: [other.yaml]\n")
    with pytest.raises(HubConfigError, match="anchors and aliases are not allowed"):
        load_config(hub_yaml)
    assert keyop(["hub", "check", "-c", str(hub_yaml)]) == 2
