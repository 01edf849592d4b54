"""Live state from Kafka: one consumer thread, assigned (no group: every console replica sees everything).

At start it reads the recent past (the line topics from `history_s` ago, the latest recommendations and votes),
then follows the topics' ends. Each decoded record goes to `on_record(topic, value)`; the console folds it into
the twin and the feed and wakes the browsers' event streams. Offsets are never committed: the console's state is
a view, rebuilt from the topics at every start.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from lineguard import telemetry
from lineguard.avro import AvroSerde
from lineguard.kafka.clients import new_consumer
from lineguard.logs import event, get_logger
from lineguard.settings import Settings
from lineguard.topics import FEEDBACK, LINE_ALARMS, LINE_INSPECTIONS, LINE_OBSERVATIONS, RECOMMENDATIONS

log = get_logger(__name__)

LINE_TOPICS = (LINE_OBSERVATIONS, LINE_ALARMS, LINE_INSPECTIONS)
RECORDS = telemetry.counter("console", "records", "Records folded into the twin and feed.", ["topic"])


class Follower:
    def __init__(self, settings: Settings, on_record: Callable[[str, dict[str, Any]], None], *,
                 history_s: float, tail_recommendations: int = 200, tail_feedback: int = 5000) -> None:
        self.settings = settings
        self.on_record = on_record
        self.history_s = history_s
        self.tails = {RECOMMENDATIONS: tail_recommendations, FEEDBACK: tail_feedback}
        self.serde = AvroSerde(settings.schemas_dir, settings.schema_registry_url, settings.schema_registry_auth,
                               settings.topic_prefix)
        self.caught_up = threading.Event()
        self.assigned: set[str] = set()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._by_full = {settings.topic(t): t for t in (*LINE_TOPICS, RECOMMENDATIONS, FEEDBACK)}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kafka-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _assignment(self, consumer: Any) -> tuple[list[TopicPartition], dict[tuple[str, int], int]]:
        """Start offsets for every partition of the topics that exist, and the ends the history read must reach."""
        metadata = consumer.list_topics(timeout=10)
        since_ms = int((time.time() - self.history_s) * 1000)
        out: list[TopicPartition] = []
        goals: dict[tuple[str, int], int] = {}
        for full, topic in self._by_full.items():
            info = metadata.topics.get(full)
            if info is None or info.error is not None or not info.partitions:
                continue
            self.assigned.add(topic)
            for p in sorted(info.partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(full, p), timeout=10)
                if topic in self.tails:
                    start = max(low, high - self.tails[topic])
                else:
                    found = consumer.offsets_for_times([TopicPartition(full, p, since_ms)], timeout=10)[0].offset
                    start = found if found >= 0 else high
                out.append(TopicPartition(full, p, start))
                if high > start:
                    goals[(full, p)] = high
        return out, goals

    def _run(self) -> None:
        consumer = new_consumer(self.settings, f"lineguard-console-view-{uuid.uuid4().hex[:8]}",
                                **{"enable.auto.commit": False, "auto.offset.reset": "latest",
                                   "client.id": f"lineguard-{self.settings.service_name}-follower"})
        try:
            while not self._stop.is_set():  # the topics may not exist yet (a fresh cluster): retry
                try:
                    assignment, goals = self._assignment(consumer)
                except KafkaException as exc:
                    assignment, goals = [], {}
                    error = exc.args[0] if exc.args else exc
                    self.error = f"Kafka unreachable ({error.str() if hasattr(error, 'str') else error})"
                if len(self.assigned) == len(self._by_full):
                    break
                self.error = self.error or f"topics missing: {sorted(set(self._by_full.values()) - self.assigned)}"
                self._stop.wait(2.0)
            if self._stop.is_set():
                return
            self.error = None
            consumer.assign(assignment)
            event(log, "following", partitions=len(assignment), history_records=sum(goals.values()))
            quiet_since = time.monotonic()
            while not self._stop.is_set():
                messages = consumer.consume(500, 0.2)
                now = time.monotonic()
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            self.error = f"Kafka: {err.str()}"
                        continue
                    self.error = None
                    quiet_since = now
                    key = (msg.topic(), msg.partition())
                    if key in goals and msg.offset() + 1 >= goals[key]:
                        del goals[key]
                    topic = self._by_full.get(msg.topic())
                    if topic is None:
                        continue
                    try:
                        value = self.serde.decode(topic, msg.value())
                    except Exception as exc:  # noqa: BLE001 - a record we cannot read is skipped, never fatal
                        event(log, "record_skipped", level=logging.WARNING, topic=topic, offset=msg.offset(),
                              error=str(exc)[:200])
                        continue
                    RECORDS.labels(topic).inc()
                    try:
                        self.on_record(topic, value)
                    except Exception as exc:  # noqa: BLE001 - one odd record must not stop the view
                        event(log, "record_not_folded", level=logging.WARNING, topic=topic, error=repr(exc)[:200])
                # Caught up: every partition reached the end it had when we assigned (Tansu may report an end
                # a little past the last record, so a quiet second counts too).
                if not self.caught_up.is_set() and (not goals or now - quiet_since > 1.0):
                    self.caught_up.set()
                    event(log, "history_read", partitions_short=len(goals))
        finally:
            consumer.close()
