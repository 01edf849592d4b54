"""The advisor's state: open windows, triggers and memory per line, checkpointed to the compacted changelog.

`AdvisorState` folds unified records into each line's `LineState` (the engine's windows and triggers), keeps
what operators did about earlier recommendations (`LineMemory`, from actions.v1 and feedback.v1), closes
windows as event time moves, and writes every changed line to the changelog (key: line id, value: the state as
zlib-compressed JSON). `ChangelogSink` is the consumer loop's sink for that state: it holds back each input
offset until a checkpoint that includes it is acknowledged, so a worker killed with SIGKILL restarts from its
last checkpoint and replays the records after it (deduplicated by id inside a window).

Several workers: the changelog is co-partitioned with the line topics (same key, same partition count, the same
murmur2 partitioner), so a worker owns exactly the lines of its input partitions. On assignment it restores only
the changelog partitions it was given (`assign` + `restore`); on revoke it drops those lines (`release`, then
`drop` once no evaluation of theirs is in flight). `restored_records` counts what it read from the changelog.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from lineguard import telemetry, topics
from lineguard.kafka import Producer, Record, Sink
from lineguard.logs import event, get_logger
from lineguard.partitioning import partition_for
from lineguard.plant import PlantModel
from services.advisor.engine import Due, LineState, WindowEngine
from services.advisor.window import LineHistory, LineWindow

log = get_logger(__name__)
SERVICE = "advisor"
KIND_BY_TOPIC = {topics.LINE_OBSERVATIONS: "observations", topics.LINE_ALARMS: "alarms",
                 topics.LINE_INSPECTIONS: "inspections"}
# What happened to the recommendations: not windowed, kept in the line's memory (applied, rejected, voted down).
MEMORY_TOPICS = {topics.ACTIONS: "actions", topics.FEEDBACK: "feedback"}

RECORDS_FOLDED = telemetry.counter(SERVICE, "records_folded", "Unified records folded into windows.", ["kind"])
MEMORY_RECORDS = telemetry.counter(SERVICE, "memory_records", "Action and feedback records remembered per line.",
                                   ["kind"])
LATE_RECORDS = telemetry.counter(SERVICE, "late_records", "Records that arrived after their window closed.")
CHECKPOINTS = telemetry.counter(SERVICE, "checkpoints", "Window state checkpoints written to the changelog.",
                                ["outcome"])
OPEN_WINDOWS = telemetry.gauge(SERVICE, "open_windows", "Windows open across lines.")
CHANGELOG_RESTORED = telemetry.counter(SERVICE, "changelog_records_restored",
                                       "Changelog records read to restore line state, by changelog partition.",
                                       ["partition"])
PARTITIONS_OWNED = telemetry.gauge(SERVICE, "partitions_owned",
                                   "1 for each line-topic partition (and so changelog partition) this worker owns.",
                                   ["partition"])
MEMORY_NOT_OWNED = telemetry.counter(SERVICE, "memory_records_not_owned",
                                     "Action and feedback records of a line whose partition another worker owns.")


def encode_state(state: LineState) -> bytes:
    return zlib.compress(json.dumps(state.to_dict(), separators=(",", ":")).encode(), 3)


def decode_state(data: bytes) -> LineState:
    return LineState.from_dict(json.loads(zlib.decompress(data)))


class AdvisorState:
    """Every line's state under one lock; the consumer loop's thread folds, the asyncio thread evaluates."""

    def __init__(self, plant: PlantModel, engine: WindowEngine, changelog: Producer, changelog_topic: str,
                 source_idle_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.plant = plant
        self.engine = engine
        self.changelog = changelog
        self.changelog_topic = changelog_topic
        self.lock = threading.RLock()
        self.states: dict[str, LineState] = {}
        self.dirty: set[str] = set()
        self.last_record_wall: dict[str, float] = {}
        # line -> input kind -> wall time its event time last moved forward (`held_kinds`)
        self.source_idle_s = source_idle_s
        self.clock = clock
        self.kind_advanced_wall: dict[str, dict[str, float]] = {}
        self.published_ids: set[str] = set()
        self.recent: dict[str, deque[dict[str, Any]]] = {}  # line -> latest recommendations (chat, API)
        self.folded = 0
        # Partition scoping: `partitions` is the line topics' (and the changelog's) partition count, `owned` the
        # partitions assigned to this worker; None: not scoped (one worker, tests), every line is ours.
        self.partitions = 0
        self.owned: set[int] | None = None
        self.restored_records = 0

    # --- partitions --------------------------------------------------------------------------------------

    def partition_of(self, line: str) -> int:
        return partition_for(line, self.partitions) if self.partitions else 0

    def owns(self, line: str) -> bool:
        with self.lock:
            return self.owned is None or not self.partitions or self.partition_of(line) in self.owned

    def assign(self, partitions: set[int]) -> None:
        with self.lock:
            self.owned = (self.owned or set()) | partitions
        for partition in partitions:
            PARTITIONS_OWNED.labels(str(partition)).set(1)

    def release(self, partitions: set[int]) -> list[str]:
        """Stop owning `partitions` (no new evaluation starts for their lines); the lines they hold."""
        with self.lock:
            if self.owned is not None:
                self.owned -= partitions
            lines = [line for line in self.states if self.partition_of(line) in partitions]
        for partition in partitions:
            PARTITIONS_OWNED.labels(str(partition)).set(0)
        return lines

    def drop(self, lines: Iterable[str]) -> None:
        """Forget lines another worker now owns (their state is in the changelog)."""
        with self.lock:
            for line in lines:
                self.states.pop(line, None)
                self.dirty.discard(line)
                self.last_record_wall.pop(line, None)
                self.kind_advanced_wall.pop(line, None)
                self.recent.pop(line, None)
            OPEN_WINDOWS.set(sum(len(s.windows) for s in self.states.values()))

    def _line_state(self, value: Any) -> LineState:
        line = value.get("line_id") if isinstance(value, dict) else None
        if line not in self.plant.lines:
            raise ValueError(f"unknown line {line!r} (known: {', '.join(sorted(self.plant.lines))})")
        state = self.states.get(line)
        if state is None:
            state = self.states[line] = LineState(line)
        return state

    # --- the consumer loop's thread ----------------------------------------------------------------------

    def fold(self, topic: str, value: Any) -> list[Due]:
        """One unified record (or an action or feedback record); returns the immediate evaluations it fired."""
        if topic in MEMORY_TOPICS:
            line = value.get("line_id") if isinstance(value, dict) else None
            if isinstance(line, str) and not self.owns(line):
                # actions.v1 and feedback.v1 are not keyed by line: with several workers, only the line's owner
                # may write its state (two writers of one changelog key would overwrite each other's windows).
                MEMORY_NOT_OWNED.inc()
                return []
            with self.lock:
                state = self._line_state(value)
                if MEMORY_TOPICS[topic] == "actions":
                    machine = next((m.id for m in self.plant.lines[state.line_id].machines.values()
                                    if m.entity_id == value["machine_entity_id"]), value.get("machine") or "")
                    state.memory.on_action(value, machine)
                else:
                    state.memory.on_feedback(value)
                self.dirty.add(state.line_id)
            MEMORY_RECORDS.labels(MEMORY_TOPICS[topic]).inc()
            return []
        kind = KIND_BY_TOPIC.get(topic)
        if kind is None:
            raise ValueError(f"the advisor does not read topic {topic!r}")
        with self.lock:
            state = self._line_state(value)
            now = self.clock()
            late_before, stream_before = state.late_records, state.stream_max.get(kind)
            dues = self.engine.add(state, kind, value)  # immediate triggers; windows close in advance()
            if state.late_records != late_before:
                LATE_RECORDS.inc()
            if state.stream_max.get(kind) != stream_before:
                self._advanced(state, kind, now)
            self.dirty.add(state.line_id)
            self.last_record_wall[state.line_id] = now
        RECORDS_FOLDED.labels(kind).inc()
        self.folded += 1
        return dues

    def _advanced(self, state: LineState, kind: str, now: float) -> None:
        """The event time of one of the line's inputs moved forward. The first time after a start or an
        assignment, or after the whole line stood still longer than its idle close, every input the line had
        starts a fresh allowance: after a restart or an outage the inputs come back one after the other."""
        clocks = self.kind_advanced_wall.get(state.line_id)
        resume_after_s = self.engine.config.idle_close_ms / 1000
        if not clocks or now - max(clocks.values()) > resume_after_s:
            clocks = self.kind_advanced_wall[state.line_id] = dict.fromkeys(state.stream_max, now)
        clocks[kind] = now

    def held_kinds(self, line: str, now: float) -> set[str]:
        """The line's inputs whose event time moved within `source_idle_s` of wall-clock time: they hold the
        line's watermark back. One line's records reach Kafka through different producers and topics (ingest,
        vision), so when one input jumps ahead (a backlog after a restart) the records of another may not be in
        Kafka yet, which topic lag cannot see: without the hold its machines would look silent. An input that
        stopped (a camera switched off) holds for `source_idle_s` only; then its silence is judged."""
        advanced = self.kind_advanced_wall.get(line, {})
        return {kind for kind, at in advanced.items() if now - at < self.source_idle_s}

    def advance(self, lagging: set[str]) -> list[Due]:
        """Move every line's watermark (held back by `lagging` input kinds, whose topics still have unread
        records, and by the inputs still moving, `held_kinds`); the windows it closed."""
        dues: list[Due] = []
        with self.lock:
            now = self.clock()
            for line, state in self.states.items():
                closed = self.engine.advance(state, lagging | self.held_kinds(line, now))
                if closed:
                    self.dirty.add(line)
                    dues += closed
        return dues

    # --- the asyncio thread ------------------------------------------------------------------------------

    def close_idle(self) -> list[Due]:
        """Close the windows of lines that sent nothing for a while (wall clock)."""
        now = self.clock()
        dues: list[Due] = []
        with self.lock:
            for line, state in self.states.items():
                closed = self.engine.close_idle(state, int((now - self.last_record_wall.get(line, now)) * 1000))
                if closed:
                    self.dirty.add(line)
                    dues += closed
        return dues

    def memory_for(self, line_id: str, at_ms: int) -> Any:
        with self.lock:
            state = self.states.get(line_id)
            return state.memory.memory(at_ms) if state is not None else None

    def already_published(self, due: Due) -> bool:
        with self.lock:
            if due.id not in self.published_ids:
                return False
            state = self.states.get(due.line_id)
            if state is not None:
                self.engine.mark_done(state, due.id)
                self.dirty.add(due.line_id)
            return True

    def published(self, due: Due, record: dict[str, Any], analysis: Any) -> None:
        with self.lock:
            if len(self.published_ids) > 100_000:  # bounded: the states' `done` lists keep the recent ones
                self.published_ids = {i for state in self.states.values() for i in state.done}
            self.published_ids.add(due.id)
            state = self.states.get(due.line_id)
            if state is not None:
                self.engine.mark_done(state, due.id)
                state.memory.note_recommendation(due.id, analysis)
                self.dirty.add(due.line_id)
            self.recent.setdefault(due.line_id, deque(maxlen=20)).append(record)

    def window_now(self, line_id: str) -> tuple[LineWindow | None, LineHistory | None, list[dict[str, Any]]]:
        """The window in progress (as far as event time went), the history and the latest recommendations."""
        with self.lock:
            state = self.states.get(line_id)
            window = history = None
            if state is not None and state.windows:
                latest = state.windows[max(state.windows)]
                window = LineWindow.from_dict(self.engine._snapshot(latest))
                window.end_ms = max(window.start_ms + 1, state.watermark + 1)
                history = LineHistory.from_dict(state.history.to_dict())
            return window, history, list(self.recent.get(line_id, ()))[-3:]

    def pending(self) -> int:
        with self.lock:
            return sum(len(s.pending) for s in self.states.values())

    # --- recovery and checkpoints ------------------------------------------------------------------------

    def restore(self, changelog: Iterable[tuple[Any, ...]], published: set[str]) -> list[Due]:
        """Recover every line from the changelog's records and the ids already published; the evaluations that
        were due but not published, to run again. Records may be (key, value) or (key, value, partition)."""
        restored: dict[str, LineState] = {}
        for item in changelog:
            key, value = item[0], item[1]
            self.restored_records += 1
            CHANGELOG_RESTORED.labels(str(item[2]) if len(item) > 2 else "all").inc()
            if key is None:
                continue
            line = key.decode()
            if value is None:
                restored.pop(line, None)
                continue
            try:
                restored[line] = decode_state(value)
            except (ValueError, zlib.error, KeyError) as exc:
                event(log, "changelog_record_unreadable", level=logging.WARNING, line=line, error=str(exc))
        again: list[Due] = []
        with self.lock:
            self.states.update(restored)
            self.published_ids |= published
            for line in restored:  # idle-closing counts from now, not from before the restart
                self.last_record_wall.setdefault(line, self.clock())
            for state in restored.values():
                for due in sorted(state.pending.values(), key=lambda d: (d.window_start, d.trigger)):
                    if due.id in published:
                        self.engine.mark_done(state, due.id)
                        self.dirty.add(state.line_id)
                    else:
                        again.append(due)
        event(log, "state_restored", lines=len(restored), published_ids=len(published),
              pending=sum(len(s.pending) for s in restored.values()))
        return again

    def checkpoint(self, covered: Callable[[], dict[tuple[str, int], int]] | None = None
                   ) -> tuple[bool, dict[tuple[str, int], int]]:
        """Write every changed line to the changelog. Returns (ok, the input offsets the snapshot covered):
        `covered` is read under the same lock as the snapshot, so the offsets match it exactly."""
        with self.lock:
            lines = sorted(self.dirty)
            blobs = [(line, encode_state(self.states[line])) for line in lines if line in self.states]
            offsets = covered() if covered is not None else {}
            self.dirty.clear()
            OPEN_WINDOWS.set(sum(len(s.windows) for s in self.states.values()))
        failures: list[str] = []

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for line, blob in blobs:
            self.changelog.produce(self.changelog_topic, line, blob, on_delivery=on_delivery, trace=False)
        remaining = self.changelog.flush(30)
        if remaining or failures:
            with self.lock:
                self.dirty.update(lines)
            CHECKPOINTS.labels("failed").inc()
            event(log, "checkpoint_failed", level=logging.WARNING, failures=failures[:3], remaining=remaining)
            return False, offsets
        if blobs:
            CHECKPOINTS.labels("ok").inc()
        return True, offsets


class ChangelogSink(Sink):
    """The consumer loop's sink: holds back input offsets until the state that folded them is in the changelog.

    The loop gives it each batch's (record, outputs) pairs (`write`) and then calls `on_batch_done`; it keeps
    offsets and makes the state durable (`flush`: every checkpoint of the loop, and every `interval_s` after a
    batch). Moving the watermarks and closing windows is `advance`, the step it is given (not a call back into a
    service), run after every batch and on every idle poll (an input that stopped stops holding the watermarks
    after a while, also when no record comes)."""

    def __init__(self, state: AdvisorState, interval_s: float,
                 advance: Callable[[], None] | None = None,
                 assigned: Callable[[set[int]], None] | None = None,
                 revoked: Callable[[set[int]], None] | None = None) -> None:
        self.state = state
        self.interval_s = interval_s
        self.advance = advance
        # The loop's rebalance hooks, reduced to the line topics' partitions (the changelog's): restore, drop.
        self.assigned = assigned
        self.revoked = revoked
        self.first_unsaved: dict[tuple[str, int], int] = {}
        self.last_seen: dict[tuple[str, int], int] = {}
        self.last_checkpoint = time.monotonic()
        self._lock = threading.Lock()

    def write(self, batch: list[Any]) -> None:
        """The batch's (record, outputs) pairs (plain records from an older loop, which then has no
        `on_batch_done` of its own)."""
        pairs = bool(batch) and isinstance(batch[0], tuple)
        with self._lock:
            for item in batch:
                record: Record = item[0] if isinstance(item, tuple) else item
                key = (record.topic, record.partition)
                self.first_unsaved.setdefault(key, record.offset)
                self.last_seen[key] = max(self.last_seen.get(key, -1), record.offset)
        if not pairs:  # the older contract has no on_batch_done: run it here
            self.on_batch_done()

    def on_batch_done(self) -> None:
        if self.advance is not None:
            self.advance()
        if time.monotonic() - self.last_checkpoint >= self.interval_s:
            self.flush()

    def on_idle(self) -> None:
        if self.advance is not None:
            self.advance()

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        """The loop assigned partitions (after its checkpoint, before any record of them): restore their state."""
        lines = {p for topic, p in partitions if topic in KIND_BY_TOPIC}
        if self.assigned is not None and lines:
            self.assigned(lines)

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """The loop checkpointed and is giving partitions up: forget their offsets and (through `revoked`) lines."""
        revoked = set(partitions)
        with self._lock:
            for key in [k for k in self.first_unsaved if k in revoked]:
                del self.first_unsaved[key]
            for key in [k for k in self.last_seen if k in revoked]:
                del self.last_seen[key]
        lines = {p for topic, p in partitions if topic in KIND_BY_TOPIC}
        if self.revoked is not None and lines:
            self.revoked(lines)

    def held_offsets(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self.first_unsaved)

    def flush(self) -> bool:
        def covered() -> dict[tuple[str, int], int]:
            with self._lock:
                return dict(self.last_seen)

        self.last_checkpoint = time.monotonic()
        ok, offsets = self.state.checkpoint(covered)
        if ok:
            with self._lock:
                for key, offset in offsets.items():
                    if self.last_seen.get(key, -1) > offset:
                        self.first_unsaved[key] = offset + 1  # records after the snapshot stay held
                    else:
                        self.first_unsaved.pop(key, None)
        return ok
