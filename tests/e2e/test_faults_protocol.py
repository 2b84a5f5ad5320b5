"""A hypothesis state machine of the delivery protocol: the real edge outbox and the real hub
store (`hub.store.Store`, used read-only as a library), joined by a network that duplicates,
reorders and drops messages in both directions, with restarts of the edge (a new outbox file,
a new epoch) and of the hub (the store reopened from its file).

Invariants after every step:
- the hub store holds exactly the (epoch, seq) the model says were delivered, each once;
- the hub's contiguous seq per epoch is the model's highest gap-free prefix;
- safety: every row the edge has deleted is in the hub store (deletion only on a hub ack).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from factories import outbox_entry
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge_store import Outbox
from hub.store import Incoming, Store
from sync import packet_codec as codec

SOURCE = "plant1/edge-07"


class Protocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="keyop-protocol-"))
        self.edge_files = 0
        self.outbox = self._new_outbox()
        self.hub = Store(f"sqlite:///{self.dir / 'hub.db'}")
        self.up: list[list[bytes]] = []  # messages in flight to the hub (event bodies)
        self.down: list[tuple[str, int]] = []  # acks in flight to the edge
        self.sent_upto = 0  # the uplink's publishing cursor (current epoch)
        self.acked = 0  # the edge's highest accepted ack (current epoch)
        self.delivered: dict[str, set[int]] = {}  # model: what the hub must hold
        self.deleted: dict[str, int] = {}  # epoch -> highest seq the edge deleted

    def _new_outbox(self) -> Outbox:
        self.edge_files += 1
        return Outbox(self.dir / f"outbox-{self.edge_files}.db", SOURCE)

    # --- edge ----------------------------------------------------------------------------

    @rule(n=st.integers(1, 5))
    def commit(self, n: int) -> None:
        self.outbox.append([outbox_entry(source=SOURCE, good=i) for i in range(n)])

    @rule(limit=st.integers(1, 4))
    def publish(self, limit: int) -> None:
        rows = self.outbox.pending(self.sent_upto, limit)
        if rows:
            self.up.append([row.body for row in rows])
            self.sent_upto = rows[-1].seq

    @rule()
    def resend_after_timeout(self) -> None:
        self.sent_upto = self.acked

    @precondition(lambda self: bool(self.down))
    @rule(data=st.data())
    def edge_receives_ack(self, data: st.DataObject) -> None:
        epoch, seq = self.down.pop(data.draw(st.integers(0, len(self.down) - 1)))
        if epoch != self.outbox.epoch or seq <= self.acked or seq > self.outbox.last_seq:
            return  # the uplink's filters: foreign epoch, old or impossible acks
        self.outbox.ack(seq)
        self.acked = seq
        self.sent_upto = max(self.sent_upto, seq)
        self.deleted[epoch] = seq

    @rule()
    def restart_edge_with_a_new_epoch(self) -> None:
        # The outbox file is lost (a replaced disk): what it still held never arrives.
        self.outbox.close()
        self.outbox = self._new_outbox()
        self.sent_upto = self.acked = 0

    # --- network ---------------------------------------------------------------------------

    @precondition(lambda self: bool(self.up))
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        self.up.append(list(self.up[data.draw(st.integers(0, len(self.up) - 1))]))

    @precondition(lambda self: bool(self.up))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.up.pop(data.draw(st.integers(0, len(self.up) - 1)))

    @precondition(lambda self: bool(self.down))
    @rule(data=st.data())
    def drop_ack(self, data: st.DataObject) -> None:
        self.down.pop(data.draw(st.integers(0, len(self.down) - 1)))

    # --- hub -------------------------------------------------------------------------------

    @precondition(lambda self: bool(self.up))
    @rule(data=st.data())
    def hub_receives(self, data: st.DataObject) -> None:
        # Any message, not the oldest: the network reorders.
        bodies = self.up.pop(data.draw(st.integers(0, len(self.up) - 1)))
        batch = [Incoming(codec.decode(body), json.loads(body)) for body in bodies]
        result = self.hub.store_batch(batch)
        for item in batch:
            self.delivered.setdefault(item.packet.sourceepoch, set()).add(item.packet.seq)
        for progress in result.progress.values():
            if progress.contiguous > 0:
                self.down.append((progress.epoch, progress.contiguous))

    @rule()
    def restart_hub(self) -> None:
        self.hub.close()
        self.hub = Store(f"sqlite:///{self.dir / 'hub.db'}")

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def hub_store_equals_the_model(self) -> None:
        with self.hub.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT epoch, seq FROM packets WHERE source = ?", (SOURCE,)).all()
        stored: dict[str, set[int]] = {}
        for epoch, seq in rows:
            stored.setdefault(epoch, set()).add(int(seq))
        assert len(rows) == sum(len(s) for s in stored.values()), "a duplicate in the store"
        assert stored == {e: s for e, s in self.delivered.items() if s}
        for epoch, seqs in stored.items():
            prefix = 0
            while prefix + 1 in seqs:
                prefix += 1
            assert self.hub.contiguous(SOURCE, epoch) == prefix

    @invariant()
    def the_edge_deletes_only_what_the_hub_has(self) -> None:
        for epoch, upto in self.deleted.items():
            assert set(range(1, upto + 1)) <= self.delivered.get(epoch, set())
        if self.outbox.stats().first_pending_seq is not None:
            first = self.outbox.stats().first_pending_seq or 0
            assert first == self.deleted.get(self.outbox.epoch, 0) + 1

    def teardown(self) -> None:
        self.outbox.close()
        self.hub.close()
        shutil.rmtree(self.dir, ignore_errors=True)


Protocol.TestCase.settings = settings(
    max_examples=30, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_protocol = Protocol.TestCase
