"""`keyop check`: missing files are errors at the field naming them, warnings with --offline;
expression warnings are printed but do not fail unless --strict."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main

MAPPING = """\
version: 1
plant: {site: plant1}
sources:
  mill-1:
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    username: keyop
    password_file: secrets/mill.pw
    security:
      policy: Basic256Sha256
      mode: SignAndEncrypt
      certificate: pki/client.der
      private_key: pki/client.key.pem
      trust: pki/trusted
signals:
  mill.status: {source: mill-1, node: "ns=2;s=Status", type: int32}
  mill.order:  {source: mill-1, node: "ns=2;s=Order", type: string}
stations:
  mill-1:
    operation: {id: OP50}
    order: {signal: mill.order}
    start: START
"""


def _write(tmp_path: Path, start: str = "mill.status == 3") -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(MAPPING.replace("START", start))
    return path


def test_missing_files_are_errors_at_their_fields(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    assert main(["check", str(path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[0].removeprefix(f"{path}:") for line in lines] == [
        "8:20", "12:20", "13:20", "14:14"]
    assert "cannot read password file" in lines[0] and "certificate: no file" in lines[1]
    assert "private_key: no file" in lines[2] and "trust: no folder" in lines[3]


def test_offline_they_are_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    assert main(["check", "--offline", str(path)]) == 0
    captured = capsys.readouterr()
    assert [line.split(": ", 2)[1] for line in captured.err.splitlines()] == ["warning"] * 4
    assert "4 warning(s)" in captured.out
    assert main(["check", "--offline", "--strict", str(path)]) == 1


def test_a_never_true_start_is_a_warning(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "mill.status == 3 and mill.status == 4")
    assert main(["check", "--offline", str(path)]) == 0
    err = capsys.readouterr().err
    assert (f"{path}:22:33: warning: stations.mill-1.start: can never be true: 'mill.status' "
            "cannot be 3 and 4 at once") in err.splitlines()


def test_a_password_in_gateway_yaml_gets_advice(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2] / "config"
    (tmp_path / "mapping.yaml").write_text((root / "mapping.yaml").read_text())
    text = (root / "gateway.yaml").read_text().replace(
        "  keepalive: 15s\n", "  keepalive: 15s\n  username: edge-07\n  password: hunter2\n")
    (tmp_path / "gateway.yaml").write_text(text)
    assert main(["check", str(tmp_path / "gateway.yaml")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path / 'gateway.yaml'}:17:3: mqtt.password: a password does not belong in this "
        "file: use password_file (a file holding it) or password_env (an environment "
        "variable holding it)"]
