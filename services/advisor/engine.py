"""Tumbling windows per line, triggers and their rate limits: pure state, no Kafka.

`WindowEngine.add(state, kind, record)` folds one unified record into the line's state and returns the immediate
evaluations it fired (critical alarm, defect spike); `advance(state, lagging)` moves the line's watermark and
returns the scheduled evaluations of the windows whose end (plus a grace for late records) it passed, and a
silence evaluation when a machine stopped reporting. Everything is driven by event time, so a
replay of the same records after a crash reaches the same windows, the same triggers at the same records, and
the same recommendation ids. Wall-clock time is used only to close the windows of a line that stopped sending
anything at all (`close_idle`).

Rate limits: at most one immediate evaluation per line, window and trigger, and none within `cooldown_ms`
(event time) of the previous one of the same trigger, so an alarm storm gives one recommendation, not a hundred.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from services.advisor.memory import LineMemory
from services.advisor.recommend import recommendation_id
from services.advisor.window import LineHistory, LineWindow, window_bounds

EVENT_TIME_FIELD = {"observations": "observed_at", "alarms": "updated_at", "inspections": "captured_at"}


@dataclass(frozen=True)
class EngineConfig:
    window_ms: int = 300_000
    grace_ms: int = 10_000  # a window closes when the line's event time passes its end by this much
    cooldown_ms: int = 120_000  # between two immediate evaluations of the same trigger on a line
    spike_rate: float = 0.2  # a defect class at this share of the window's items...
    spike_min_count: int = 10  # ...and at least this many such items
    silence_after_ms: int = 90_000
    silence_check_every_ms: int = 10_000
    idle_close_ms: int = 60_000  # wall clock without any record before a silent line's windows are closed
    keep_done: int = 500  # recently published ids remembered per line


@dataclass
class Due:
    """An evaluation to run: a window (a snapshot, cut at `cut_ms` for immediate triggers) and its trigger."""

    id: str
    line_id: str
    trigger: str
    window_start: int
    window_end: int  # the nominal end (scheduled) or the cut (immediate)
    window: dict[str, Any]
    history: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Due:
        return cls(**raw)


@dataclass
class LineState:
    line_id: str
    windows: dict[int, LineWindow] = field(default_factory=dict)
    history: LineHistory = field(default_factory=LineHistory)
    watermark: int = 0  # event time up to which the inputs are complete
    stream_max: dict[str, int] = field(default_factory=dict)  # newest event time per input kind
    closed_before: int = 0  # records older than this belong to closed windows: late, dropped
    fired: dict[str, int] = field(default_factory=dict)  # "<window start>|<trigger>" -> event time
    last_immediate: dict[str, int] = field(default_factory=dict)
    pending: dict[str, Due] = field(default_factory=dict)  # due, not yet published
    done: deque[str] = field(default_factory=deque)  # published ids, newest last
    silence_checked_at: int = 0
    late_records: int = 0
    memory: LineMemory = field(default_factory=LineMemory)  # actions and feedback on its recommendations

    def to_dict(self) -> dict[str, Any]:
        return {
            "line_id": self.line_id, "windows": {str(k): w.to_dict() for k, w in self.windows.items()},
            "history": self.history.to_dict(), "watermark": self.watermark, "closed_before": self.closed_before,
            "stream_max": dict(self.stream_max),
            "fired": dict(self.fired), "last_immediate": dict(self.last_immediate),
            "pending": {k: d.to_dict() for k, d in self.pending.items()}, "done": list(self.done),
            "silence_checked_at": self.silence_checked_at, "late_records": self.late_records,
            "memory": self.memory.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LineState:
        return cls(
            line_id=raw["line_id"],
            windows={int(k): LineWindow.from_dict(w) for k, w in raw.get("windows", {}).items()},
            history=LineHistory.from_dict(raw.get("history")), watermark=int(raw.get("watermark", 0)),
            closed_before=int(raw.get("closed_before", 0)), fired=dict(raw.get("fired", {})),
            stream_max=dict(raw.get("stream_max", {})),
            last_immediate=dict(raw.get("last_immediate", {})),
            pending={k: Due.from_dict(d) for k, d in raw.get("pending", {}).items()},
            done=deque(raw.get("done", [])), silence_checked_at=int(raw.get("silence_checked_at", 0)),
            late_records=int(raw.get("late_records", 0)), memory=LineMemory.from_dict(raw.get("memory")),
        )


def event_time(kind: str, record: dict[str, Any]) -> int:
    try:
        return int(record[EVENT_TIME_FIELD[kind]])
    except KeyError as exc:
        raise ValueError(f"a {kind} record needs {EVENT_TIME_FIELD.get(kind, 'a known kind')}") from exc


class WindowEngine:
    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()

    def add(self, state: LineState, kind: str, record: dict[str, Any]) -> list[Due]:
        """Fold one record; returns the immediate evaluations it fired (windows close in `advance`)."""
        at = event_time(kind, record)
        if at < state.closed_before:
            state.late_records += 1
            return []
        start, end = window_bounds(at, self.config.window_ms)
        window = state.windows.get(start)
        if window is None:
            window = state.windows[start] = LineWindow(state.line_id, start, end)
        if not window.add(kind, record):
            return []  # a replayed record: already counted
        state.stream_max[kind] = max(state.stream_max.get(kind, 0), at)
        if kind == "alarms" and record.get("severity") == "critical" and record.get("state") == "active":
            return self._fire(state, window, "critical_alarm", at)
        if kind == "inspections":
            station = window.stations.get(record["station"])
            if station is not None and any(
                    count >= self.config.spike_min_count and count / station.items >= self.config.spike_rate
                    for count in station.by_class.values()):
                return self._fire(state, window, "defect_spike", at)
        return []

    def advance(self, state: LineState, lagging: set[str] | frozenset[str] = frozenset()) -> list[Due]:
        """Move the line's watermark and close the windows it passed; check for silence.

        The watermark is the event time up to which every input is complete: the slowest of the inputs that
        still have unread records (`lagging`, e.g. a topic whose consumer has not caught up), or the newest
        event time when none has. So a window does not close while records for it wait in another topic."""
        if not state.stream_max:
            return []
        held = [state.stream_max.get(kind, 0) for kind in lagging]
        watermark = min(held) if held else max(state.stream_max.values())
        if watermark <= state.watermark:
            return []
        state.watermark = watermark
        due: list[Due] = []
        if state.watermark - state.silence_checked_at >= self.config.silence_check_every_ms:
            state.silence_checked_at = state.watermark
            latest = state.windows.get(window_bounds(state.watermark, self.config.window_ms)[0])
            if latest is not None and self._silent(state, latest):
                due += self._fire(state, latest, "silence", state.watermark)
        due += self._close_ready(state)
        return due

    def add_and_advance(self, state: LineState, kind: str, record: dict[str, Any]) -> list[Due]:
        """Both, for a single ordered stream of records (tests, the scenario suite, the benchmark)."""
        return self.add(state, kind, record) + self.advance(state)

    def close_idle(self, state: LineState, idle_for_ms: int) -> list[Due]:
        """The line sent nothing for `idle_for_ms` of wall-clock time: close its open windows now."""
        if idle_for_ms < self.config.idle_close_ms or not state.windows:
            return []
        return self._close_ready(state, force=True)

    # --- internals ---------------------------------------------------------------------------------------

    def _close_ready(self, state: LineState, force: bool = False) -> list[Due]:
        due: list[Due] = []
        for start in sorted(state.windows):
            window = state.windows[start]
            if not force and window.end_ms + self.config.grace_ms > state.watermark:
                break
            del state.windows[start]
            state.closed_before = max(state.closed_before, window.end_ms)
            rec_id = recommendation_id(state.line_id, window.start_ms, window.end_ms, "scheduled")
            due.append(Due(rec_id, state.line_id, "scheduled", window.start_ms, window.end_ms,
                           self._snapshot(window), state.history.to_dict()))
            state.history.update(window)
            state.fired = {k: v for k, v in state.fired.items() if int(k.split("|", 1)[0]) >= state.closed_before}
        for item in due:
            state.pending[item.id] = item
        return due

    def _fire(self, state: LineState, window: LineWindow, trigger: str, at: int) -> list[Due]:
        key = f"{window.start_ms}|{trigger}"
        if key in state.fired:
            return []
        last = state.last_immediate.get(trigger)
        if last is not None and at - last < self.config.cooldown_ms:
            return []
        state.fired[key] = at
        state.last_immediate[trigger] = at
        snapshot = self._snapshot(window)
        snapshot["end_ms"] = max(at + 1, window.start_ms + 1)  # the window as far as it went
        rec_id = recommendation_id(state.line_id, window.start_ms, window.end_ms, trigger)
        item = Due(rec_id, state.line_id, trigger, window.start_ms, snapshot["end_ms"], snapshot,
                   state.history.to_dict())
        state.pending[item.id] = item
        return [item]

    def _silent(self, state: LineState, window: LineWindow) -> bool:
        """An entity or station that reported before has been quiet for longer than allowed."""
        limit = state.watermark - self.config.silence_after_ms
        last_seen = dict(state.history.last_seen)
        reports: dict[str, int] = {}
        for w in state.windows.values():
            for entity, (_, last_at, count) in w.entities.items():
                last_seen[entity] = max(last_seen.get(entity, 0), last_at)
                reports[entity] = reports.get(entity, 0) + count
            for station in w.stations.values():
                key = f"station:{station.station}"
                last_seen[key] = max(last_seen.get(key, 0), station.last_at)
                reports[key] = reports.get(key, 0) + station.items
        for key, seen_at in last_seen.items():
            interval = state.history.interval_ms.get(key)
            if interval is None and reports.get(key, 0) < 3:
                continue  # how often it reports is not known yet
            if seen_at < limit and state.watermark - seen_at > 3 * (interval or 0.0):
                return True
        return False

    @staticmethod
    def _snapshot(window: LineWindow) -> dict[str, Any]:
        snapshot = copy.deepcopy(window.to_dict())
        snapshot["seen_ids"] = []  # the evaluation does not need them; the open window keeps its own
        return snapshot

    def mark_done(self, state: LineState, rec_id: str) -> None:
        state.pending.pop(rec_id, None)
        if rec_id not in state.done:
            state.done.append(rec_id)
            while len(state.done) > self.config.keep_done:
                state.done.popleft()
