"""`keyop init`: commented starter configs that `keyop check` passes, in the box's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from gateway.config import load_gateway_config
from hub.config import load_config


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KEYOP_CONFIG_DIR", str(tmp_path / "etc"))
    monkeypatch.setenv("KEYOP_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_gateway_and_hub_starters_pass_check_and_keep_state_in_the_state_dir(
        layout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "gateway", "--id", "line3-edge"]) == 0
    assert main(["init", "hub"]) == 0
    folder = layout / "etc" / "line3-edge"
    gateway, hub = folder / "gateway.yaml", layout / "etc" / "hub.yaml"
    assert main(["check", str(gateway), str(folder / "mapping.yaml"), str(hub)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == 3, out
    config = load_gateway_config(gateway)
    assert config.gateway_id == "line3-edge"
    assert config.outbox_path == layout / "state" / "line3-edge.outbox.db"
    assert f"{layout}/etc/secrets/line3-edge.mqtt-password" in gateway.read_text()
    assert "keyop-gateway@line3-edge" in gateway.read_text()
    assert load_config(hub).hub.database_url() == f"sqlite:///{layout}/state/hub.db"


def test_init_never_overwrites_without_force(layout: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    target = layout / "site"
    assert main(["init", "hub", str(target)]) == 0
    (target / "hub.yaml").write_text("# edited\n")
    assert main(["init", "hub", str(target)]) == 1
    assert "hub.yaml exist(s); nothing written" in capsys.readouterr().err
    assert (target / "hub.yaml").read_text() == "# edited\n"
    assert main(["init", "hub", str(target), "--force"]) == 0
    assert "sqlite:///" in (target / "hub.yaml").read_text()


def test_init_refuses_a_bad_gateway_id(layout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "gateway", "--id", "Line 3"]) == 1
    assert "--id 'Line 3'" in capsys.readouterr().err
    assert not (layout / "etc").exists()


def test_a_bad_hub_yaml_is_reported_by_check(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "hub.yaml"
    bad.write_text("hub: {id: hub, datbase: x}\n")
    assert main(["check", str(bad)]) == 1
    assert "datbase" in capsys.readouterr().err
