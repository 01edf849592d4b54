"""Alarm state: raw raises and clears become state changes of alarms with stable ids.

The alarm id is a function of the source device and the alarm type only (`urn:ngsi-ld:Alert:<device>-<type>`),
so it is the same on every instance and after every restart. A raise of an alarm that is already active updates it
(`raise_count` + 1, latest message and severity) instead of opening a new one; a clear closes it with
`cleared_at` and `duration_ms`.

Applying is idempotent by raw id: a raw alarm seen again (a batch the loop rewound, a replay after a crash, a
duplicate from the source) gets the output it got the first time and does not count twice. At start-up the
service restores the state from what it published on `line.alarms.v1` (`restore`), so alarms that span a restart
keep their raise time, count and duration; see the README for what remains approximate.

Every state change carries `sequence`, numbered per alarm id (1, 2, 3, ... over the alarm's whole life, across
activations). A replay after a crash republishes outputs it made before (same raw id, same output, same
sequence), so the topic can hold a change twice, and the second copy after later changes:
`x1(1) x2(2) x3-clear(3) x1(1) x2(2)`. Restoring folds by alarm id and sequence: a change whose sequence is not
above the alarm's current one is a copy and leaves the state alone, so a crash in the middle of a replay never rolls
the state back (and the replayed clear is not then wrongly taken for "already applied" on top of an active state).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from lineguard.plant import entity_id

SEVERITIES = ("critical", "major", "minor", "warning", "indeterminate")
_SEVERITY_ALIASES = {
    "critical": "critical", "crit": "critical", "fatal": "critical", "emergency": "critical", "alarm": "major",
    "major": "major", "high": "major", "error": "major", "err": "major",
    "minor": "minor", "medium": "minor", "low": "minor",
    "warning": "warning", "warn": "warning", "info": "warning", "notice": "warning",
    "indeterminate": "indeterminate", "unknown": "indeterminate",
}
_RAISE = frozenset(("raise", "raised", "set", "active", "activate", "on", "trigger", "triggered"))
_CLEAR = frozenset(("clear", "cleared", "reset", "inactive", "deactivate", "off", "resolve", "resolved"))


class AlarmActionError(ValueError):
    """The raw alarm's action is neither a raise nor a clear."""


def normalize_severity(raw: str | None) -> str:
    """The source's severity as one of SEVERITIES; absent or unrecognised -> indeterminate."""
    if not raw:
        return "indeterminate"
    return _SEVERITY_ALIASES.get(raw.strip().lower(), "indeterminate")


def normalize_action(raw: str) -> str:
    action = raw.strip().lower()
    if action in _RAISE:
        return "raise"
    if action in _CLEAR:
        return "clear"
    raise AlarmActionError(f"alarm action {raw!r} is neither a raise nor a clear")


def alarm_id(device: str, alarm_type: str) -> str:
    return entity_id("Alert", device, alarm_type)


@dataclass(slots=True)
class _Active:
    raised_at: int
    raise_count: int
    severity: str


