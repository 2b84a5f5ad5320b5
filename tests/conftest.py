"""Shared fixtures: a private Mosquitto per test that needs one, recording MQTT clients,
database URLs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubkit import GATEWAY, Client

from devstack.mosquitto import PrivateBroker
from sync import topics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A Mosquitto started for this test only, on a free loopback port."""
    with PrivateBroker(workdir=tmp_path / "broker") as running:
        yield running


@pytest.fixture
def clients(broker: PrivateBroker) -> Iterator[dict[str, Client]]:
    """A recording edge (its acks) and the two suppliers of `hubkit.hub_config` (all their
    topics)."""
    made = {
        "edge": Client(broker, topics.down_ack(GATEWAY)),
        "acme": Client(broker, topics.sup_all("acme")),
        "bolt": Client(broker, topics.sup_all("bolt")),
    }
    yield made
    for client in made.values():
        client.close()


def _postgres_url() -> str | None:
    return os.environ.get("KEYOP_TEST_POSTGRES_URL") or None


@pytest.fixture(params=["sqlite", "postgres"])
def hub_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The hub store's URL: SQLite file, then PostgreSQL when KEYOP_TEST_POSTGRES_URL is set.

    Each PostgreSQL test gets a schema of its own so tests cannot see each other's rows.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    url = _postgres_url()
    if url is None:
        if os.environ.get("CI"):
            pytest.fail("KEYOP_TEST_POSTGRES_URL must be set in CI: PostgreSQL tests may not skip")
        pytest.skip("KEYOP_TEST_POSTGRES_URL not set")
    import sqlalchemy as sa

    schema = f"t_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    yield f"{url}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()
