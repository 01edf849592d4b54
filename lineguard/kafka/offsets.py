"""Which offsets a consumer loop may commit: the loop's offset bookkeeping, in one place and tested alone.

Keys are (full topic, partition). Offsets are "next" offsets (one past the last record), as Kafka commits them.
A partition's offsets move through four stages:

    consumed  -> the loop has read up to here (lag and the uncommitted gauge are measured from it)
    done      -> every output of every batch up to here is acknowledged
    held      -> a sink (the data lake) or a state owner has not made rows from here on durable yet
    stored    -> handed to the consumer for commit: min(done, held), never backwards
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

TP = tuple[str, int]


class OffsetTracker:
    def __init__(self) -> None:
        self.assigned: set[TP] = set()
        self.consumed_next: dict[TP, int] = {}  # next offset after the last record consumed
        self.done_next: dict[TP, int] = {}  # next offset after the last fully acknowledged batch
        self.stored_next: dict[TP, int] = {}  # the offset last stored for commit

    # --- assignment ---------------------------------------------------------------------------------------

    def assign(self, partitions: Iterable[TP]) -> None:
        self.assigned.update(partitions)

    def revoke(self, partitions: Iterable[TP]) -> None:
        """Forget revoked partitions (their next owner starts from the committed offset)."""
        for tp in partitions:
            self.assigned.discard(tp)
            self.consumed_next.pop(tp, None)
            self.done_next.pop(tp, None)
            self.stored_next.pop(tp, None)

    def owns(self, tp: TP) -> bool:
        """True while `tp` is assigned (or before any assignment is known: a loop given partitions by hand)."""
        return not self.assigned or tp in self.assigned

    # --- progress -----------------------------------------------------------------------------------------

    def consumed(self, first_offsets: Mapping[TP, int], next_offsets: Mapping[TP, int]) -> None:
        """A batch was read: `first_offsets` its first record per partition, `next_offsets` one past its last."""
        stored = self.stored_next
        for tp, first in first_offsets.items():
            stored.setdefault(tp, first)  # nothing stored yet: the group's position when we started
        self.consumed_next.update(next_offsets)

    def done(self, next_offsets: Mapping[TP, int]) -> None:
        """Every output of a batch is acknowledged (batches complete in order)."""
        self.done_next.update(next_offsets)

    def targets(self, next_offsets: Mapping[TP, int], held: Mapping[TP, int]) -> list[tuple[TP, int]]:
        """What to store for `next_offsets`: each capped by what a sink or state still holds; only for owned
        partitions, and only ahead of what is already stored (a commit never goes backwards)."""
        out = []
        stored = self.stored_next
        for tp, nxt in next_offsets.items():
            if not self.owns(tp):
                continue
            hold = held.get(tp)
            target = nxt if hold is None or hold > nxt else hold
            if target > stored.get(tp, -1):
                out.append((tp, target))
        return out

    def done_targets(self, held: Mapping[TP, int]) -> list[tuple[TP, int]]:
        """After a sink made rows durable: store up to what is acknowledged, capped by what is still held."""
        return self.targets(self.done_next, held)

    def stored(self, offsets: Iterable[tuple[TP, int]]) -> None:
        stored = self.stored_next
        for tp, offset in offsets:
            if offset > stored.get(tp, -1):
                stored[tp] = offset

    # --- reporting ----------------------------------------------------------------------------------------

    def uncommitted(self, tp: TP) -> int:
        """Records consumed whose offsets are not stored for commit yet."""
        position = self.consumed_next.get(tp)
        if position is None:
            return 0
        return max(0, position - self.stored_next.get(tp, position))

    def positions(self) -> dict[TP, int]:
        """Next offset to consume per partition the loop has read from (for lag)."""
        return dict(self.consumed_next)

    @staticmethod
    def rewind_targets(batches: Iterable[Mapping[TP, int]]) -> dict[TP, int]:
        """Where to seek to replay a failed batch and every later one in flight: the lowest first offset per
        partition among them."""
        targets: dict[TP, int] = {}
        for first_offsets in batches:
            for tp, offset in first_offsets.items():
                if offset < targets.get(tp, offset + 1):
                    targets[tp] = offset
        return targets
