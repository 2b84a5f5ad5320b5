"""The systemd units pass `systemd-analyze verify` without a warning and carry what the
service needs; the install script lays out folders and units with their modes."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def _directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("name, instance", [("keyop-gateway@.service", "keyop-gateway@line3"),
                                            ("keyop-hub.service", "keyop-hub")])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, name: str, instance: str) -> None:
    assert Path(ANALYZE).exists(), "systemd-analyze missing: scripts/ensure-system.sh installs it"
    # verify wants the ExecStart binary to exist: a stand-in for /opt/keyop/bin/keyop.
    keyop = tmp_path / "keyop"
    keyop.write_text("#!/bin/sh\nexit 0\n")
    keyop.chmod(0o755)
    text = (UNITS / name).read_text()
    assert "/opt/keyop/bin/keyop " in text
    unit = tmp_path / name
    unit.write_text(text.replace("/opt/keyop/bin/keyop", str(keyop)))
    targets = [str(unit)]
    if name.endswith("@.service"):
        instance_file = tmp_path / f"{instance}.service"
        instance_file.write_text(unit.read_text())
        targets.append(str(instance_file))
    result = subprocess.run([ANALYZE, "verify", *targets], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # A misspelt key or a bad value is only a warning to systemd: none may appear.
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("name", ["keyop-gateway@.service", "keyop-hub.service"])
def test_units_are_notify_watchdog_restart_and_hardened(name: str) -> None:
    unit = _directives(UNITS / name)
    expected = {
        "Type": "notify", "Restart": "always", "StartLimitIntervalSec": "0", "User": "keyop",
        "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/keyop", "ProtectHome": "yes",
        "PrivateTmp": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], (key, unit.get(key))
    assert unit["WatchdogSec"] and unit["TimeoutStopSec"]
    if name.startswith("keyop-gateway"):
        assert unit["SupplementaryGroups"] == ["dialout"]
        assert unit["ExecStart"] == ["/opt/keyop/bin/keyop run -c /etc/keyop/%i/gateway.yaml"]
    else:
        assert unit["ExecStart"] == ["/opt/keyop/bin/keyop hub -c /etc/keyop/hub.yaml"]


def test_install_script_lays_out_folders_and_units_under_a_root(tmp_path: Path) -> None:
    root = tmp_path / "box"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--root", str(root),
                             "--no-venv"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    def mode(path: str) -> int:
        return stat.S_IMODE((root / path).stat().st_mode)

    assert mode("etc/keyop") == 0o750
    assert mode("etc/keyop/secrets") == 0o700
    assert mode("var/lib/keyop") == 0o750
    for name in ("keyop-gateway@.service", "keyop-hub.service"):
        installed = root / "etc" / "systemd" / "system" / name
        assert installed.read_text() == (UNITS / name).read_text()
        assert mode(f"etc/systemd/system/{name}") == 0o644
    assert not (root / "opt").exists()  # --no-venv
