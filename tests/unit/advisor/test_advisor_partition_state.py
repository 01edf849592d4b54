"""The advisor's state scoped to its partitions: which lines a worker owns, what it restores, drops and skips."""

from __future__ import annotations

import asyncio

from lineguard import telemetry
from lineguard.partitioning import partition_for
from lineguard.plant import default_plant_path, load_plant_lines
from services.advisor.engine import Due, LineState, WindowEngine
from services.advisor.evaluation import Evaluator
from services.advisor.state import AdvisorState, ChangelogSink, encode_state

PLANT = load_plant_lines(default_plant_path(), 12)


def state_of(partitions: int = 3) -> AdvisorState:
    state = AdvisorState(PLANT, WindowEngine(), changelog=None, changelog_topic="changelog")  # type: ignore[arg-type]
    state.partitions = partitions
    return state


def lines_on(partition: int) -> list[str]:
    return [line for line in PLANT.lines if partition_for(line, 3) == partition]


def test_a_worker_owns_the_lines_of_its_partitions_and_skips_others_memory():
    state = state_of()
    assert state.owns("line7")  # not scoped yet: one worker owns every line
    state.assign({0})
    mine, theirs = lines_on(0)[0], lines_on(1)[0]
    assert state.owns(mine) and not state.owns(theirs)
    # actions.v1 is keyed by action id: a record of another worker's line must not create state here (its
    # checkpoint would overwrite the owner's windows in the changelog)
    action = {"line_id": theirs, "machine_entity_id": f"urn:ngsi-ld:Machine:{theirs}-oven", "machine": "oven"}
    assert state.fold("actions.v1", action) == []
    assert theirs not in state.states


def test_restore_counts_records_per_partition_and_revoke_drops_the_lines():
    state = state_of()
    state.assign({0, 1})
    records = [(line.encode(), encode_state(LineState(line)), partition_for(line, 3))
               for line in lines_on(0) + lines_on(1)]
    before = state.restored_records
    state.restore(records, published=set())
    assert state.restored_records - before == len(records)
    assert set(state.states) == set(lines_on(0) + lines_on(1))
    dropped = state.release({1})
    assert sorted(dropped) == sorted(lines_on(1)) and not state.owns(lines_on(1)[0])
    state.drop(dropped)
    assert set(state.states) == set(lines_on(0))
    samples = {s.labels.get("partition"): s.value for metric in telemetry.REGISTRY.collect()
               if metric.name == "lineguard_advisor_partitions_owned" for s in metric.samples}
    assert samples.get("0") == 1 and samples.get("1") == 0


def test_the_sink_hands_on_only_line_partitions_and_forgets_revoked_offsets():
    state = state_of()
    assigned: list[set[int]] = []
    revoked: list[set[int]] = []
    sink = ChangelogSink(state, 60.0, assigned=assigned.append, revoked=revoked.append)
    sink.on_assign([("line.observations.v1", 0), ("line.alarms.v1", 0), ("actions.v1", 2)])
    assert assigned == [{0}]

    class R:
        def __init__(self, topic: str, partition: int, offset: int) -> None:
            self.topic, self.partition, self.offset = topic, partition, offset

    sink.write([R("line.observations.v1", 0, 5), R("line.observations.v1", 1, 9)])
    sink.on_revoke([("line.observations.v1", 1)])
    assert revoked == [{1}] and sink.held_offsets() == {("line.observations.v1", 0): 5}


def test_an_evaluation_of_a_line_that_moved_away_is_left_to_its_new_owner():
    state = state_of()
    state.assign({0})
    theirs = lines_on(1)[0]
    due = Due(f"{theirs}-w0-scheduled", theirs, "scheduled", 0, 300_000, {}, {})
    evaluator = Evaluator(advisor=None, state=state, publisher=None)  # type: ignore[arg-type]
    asyncio.run(evaluator.evaluate(due))  # returns before the model or the producer are touched
    assert evaluator.outcomes == []
