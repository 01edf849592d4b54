"""The normalizer's alarm state, partitioned like its input, so several workers each hold only their own alarms.

Raw alarms arrive on raw.alarms.v1 keyed by device; the alarm states the normalizer publishes go to line.alarms.v1
keyed by line (the advisor and the notifier need them co-partitioned with the other line topics). The two topics
are not co-partitioned: the alarms of one input partition are spread over every partition of line.alarms.v1, so a
worker restoring from line.alarms.v1 would have to read all of it. Every AlarmState therefore also goes, in the
same batch as the published one, to `normalizer.alarms.changelog.v1` (compacted, key: alarm id), written to the
partition number of the raw record it came from (as a Kafka Streams changelog is). On assignment a worker reads
only the changelog partitions of its raw.alarms.v1 partitions; on revoke (after the loop's checkpoint, so every
change is in the changelog) it drops their alarms.

The changelog is an output of the batch like the published record: offsets are stored only when both are
acknowledged, so a crash leaves the changelog at most one uncommitted batch ahead of or behind the published
topic; the replay gives the same outputs (raw ids remembered, sequences folded: see `alarms.py`).

Upgrade: a changelog partition that is empty (never written) is seeded once from line.alarms.v1 (the alarms of
devices hashing to it), and a marker record (`SEEDED_KEY`) is written so the seed is never read again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

from confluent_kafka import KafkaException

from lineguard import telemetry
from lineguard.kafka import Output, Producer, Record, Sink, new_admin, read_topic
from lineguard.kafka.changelog import ensure_changelog as ensure_compacted_changelog
from lineguard.logs import event, get_logger
from lineguard.partitioning import partition_for
from lineguard.settings import Settings
from lineguard.topics import LINE_ALARMS, NORMALIZER_ALARMS_CHANGELOG, RAW_ALARMS
from services.normalizer.alarms import AlarmTracker

log = get_logger(__name__)

CHANGELOG = NORMALIZER_ALARMS_CHANGELOG
SEEDED_KEY = "__seeded__"  # a partition's marker: seeded from line.alarms.v1 (or nothing to seed); not an alarm
_ALERT_PREFIX = "urn:ngsi-ld:Alert:"


def encode(state: dict) -> bytes:
    return json.dumps(state, separators=(",", ":"), sort_keys=True).encode()


def device_of(state: dict) -> str | None:
    """The device of an AlarmState, from its id `urn:ngsi-ld:Alert:<device>-<alarm type>` (alarms.alarm_id)."""
    alarm_id, alarm_type = state.get("alarm_id") or "", state.get("alarm_type") or ""
    suffix = "-" + alarm_type
    if not alarm_id.startswith(_ALERT_PREFIX) or not alarm_id.endswith(suffix):
        return None
    return alarm_id[len(_ALERT_PREFIX):-len(suffix)] or None


def ensure_changelog(settings: Settings, changelog: str = CHANGELOG, source: str = RAW_ALARMS) -> int:
    """Create the changelog with `source`'s partition count, or check it has it; returns the count. A worker
    restores the changelog partitions numbered as its input partitions, so the counts must match."""
    admin = new_admin(settings)
    existing = admin.list_topics(timeout=10).topics
    info = existing.get(settings.topic(source))
    if info is None or not info.partitions:
        raise ValueError(f"{settings.topic(source)} does not exist (create the catalog topics first)")
    partitions = len(info.partitions)
    ensure_compacted_changelog(settings, changelog, partitions, settings.topic(source), admin, existing)
    return partitions


class AlarmChangelog(Sink):
    """The consumer loop's state owner for the alarm tracker: the changelog output of each alarm, restore on
    assignment, drop on revoke. Its records are outputs of the loop's batches, so it holds no offsets itself."""

    def __init__(self, settings: Settings, tracker: AlarmTracker, producer: Producer, partitions: int,
                 timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.tracker = tracker
        self.producer = producer
        self.partitions = partitions  # raw.alarms.v1's (and the changelog's) partition count
        self.timeout_s = timeout_s
        self.owned: set[int] = set()
        service = settings.service_name
        self._m_restored = telemetry.counter(
            service, "alarm_changelog_records_restored", "Alarm changelog records read on assignment, by partition "
            "(each worker reads only the partitions it was assigned).", ["partition"])
        self._m_seeded = telemetry.counter(
            service, "alarm_state_seeded_records", "line.alarms.v1 records read to seed an empty changelog "
            "partition (once per partition, after an upgrade).")
        self._m_owned = telemetry.gauge(service, "alarm_partitions_owned",
                                        "1 for each raw.alarms.v1 partition whose alarm state this worker holds.",
                                        ["partition"])
        self._m_active = telemetry.gauge(service, "alarms_active", "Active alarms this worker holds.")

    # --- the loop's handler side ---------------------------------------------------------------------------

    def output(self, record: Record, state: dict) -> Output:
        """The changelog copy of an AlarmState caused by `record` (a raw.alarms.v1 record), to its partition."""
        self.tracker.note_partition(state["alarm_id"], record.partition)
        return Output(CHANGELOG, state["alarm_id"], encode(state), partition=record.partition)

    # --- rebalance hooks (the loop's thread) ---------------------------------------------------------------

    def on_assign(self, partitions: Sequence[tuple[str, int]]) -> None:
        mine = {p for topic, p in partitions if topic == RAW_ALARMS}
        if mine:
            self.restore(mine)

    def on_revoke(self, partitions: Sequence[tuple[str, int]]) -> None:
        gone = {p for topic, p in partitions if topic == RAW_ALARMS}
        if not gone:
            return
        dropped = self.tracker.drop_partitions(gone)
        self.owned -= gone
        for p in gone:
            self._m_owned.labels(str(p)).set(0)
        self._m_active.set(self.tracker.active_count())
        event(log, "alarm_partitions_dropped", partitions=sorted(gone), alarms=dropped)

    def restore(self, partitions: set[int]) -> int:
        """Read the changelog partitions `partitions` into the tracker (seeding an empty one first); returns the
        alarm records read. Failures to read leave the state as it is (logged): alarms then start afresh."""
        started = time.monotonic()
        by_partition: dict[int, list[dict]] = {p: [] for p in partitions}
        seen: set[int] = set()
        records = seeded = 0
        try:
            for record in read_topic(self.settings, CHANGELOG, decode=False, partitions=partitions,
                                     timeout_s=self.timeout_s):
                seen.add(record.partition)
                self._m_restored.labels(str(record.partition)).inc()
                if record.key is None or record.key.decode() == SEEDED_KEY or record.value is None:
                    continue
                try:
                    by_partition[record.partition].append(json.loads(record.value))
                except ValueError as exc:
                    event(log, "alarm_changelog_record_unreadable", level=logging.WARNING,
                          partition=record.partition, offset=record.offset, error=str(exc))
            empty = partitions - seen
            if empty:
                seeded = self._seed(empty, by_partition)
        except (KafkaException, TimeoutError) as exc:
            event(log, "alarm_state_not_restored", level=logging.WARNING, partitions=sorted(partitions),
                  error=str(exc))
        for p, states in by_partition.items():
            records += self.tracker.restore(states, partition=p)
        self.owned |= partitions
        for p in partitions:
            self._m_owned.labels(str(p)).set(1)
        self._m_active.set(self.tracker.active_count())
        event(log, "alarm_state_restored", records=records, active=self.tracker.active_count(),
              partitions=sorted(partitions), seeded=seeded, seconds=round(time.monotonic() - started, 3))
        return records

    def _seed(self, empty: set[int], by_partition: dict[int, list[dict]]) -> int:
        """Changelog partitions never written: take their alarms from line.alarms.v1 (all of it is read: it is
        keyed by line, not by device) and write them, then the marker, to the changelog."""
        serde = self.producer.serde
        taken = 0
        for record in read_topic(self.settings, LINE_ALARMS, serde=serde, timeout_s=self.timeout_s):
            self._m_seeded.inc()
            state = record.value
            device = device_of(state) if isinstance(state, dict) else None
            if device is None:
                continue
            p = partition_for(device, self.partitions)
            if p in empty:
                by_partition[p].append(state)
                taken += 1
        failures: list[str] = []

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                failures.append(str(err))

        for p in sorted(empty):
            for state in by_partition[p]:
                self.producer.produce(CHANGELOG, state["alarm_id"], encode(state), on_delivery=on_delivery,
                                      trace=False, partition=p)
            self.producer.produce(CHANGELOG, SEEDED_KEY, b"{}", on_delivery=on_delivery, trace=False, partition=p)
        remaining = self.producer.flush(30)
        if remaining or failures:
            # Not fatal: the state is restored in memory; the seed is read again on the next assignment.
            event(log, "alarm_changelog_seed_not_written", level=logging.WARNING, remaining=remaining,
                  failures=failures[:3])
        event(log, "alarm_changelog_seeded", partitions=sorted(empty), alarms=taken)
        return taken
