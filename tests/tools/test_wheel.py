"""The built wheel works outside the checkout: installed into a fresh virtualenv in a temporary
folder, `keyop demo`, `keyop check`, `keyop init`, `keyop schema` and a bench that reads the
example files find everything they need as package data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _copy_sources(dest: Path) -> None:
    """The tracked and new files of the checkout (no build leftovers, no databases)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


@pytest.mark.timeout(300)
def test_the_wheel_runs_the_demo_and_checks_the_shipped_examples(tmp_path: Path) -> None:
    src, dist, venv, work = (tmp_path / n for n in ("src", "dist", "venv", "work"))
    _copy_sources(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                    str(src)], check=True, timeout=180)
    (wheel,) = dist.glob("keyop-*.whl")
    # A fresh venv; its dependencies are the test venv's installed ones (a .pth line adds that
    # site-packages after the venv's own, without running its .pth files: the checkout's
    # editable install stays out), so nothing is downloaded.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True
                          ).stdout.strip()
    # The wheel first: with the test venv's packages visible, pip would take the checkout's
    # editable keyop for an installed one and skip it.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, timeout=120, cwd=tmp_path, env=clean)
    Path(site, "shared-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work.mkdir()
    env = dict(clean)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    keyop = str(venv / "bin" / "keyop")

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([keyop, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=timeout)

    where = subprocess.run([str(python), "-c", "import cli, config as e; "
                            "print(cli.__file__); print(e.DIR)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where  # not the checkout

    examples = run("init", "examples", str(work / "examples"))
    assert examples.returncode == 0, examples.stderr
    shipped = sorted(str(p) for p in (work / "examples").glob("*.yaml"))
    assert len(shipped) == 5
    checked = run("check", *shipped)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.count(": ok (") == 5, checked.stdout

    layout = {"KEYOP_CONFIG_DIR": str(work / "etc"), "KEYOP_STATE_DIR": str(work / "state")}
    env.update(layout)
    assert run("init", "gateway").returncode == 0
    assert run("init", "hub").returncode == 0
    starters = run("check", str(work / "etc" / "edge-01" / "gateway.yaml"),
                   str(work / "etc" / "hub.yaml"))
    assert starters.returncode == 0, starters.stderr

    schema = run("schema", "packet")
    assert json.loads(schema.stdout) == json.loads(
        (work / "examples" / "packet.schema.json").read_text())
    bench = run("bench", "mapping", "--stations", "2", "--samples", "2000")
    assert bench.returncode == 0, bench.stderr

    demo = run("demo", "--duration", "10", "--workdir", str(work / "demo"), timeout=180)
    assert demo.returncode == 0, demo.stderr[-3000:]
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary
    assert summary["emitted"] > 0 and summary["stored_at_hub"] == summary["emitted"], summary