class AlarmTracker:
    def __init__(self, replay_memory: int = 100_000) -> None:
        self._active: dict[str, _Active] = {}
        self._by_raw: OrderedDict[str, dict] = OrderedDict()  # raw id -> the output it caused (bounded)
        self._replay_memory = replay_memory
        # alarm id -> the sequence of its latest state change (kept after a clear: the next activation goes on)
        self._sequence: dict[str, int] = {}
        # alarm id -> the raw.alarms.v1 partition its device's records arrive on (several workers: each holds the
        # alarms of its own partitions and drops them when the partition is revoked)
        self._partition: dict[str, int] = {}

    def active_count(self) -> int:
        return len(self._active)

    def snapshot(self) -> dict[str, tuple[str, int, int, str, int]]:
        """alarm id -> (state, sequence, raised_at or 0, severity or '', raise_count) for every alarm seen;
        what tests compare between an interrupted and an uninterrupted run."""
        out: dict[str, tuple[str, int, int, str, int]] = {}
        for key, sequence in self._sequence.items():
            state = self._active.get(key)
            out[key] = (("active", sequence, state.raised_at, state.severity, state.raise_count) if state
                        else ("cleared", sequence, 0, "", 0))
        return out

    def _remember(self, raw_id: str, out: dict) -> None:
        self._by_raw[raw_id] = out
        if len(self._by_raw) > self._replay_memory:
            self._by_raw.popitem(last=False)

    def note_partition(self, key: str, partition: int) -> None:
        """The input partition of alarm `key` (the loop's record partition), for `drop_partitions`."""
        self._partition[key] = partition

    def partitions(self) -> set[int]:
        return set(self._partition.values())

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget every alarm of `partitions` (revoked: another worker now owns them and restores them from the
        changelog), with the raw ids remembered for them; returns how many alarms were dropped."""
        gone = set(partitions)
        keys = {key for key, p in self._partition.items() if p in gone}
        for key in keys:
            self._partition.pop(key, None)
            self._sequence.pop(key, None)
            self._active.pop(key, None)
        if keys:
            for raw_id in [r for r, out in self._by_raw.items() if out["alarm_id"] in keys]:
                del self._by_raw[raw_id]
        return len(keys)

    def restore(self, outputs: Iterable[dict], partition: int | None = None) -> int:
        """Rebuild the state from published AlarmState records, oldest first; returns how many were read.
        `partition`: the input partition these alarms belong to (a changelog partition of the same number).

        Idempotent fold by alarm id and sequence: a record whose sequence is not above the alarm's current one is
        a copy a replay republished (or an older change) and changes nothing. Records written before `sequence`
        existed (None) are applied in topic order, as they always were."""
        count = 0
        sequences = self._sequence
        for out in outputs:
            count += 1
            key = out["alarm_id"]
            if partition is not None:
                self._partition[key] = partition
            sequence = out.get("sequence")
            if sequence is not None:
                if sequence <= sequences.get(key, 0):
                    self._remember(out["raw_id"], out)  # a copy: same raw id, same output
                    continue
                sequences[key] = sequence
            else:
                sequences[key] = sequences.get(key, 0) + 1
            self._remember(out["raw_id"], out)
            if out["state"] == "active":
                self._active[key] = _Active(out["raised_at"], out["raise_count"], out["severity"])
            else:
                self._active.pop(key, None)
        return count

    def apply(self, raw: dict, line_id: str, entity: str, observed_at: int) -> dict:
        """Apply one raw alarm (already validated) and return the AlarmState record it causes."""
        previous = self._by_raw.get(raw["id"])
        if previous is not None:  # seen before: same input, same output, state untouched
            return dict(previous)
        action = normalize_action(raw["action"])
        device, alarm_type = raw["device"], raw["alarm_type"]
        key = alarm_id(device, alarm_type)
        active = self._active
        state = active.get(key)
        severity_given = raw.get("severity")
        sequence = self._sequence.get(key, 0) + 1
        self._sequence[key] = sequence
        out = {
            "alarm_id": key, "line_id": line_id, "entity_id": entity, "alarm_type": alarm_type,
            "message": raw.get("message"), "updated_at": observed_at, "raw_id": raw["id"], "sequence": sequence,
        }
        if action == "raise":
            if state is None:
                state = _Active(observed_at, 1, normalize_severity(severity_given))
                active[key] = state
            else:
                state.raise_count += 1
                if severity_given:
                    state.severity = normalize_severity(severity_given)
            out.update(severity=state.severity, state="active", raised_at=state.raised_at, cleared_at=None,
                       duration_ms=None, raise_count=state.raise_count)
        elif state is not None:
            del active[key]
            out.update(severity=state.severity, state="cleared", raised_at=state.raised_at, cleared_at=observed_at,
                       duration_ms=max(0, observed_at - state.raised_at), raise_count=state.raise_count)
        else:  # the raise was never seen (before the retained history, or a clear repeated): no duration
            out.update(severity=normalize_severity(severity_given), state="cleared", raised_at=observed_at,
                       cleared_at=observed_at, duration_ms=None, raise_count=0)
        self._remember(raw["id"], out)
        return dict(out)
