"""The at-least-once consumer loop every stream service runs on.

consume a batch -> decode (Avro) -> handler -> produce outputs -> wait for every delivery (outputs and dead
letters) -> store offsets. Offsets are never stored before the output is acknowledged, so a crash replays at
most the unfinished batch. A record that cannot be decoded or processed goes to `<topic>.dlq` with its original
key and bytes and Kafka Connect style headers; the loop never stops on bad input. SIGTERM sets a flag: the loop
finishes the batch, flushes, commits synchronously and closes the consumer (leaving the group at once).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from lineguard import telemetry
from lineguard.avro import AvroSerde, SerdeError
from lineguard.catalog import DLQ_SUFFIX
from lineguard.health import Health
from lineguard.kafka.clients import new_consumer
from lineguard.kafka.deadletters import error_headers
from lineguard.kafka.producer import Producer
from lineguard.kafka.records import Handler, Record, Sink
from lineguard.logs import Throttle, event, get_logger, throttled_event
from lineguard.settings import Settings

log = get_logger("lineguard.kafka")


@dataclass(slots=True)
class _Batch:
    """One consumed batch while its outputs are in flight."""

    started: float
    outstanding: int = 0  # outputs and dead letters produced and not yet reported
    failures: list[str] = field(default_factory=list)
    first_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    consumed: dict[tuple[str, int], int] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)


@dataclass
class LoopStats:
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    batches: int = 0
    redelivered_batches: int = 0


@dataclass
class ConsumerLoop:
    """At-least-once consume-transform-produce loop with dead letters, backpressure and graceful shutdown."""

    settings: Settings
    group_id: str
    topics: list[str]  # logical names
    handler: Handler
    producer: Producer | None = None
    serde: AvroSerde | None = None
    sink: Sink | None = None
    decode: bool = True
    batch_size: int = 1000
    batch_timeout_s: float = 0.2
    health: Health | None = None
    flush_timeout_s: float = 30.0
    max_pending_batches: int = 4
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    stats: LoopStats = field(default_factory=LoopStats)
    consumer: Any = None  # injected (tests: the in-memory broker); default: one from lineguard.kafka.clients
    # The exceptions that mean "bad input": those records are dead-lettered (SerdeError always is). Any other
    # exception from the handler is a bug: the batch is retried, then the loop stops with `failure` set.
    dead_letter_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        self.producer = self.producer or Producer(self.settings, self.serde)
        self.serde = self.serde or self.producer.serde
        self.health = self.health or Health(self.settings.service_name, self.settings.liveness_timeout_s)
        self._stopping = threading.Event()
        self.failure: str | None = None  # why the loop stopped by itself (None: it was asked to stop)
        self._pending: deque[_Batch] = deque()
        self._done_offsets: dict[tuple[str, int], int] = {}  # next offset after the last acknowledged batch
        self._prefix = self.settings.topic_prefix
        self._assigned: set[tuple[str, int]] = set()
        service = self.settings.service_name
        self._m_consumed = telemetry.counter(service, "messages_consumed", "Records consumed.", ["topic"])
        self._m_dlq = telemetry.counter(service, "dead_letters", "Records sent to a dead-letter topic.",
                                        ["topic", "stage"])
        self._m_batch = telemetry.histogram(service, "batch_duration_seconds",
                                            "Time to process one batch, from consume to offsets stored.")
        self._m_redeliver = telemetry.counter(service, "batch_retries",
                                              "Batches rewound because an output was not acknowledged.")
        self._m_lag = telemetry.gauge(service, "consumer_lag_records",
                                      "Records in a partition not consumed yet: high watermark minus position.",
                                      ["topic", "partition"])
        self._m_uncommitted = telemetry.gauge(
            service, "uncommitted_records", "Records consumed whose offsets are not stored for commit yet: outputs "
            "in flight, or rows a sink (the data lake) has not made durable.", ["topic", "partition"])
        self._consumed_next: dict[tuple[str, int], int] = {}  # next offset after the last record consumed
        self._stored_next: dict[tuple[str, int], int] = {}  # the offset last stored for commit
        self._lag_reported_at = 0.0
        self._dlq_log_throttle = Throttle()  # per topic, stage and error class; the DLQ metric counts them all
        if self.consumer is None:
            self.consumer = new_consumer(self.settings, self.group_id, **self.consumer_overrides)

    # --- lifecycle ------------------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish its batch and shut down (safe from a signal handler)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)
        self.health.set_ready(True)
        event(log, "partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish what is in flight, make buffered output durable and commit, so the next owner does not redo it.
        self.producer.flush(self.flush_timeout_s)
        self._complete()
        if self.sink is not None:
            self.sink.flush()
            self._store_held_offsets()
        with contextlib.suppress(KafkaException):  # nothing stored yet
            consumer.commit(asynchronous=False)
        self._assigned.difference_update((p.topic, p.partition) for p in partitions)
        for p in partitions:
            tp = (p.topic, p.partition)
            self._done_offsets.pop(tp, None)
            self._consumed_next.pop(tp, None)
            self._stored_next.pop(tp, None)
            for gauge in (self._m_lag, self._m_uncommitted):
                with contextlib.suppress(KeyError):
                    gauge.remove(p.topic[len(self._prefix):], str(p.partition))
        if not self._assigned:
            self.health.set_ready(False, "no partitions assigned")
        event(log, "partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def run(self) -> LoopStats:
        """Run until stop(); then finish, flush, commit and close."""
        full_topics = [self._prefix + t for t in self.topics]
        self.consumer.subscribe(full_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        self.health.set_ready(False, "waiting for partition assignment")
        event(log, "consumer_started", group=self.group_id, topics=full_topics)
        try:
            while not self._stopping.is_set():
                self.health.beat()
                messages = self.consumer.consume(self.batch_size, self.batch_timeout_s)
                if messages:
                    self._process_batch(messages)
                else:
                    self.producer.poll(0)
                    self._complete()
                    if self.sink is not None:
                        self._store_held_offsets()
                if time.monotonic() - self._lag_reported_at >= 1.0:
                    self._report_lag()
        finally:
            self._shutdown()
        return self.stats

    def _shutdown(self) -> None:
        event(log, "consumer_stopping", group=self.group_id, **self.stats.__dict__)
        try:
            if self.sink is not None:
                self.sink.flush()
                self._store_held_offsets()
            remaining = self.producer.flush(self.flush_timeout_s)
            if remaining:
                event(log, "shutdown_with_undelivered_records", level=40, remaining=remaining)
            self._complete()
            try:
                self.consumer.commit(asynchronous=False)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._NO_OFFSET:
                    event(log, "final_commit_failed", level=30, error=str(exc))
        finally:
            self.consumer.close()
            self.health.set_ready(False, "stopped")
            event(log, "consumer_stopped", group=self.group_id)

    # --- the batch ------------------------------------------------------------------------------------------

    def _process_batch(self, messages: list[Message]) -> None:
        """Decode, handle and produce one batch; its offsets are stored once all its outputs are acknowledged.

        Batches are pipelined: while Kafka acknowledges batch N the loop already works on N+1, and offsets are
        stored strictly in batch order (`_complete`), so a crash never commits past an unacknowledged output.
        """
        batch = _Batch(time.perf_counter())

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            batch.outstanding -= 1
            if err is not None:
                batch.failures.append(f"{msg.topic()}: {err.str()}")
                self.producer.note_delivery_error(err)

        first_offsets = batch.first_offsets
        next_offsets = batch.next_offsets
        produced = batch.produced
        consumed = batch.consumed
        batch_span = None
        batch_trace: bytes | None = None
        processed: list[Record] = []
        produce_encoded = self.producer.produce_encoded
        encode = self.producer.serde.encode
        prefix = self._prefix
        prefix_len = len(prefix)
        decode = self.decode
        serde = self.serde
        handler = self.handler
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    event(log, "consume_error", level=30, error=err.str())
                continue
            full_topic = msg.topic()
            tp = (full_topic, msg.partition())
            offset = msg.offset()
            if tp not in first_offsets:
                first_offsets[tp] = offset
            next_offsets[tp] = offset + 1
            consumed[tp] = consumed.get(tp, 0) + 1
            topic = full_topic[prefix_len:]
            raw = msg.value()
            headers = msg.headers() or []
            try:
                value = serde.decode(topic, raw) if decode else raw
            except SerdeError as exc:
                self._dead_letter(msg, topic, "deserialize", exc, on_delivery)
                batch.outstanding += 1
                continue
            record = Record(topic, tp[1], offset, msg.key(), value, headers, msg.timestamp()[1], raw)
            try:
                outputs = handler(record)
                if outputs:
                    trace_header = telemetry.traceparent(headers)
                    if trace_header is None:
                        # An input without trace context: one `process` span for the whole batch, not one per
                        # record (a span costs far more than the transformation itself).
                        if batch_span is None:
                            batch_span, batch_trace = telemetry.start_batch_span(full_topic, self.group_id)
                        trace_header = batch_trace
                    for out in outputs:
                        out_headers = out.headers
                        if trace_header is not None and out_headers is not headers and \
                                telemetry.traceparent(out_headers) is None:
                            # One trace follows a reading across services: forward its context.
                            out_headers = [*(out_headers or ()), ("traceparent", trace_header)]
                        value = out.value
                        if isinstance(value, dict):
                            value = encode(out.topic, value)
                        key = out.key
                        produce_encoded(prefix + out.topic, key.encode() if isinstance(key, str) else key, value,
                                        out_headers, on_delivery)
                        batch.outstanding += 1  # after produce(): only a queued record gets a report
                        produced[out.topic] = produced.get(out.topic, 0) + 1
            except Exception as exc:  # noqa: BLE001 - any handler failure dead-letters this record only
                self._dead_letter(msg, topic, "process", exc, on_delivery)
                batch.outstanding += 1
                continue
            processed.append(record)
        if batch_span is not None:
            batch_span.end()
        for tp, first in first_offsets.items():
            self._stored_next.setdefault(tp, first)  # nothing stored yet: the group's position when we started
        self._consumed_next.update(next_offsets)
        self.stats.consumed += len(messages)
        self.stats.batches += 1
        if processed and self.sink is not None:
            try:
                self.sink.write(processed)
            except Exception as exc:  # noqa: BLE001 - rewind and retry the batch, never skip it
                batch.failures.append(f"sink: {type(exc).__name__}: {exc}")
        self._pending.append(batch)
        self.producer.poll(0)
        self._complete()
        if len(self._pending) >= self.max_pending_batches:
            self._wait_for_oldest()

    def _complete(self) -> None:
        """Store the offsets of every leading batch whose outputs are all acknowledged; rewind on a failure."""
        prefix_len = len(self._prefix)
        while self._pending and self._pending[0].outstanding <= 0:
            batch = self._pending.popleft()
            if batch.failures:
                self._rewind(batch)
                return
            for (full_topic, _), count in batch.consumed.items():
                self._m_consumed.labels(full_topic[prefix_len:]).inc(count)
            for topic, count in batch.produced.items():
                self.producer.count_delivered(topic, count)
                self.stats.produced += count
            self._store(batch.next_offsets)
            self._done_offsets.update(batch.next_offsets)
            self._m_batch.observe(time.perf_counter() - batch.started)

    def _wait_for_oldest(self) -> None:
        """Too many batches in flight: wait for the oldest; if Kafka stays slow, pause fetching until it catches up."""
        deadline = time.monotonic() + self.flush_timeout_s
        while self._pending and self._pending[0].outstanding > 0 and time.monotonic() < deadline \
                and not self._stopping.is_set():
            self.health.beat()
            self.producer.poll(0.05)
        if self._pending and self._pending[0].outstanding > 0:
            self._drain_paused()
        self._complete()

    def _store(self, next_offsets: dict[tuple[str, int], int]) -> None:
        held = self.sink.held_offsets() if self.sink is not None else {}
        prefix = self._prefix
        offsets = []
        for (full_topic, partition), nxt in next_offsets.items():
            hold = held.get((full_topic[len(prefix):], partition))
            target = nxt if hold is None else min(nxt, hold)
            if (full_topic, partition) in self._assigned or not self._assigned:
                offsets.append(TopicPartition(full_topic, partition, target))
        if offsets:
            try:
                self.consumer.store_offsets(offsets=offsets)
            except KafkaException as exc:
                # Partition revoked meanwhile: its next owner replays the records (at-least-once).
                event(log, "store_offsets_failed", level=30, error=str(exc))
                return
            self._note_stored(offsets)

    def _store_held_offsets(self) -> None:
        """After a sink wrote buffered rows, move the stored offsets forward to what is now durable (never past a
        batch whose outputs are still in flight)."""
        if self.sink is None or not self._done_offsets:
            return
        held = self.sink.held_offsets()
        prefix = self._prefix
        offsets = []
        for (full_topic, partition), done in self._done_offsets.items():
            if self._assigned and (full_topic, partition) not in self._assigned:
                continue
            hold = held.get((full_topic[len(prefix):], partition))
            offsets.append(TopicPartition(full_topic, partition, done if hold is None else min(done, hold)))
        if offsets:
            with contextlib.suppress(KafkaException):
                self.consumer.store_offsets(offsets=offsets)
                self._note_stored(offsets)

    def _note_stored(self, offsets: list[TopicPartition]) -> None:
        stored = self._stored_next
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if tp.offset > stored.get(key, -1):
                stored[key] = tp.offset

    def _report_lag(self) -> None:
        """Per assigned partition: consumer lag (high watermark from the last fetch minus position) and records
        consumed but not yet stored for commit. Once a second, from the loop's thread."""
        self._lag_reported_at = time.monotonic()
        prefix_len = len(self._prefix)
        for (full_topic, partition), position in list(self._consumed_next.items()):
            labels = (full_topic[prefix_len:], str(partition))
            stored = self._stored_next.get((full_topic, partition), position)
            self._m_uncommitted.labels(*labels).set(max(0, position - stored))
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(full_topic, partition), cached=True)
            except (KafkaException, RuntimeError):
                continue
            if high is not None and high >= 0:
                self._m_lag.labels(*labels).set(max(0, high - position))

    def _drain_paused(self) -> int:
        """Kafka is slow to acknowledge: stop fetching (pause) until the outputs are delivered, then resume."""
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        event(log, "backpressure_paused", partitions=len(assignment), undelivered=len(self.producer))
        try:
            while len(self.producer) and not self._stopping.is_set():
                self.health.beat()
                self.producer.poll(0.2)
        finally:
            self.consumer.resume(assignment)
            event(log, "backpressure_resumed", undelivered=len(self.producer))
        return len(self.producer)

    def _rewind(self, failed: _Batch) -> None:
        """An output was not acknowledged: seek back to the failed batch and process it (and every later one in
        flight) again; nothing is skipped, some outputs may repeat (at-least-once)."""
        targets = dict(failed.first_offsets)
        for later in self._pending:
            for tp, offset in later.first_offsets.items():
                targets[tp] = min(offset, targets.get(tp, offset))
        self._pending.clear()
        self.stats.redelivered_batches += 1
        self._m_redeliver.inc()
        event(log, "batch_not_acknowledged_retrying", level=30, failures=failed.failures[:5],
              partitions=len(targets))
        for (full_topic, partition), offset in targets.items():
            try:
                self.consumer.seek(TopicPartition(full_topic, partition, offset))
            except KafkaException as exc:
                event(log, "seek_failed", level=30, error=str(exc))
        time.sleep(0.5)

    def _dead_letter(self, msg: Message, topic: str, stage: str, exc: BaseException,
                     on_delivery: Callable[[KafkaError | None, Message], None]) -> None:
        headers = list(msg.headers() or []) + error_headers(
            topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), stage=stage,
            error_class=type(exc).__name__, message=str(exc), service=self.settings.service_name,
            group=self.group_id, stacktrace="".join(traceback.format_exception(exc, limit=5)))
        self.producer.produce(topic + DLQ_SUFFIX, msg.key(), msg.value(), headers, on_delivery=on_delivery,
                              trace=False)
        self.stats.dead_lettered += 1
        self._m_dlq.labels(topic, stage).inc()
        throttled_event(log, self._dlq_log_throttle, (topic, stage, type(exc).__name__), "dead_lettered",
                        level=30, topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), stage=stage,
                        error=f"{type(exc).__name__}: {exc}"[:500])
