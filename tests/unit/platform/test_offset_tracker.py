"""OffsetTracker alone: what a consumer loop may commit."""

from lineguard.kafka import OffsetTracker

A, B = ("t.raw", 0), ("t.raw", 1)


def test_targets_are_acknowledged_offsets_capped_by_what_is_held_and_never_go_back():
    tracker = OffsetTracker()
    tracker.assign([A, B])
    tracker.consumed({A: 0, B: 10}, {A: 5, B: 12})
    assert tracker.stored_next == {A: 0, B: 10}  # the group's position when we started
    assert tracker.targets({A: 5, B: 12}, held={B: 11}) == [(A, 5), (B, 11)]
    tracker.stored([(A, 5), (B, 11)])
    assert tracker.targets({A: 5, B: 12}, held={B: 11}) == []  # nothing new
    assert tracker.targets({A: 3}, held={}) == []  # a rewound batch never moves a commit back
    tracker.done({A: 5, B: 12})
    assert tracker.done_targets(held={}) == [(B, 12)]


def test_revoked_partitions_are_forgotten_and_not_stored():
    tracker = OffsetTracker()
    tracker.assign([A, B])
    tracker.consumed({A: 0, B: 0}, {A: 4, B: 4})
    tracker.done({A: 4, B: 4})
    tracker.revoke([B])
    assert tracker.assigned == {A}
    assert tracker.done_targets(held={}) == [(A, 4)]
    assert B not in tracker.consumed_next and B not in tracker.stored_next and B not in tracker.done_next


def test_uncommitted_counts_consumed_records_not_yet_stored():
    tracker = OffsetTracker()
    tracker.consumed({A: 100}, {A: 150})
    assert tracker.uncommitted(A) == 50
    tracker.stored([(A, 140)])
    assert tracker.uncommitted(A) == 10
    assert tracker.uncommitted(B) == 0


def test_rewind_targets_are_the_lowest_first_offset_per_partition():
    assert OffsetTracker.rewind_targets([{A: 10, B: 3}, {A: 20}, {B: 1}]) == {A: 10, B: 1}


def test_without_an_assignment_every_partition_is_owned():
    tracker = OffsetTracker()
    assert tracker.targets({A: 1}, held={}) == [(A, 1)]
