"""The at-least-once consumer loop every stream service runs on.

consume a batch -> decode (Avro) -> handler -> produce outputs -> wait for every delivery (outputs and dead
letters) -> store offsets. Offsets are never stored before the output is acknowledged, so a crash replays at
most the unfinished batch. Batches are pipelined: while Kafka acknowledges batch N the loop works on N+1, and
offsets are stored strictly in batch order.

Bad input: a record that cannot be decoded (`SerdeError`), or whose handler raises one of the exception types the
service declares in `dead_letter_on`, goes to `<topic>.dlq` with its original key and bytes and Kafka Connect
style headers (a dead letter too big for its topic is stored truncated, marked in its headers). Any other
exception is a bug, not bad input: the batch is replayed `max_handler_attempts` times, then the loop stops with
`failure` set (the service exits 1) instead of dead-lettering every record. A `DlqLimit` stops the loop the same
way when dead letters look like a bad deploy (a long run of them, or most records of a window).

One checkpoint (`_checkpoint`) for revoke, shutdown and idle, always in this order: sinks, state, producer,
offsets. SIGTERM sets a flag: the loop finishes the batch, checkpoints, commits synchronously and closes the
consumer (leaving the group at once). Plain confluent-kafka (librdkafka); no stream framework is involved.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import CRITICAL, ERROR, WARNING
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from lineguard import telemetry
from lineguard.avro import AvroSerde, SerdeError
from lineguard.catalog import DLQ_SUFFIX
from lineguard.health import Health
from lineguard.kafka.clients import loop_producer_overrides, new_consumer
from lineguard.kafka.deadletters import DLQ_TRUNCATED_HEADER, error_headers, truncated_dead_letter
from lineguard.kafka.offsets import OffsetTracker
from lineguard.kafka.producer import Producer
from lineguard.kafka.records import Handler, Record, Sink, sink_takes_outputs
from lineguard.logs import Throttle, event, get_logger, throttled_event
from lineguard.settings import Settings

log = get_logger("lineguard.kafka")

_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE}


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
    dead_letters: int = 0
    abandoned: bool = False  # the loop is stopping because of this batch: never store its offsets


@dataclass
class LoopStats:
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    batches: int = 0
    redelivered_batches: int = 0


@dataclass
class DlqLimit:
    """When dead letters mean a bad deploy, not bad input: stop the loop (the service exits 1) rather than send
    everything to `.dlq`. Trips on `max_consecutive` dead letters with no good record between them, or on more
    than `max_ratio` of the records of a window of `window` records."""

    max_consecutive: int = 1000
    max_ratio: float = 0.5
    window: int = 10_000


@dataclass
class ConsumerLoop:
    """At-least-once consume-transform-produce loop with dead letters, backpressure and graceful shutdown."""

    settings: Settings
    group_id: str
    topics: list[str]  # logical names
    handler: Handler
    producer: Producer | None = None
    serde: AvroSerde | None = None
    sink: Sink | None = None  # a buffering output (the data lake): gets (record, outputs) pairs
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
    dlq_limit: DlqLimit | None = field(default_factory=DlqLimit)
    max_handler_attempts: int = 3
    retry_backoff_s: float = 0.5
    state: Sink | None = None  # a state owner (changelog): flushed after the sinks, before the producer

    def __post_init__(self) -> None:
        if self.producer is None:  # (not `or`: an idle Producer has len() 0, so it is falsy)
            self.producer = Producer(self.settings, self.serde, **loop_producer_overrides(self.settings))
        if self.serde is None:
            self.serde = self.producer.serde
        if self.health is None:
            self.health = Health(self.settings.service_name, self.settings.liveness_timeout_s,
                                 self.settings.restore_stall_timeout_s)
        self._stopping = threading.Event()
        self.failure: str | None = None  # why the loop stopped by itself (None: it was asked to stop)
        self._pending: deque[_Batch] = deque()
        self.offsets = OffsetTracker()
        self._prefix = self.settings.topic_prefix
        self._dead_letter_types: tuple[type[BaseException], ...] = (SerdeError, *self.dead_letter_on)
        self._participants: list[Any] = [p for p in (self.sink, self.state) if p is not None]
        self._sink_pairs = sink_takes_outputs(self.sink)
        self._bug_attempts: dict[tuple[str, int, int], int] = {}
        self._dlq_run = 0  # dead letters since the last good record
        self._dlq_good_mark = 0
        self._window_records = 0
        self._window_dead = 0
        self._start_offsets: dict[tuple[str, int], int] = {}
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
        self._lag_reported_at = 0.0
        self._dlq_log_throttle = Throttle()  # per topic, stage and error class; the DLQ metric counts them all
        if self.consumer is None:
            self.consumer = new_consumer(self.settings, self.group_id, **self.consumer_overrides)

    # --- lifecycle ------------------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish its batch and shut down (safe from a signal handler and any thread)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def install_signal_handlers(self) -> None:
        """For a process whose main thread runs the loop itself; services started by lineguard.service get
        their signals handled there."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _fail(self, reason: str) -> None:
        """Stop the loop because of a bug or a bad deploy; the service exits 1 with this reason."""
        if self.failure is None:
            self.failure = reason
            event(log, "consumer_loop_failed", level=CRITICAL, group=self.group_id, reason=reason)
        self._stopping.set()

    def _logical(self, partitions: Sequence[TopicPartition]) -> list[tuple[str, int]]:
        n = len(self._prefix)
        return [(p.topic[n:], p.partition) for p in partitions]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.offsets.assign((p.topic, p.partition) for p in partitions)
        # A participant restoring its partitions' state (a changelog) blocks the loop: liveness follows the
        # restore's progress meanwhile, so a slow restore that moves is not killed, a stuck one is.
        hooks = [h for h in (getattr(p, "on_assign", None) for p in self._participants) if h is not None]
        if hooks:
            with self.health.restoring(f"{self.group_id} partitions {sorted(p.partition for p in partitions)}"):
                for hook in hooks:
                    hook(self._logical(partitions))
        self.health.set_ready(True)
        event(log, "partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish what is in flight, make buffered output durable and commit, so the next owner does not redo it.
        self._checkpoint(final=True)
        for participant in self._participants:
            hook = getattr(participant, "on_revoke", None)
            if hook is not None:
                hook(self._logical(partitions))
        self.offsets.revoke((p.topic, p.partition) for p in partitions)
        for p in partitions:
            self._start_offsets.pop((p.topic, p.partition), None)
            for gauge in (self._m_lag, self._m_uncommitted):
                with contextlib.suppress(KeyError):
                    gauge.remove(p.topic[len(self._prefix):], str(p.partition))
        if not self.offsets.assigned:
            self.health.set_ready(False, "no partitions assigned")
        event(log, "partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def run(self) -> LoopStats:
        """Run until stop() (or a failure, see `failure`); then checkpoint, commit and close."""
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
                    self._checkpoint(final=False)
                    self._sink_idle()
                if time.monotonic() - self._lag_reported_at >= 1.0:
                    self._report_lag()
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._shutdown()
        return self.stats

    def _sink_idle(self) -> None:
        """A poll brought nothing: let the sink do what time alone makes due. Its failure is logged, not fatal:
        no record is in flight, and the next idle poll or batch tries again."""
        on_idle = getattr(self.sink, "on_idle", None)
        if on_idle is None:
            return
        try:
            on_idle()
        except Exception as exc:  # noqa: BLE001 - logged with its cause; the loop's records are not affected
            event(log, "sink_idle_failed", level=ERROR, error=f"{type(exc).__name__}: {exc}"[:500])

    def _shutdown(self) -> None:
        event(log, "consumer_stopping", group=self.group_id, **self.stats.__dict__)
        try:
            self._checkpoint(final=True)
        except Exception as exc:  # noqa: BLE001 - still close the consumer: leave the group at once
            event(log, "final_checkpoint_failed", level=ERROR, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.consumer.close()
            self.health.set_ready(False, "stopped")
            event(log, "consumer_stopped", group=self.group_id)

    # --- the checkpoint -------------------------------------------------------------------------------------

    def _checkpoint(self, final: bool) -> None:
        """The one commit path, in this order (as quix-streams' Checkpoint.commit):

        1. sinks make what they buffer durable (`flush`);
        2. state owners write their state (`flush`: the changelog is produced);
        3. the producer delivers everything queued (outputs, dead letters, changelog); batches whose outputs are
           all acknowledged complete, a batch with a failed output is rewound;
        4. offsets: what is acknowledged, capped by what a sink or state still holds, is stored, then committed.

        `final` (partitions revoked, shutdown) forces every step and commits synchronously. On an idle poll
        (`final=False`) nothing is forced: the producer serves its reports, durable offsets are stored, and
        auto-commit sends them within a second.
        """
        if final:
            for participant in self._participants:
                participant.flush()
            remaining = self.producer.flush(self.flush_timeout_s)
            if remaining:
                event(log, "checkpoint_with_undelivered_records", level=ERROR, remaining=remaining)
        else:
            self.producer.poll(0)
        self._complete()
        if self._participants:
            self._store_done()
        if final:
            try:
                self.consumer.commit(asynchronous=False)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._NO_OFFSET:
                    event(log, "commit_failed", level=WARNING, error=str(exc))

    def _held(self) -> dict[tuple[str, int], int]:
        """What the sink and the state still hold, keyed by full topic."""
        if not self._participants:
            return {}
        prefix = self._prefix
        held: dict[tuple[str, int], int] = {}
        for participant in self._participants:
            for (topic, partition), offset in participant.held_offsets().items():
                key = (prefix + topic, partition)
                if offset < held.get(key, offset + 1):
                    held[key] = offset
        return held

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
        processed: list[tuple[Record, Any]] = []
        produce_encoded = self.producer.produce_encoded
        encode = self.producer.serde.encode
        prefix = self._prefix
        prefix_len = len(prefix)
        decode = self.decode
        serde = self.serde
        handler = self.handler
        dead_letter_types = self._dead_letter_types
        self._dlq_good_mark = 0
        bug: tuple[Message, BaseException] | None = None
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    event(log, "consume_error", level=WARNING, error=err.str())
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
                self._dead_letter(batch, msg, topic, "deserialize", exc, on_delivery, len(processed))
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
                                        out_headers, on_delivery, out.partition)
                        batch.outstanding += 1  # after produce(): only a queued record gets a report
                        produced[out.topic] = produced.get(out.topic, 0) + 1
            except dead_letter_types as exc:  # bad input, as the service declared: this record only
                self._dead_letter(batch, msg, topic, "process", exc, on_delivery, len(processed))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug: replay the batch, then stop (see _handler_bug)
                bug = (msg, exc)
                break
            processed.append((record, outputs))
        if batch_span is not None:
            batch_span.end()
        self.offsets.consumed(first_offsets, next_offsets)
        self.stats.consumed += len(messages)
        self.stats.batches += 1
        if bug is not None:
            self._handler_bug(batch, *bug)
            return
        limit = self.dlq_limit
        if limit is not None:
            self._window_records += len(messages)
            self._window_dead += batch.dead_letters
            if self._dlq_run and len(processed) != self._dlq_good_mark:
                self._dlq_run = 0  # good records after the last dead letter
            if self._dlq_run >= limit.max_consecutive or self._window_records >= limit.window:
                self._check_dlq_limit(batch, limit)
        if self.sink is not None and not batch.abandoned:
            try:
                if processed:
                    self.sink.write(processed if self._sink_pairs else [record for record, _ in processed])
                on_batch_done = getattr(self.sink, "on_batch_done", None)
                if on_batch_done is not None:
                    on_batch_done()
            except Exception as exc:  # noqa: BLE001 - rewind and retry the batch, never skip it
                batch.failures.append(f"sink: {type(exc).__name__}: {exc}")
        self._pending.append(batch)
        self.producer.poll(0)
        self._complete()
        if len(self._pending) >= self.max_pending_batches:
            self._wait_for_oldest()

    def _handler_bug(self, batch: _Batch, msg: Message, exc: BaseException) -> None:
        """The handler raised an exception the service did not declare as bad input: a bug. Replay the batch
        (a transient failure passes), and after `max_handler_attempts` stop the loop without committing it."""
        key = (msg.topic(), msg.partition(), msg.offset())
        attempts = self._bug_attempts[key] = self._bug_attempts.get(key, 0) + 1
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        stack = "".join(traceback.format_exception(exc, limit=8))
        event(log, "handler_failed", level=ERROR, record=where, attempt=attempts, of=self.max_handler_attempts,
              error=f"{type(exc).__name__}: {exc}"[:500], stacktrace=stack[-4000:],
              hint="not a declared bad-input error (dead_letter_on): treated as a bug, not dead-lettered")
        if attempts >= self.max_handler_attempts:
            batch.abandoned = True
            self._fail(f"the handler raised {type(exc).__name__}: {str(exc)[:300]} on {where} "
                       f"{attempts} times; it is not declared as bad input (dead_letter_on), so the record is "
                       f"not dead-lettered and its offset not committed")
        else:
            batch.failures.append(f"handler: {type(exc).__name__}: {exc}")
        self._pending.append(batch)
        # Settle now: earlier batches complete (their offsets stored), this one is rewound (or abandoned).
        self.producer.flush(self.flush_timeout_s)
        self._complete()
        if batch.abandoned:
            return
        if len(self._bug_attempts) > 10_000:
            self._bug_attempts.clear()

    def _check_dlq_limit(self, batch: _Batch, limit: DlqLimit) -> None:
        reason = None
        if self._dlq_run >= limit.max_consecutive:
            reason = f"{self._dlq_run} dead letters in a row (DlqLimit.max_consecutive={limit.max_consecutive})"
        elif self._window_records >= limit.window:
            if self._window_dead > limit.max_ratio * self._window_records:
                reason = (f"{self._window_dead} of the last {self._window_records} records dead-lettered "
                          f"(DlqLimit.max_ratio={limit.max_ratio})")
            self._window_records = self._window_dead = 0
        if reason is not None:
            batch.abandoned = True
            self._fail(f"{reason}: this looks like a bad deploy or a broken producer, not bad input; stopping "
                       f"before everything goes to .dlq (this batch is not committed)")

    def _complete(self) -> None:
        """Store the offsets of every leading batch whose outputs are all acknowledged; rewind on a failure."""
        prefix_len = len(self._prefix)
        while self._pending and self._pending[0].outstanding <= 0:
            batch = self._pending.popleft()
            if batch.abandoned:
                self._pending.clear()  # stopping: nothing from here on is committed
                return
            if batch.failures:
                self._rewind(batch)
                return
            for (full_topic, _), count in batch.consumed.items():
                self._m_consumed.labels(full_topic[prefix_len:]).inc(count)
            for topic, count in batch.produced.items():
                self.producer.count_delivered(topic, count)
                self.stats.produced += count
            self._store(self.offsets.targets(batch.next_offsets, self._held()))
            self.offsets.done(batch.next_offsets)
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

    def _store(self, targets: list[tuple[tuple[str, int], int]]) -> None:
        if not targets:
            return
        try:
            self.consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in targets])
        except KafkaException as exc:
            # Partition revoked meanwhile: its next owner replays the records (at-least-once).
            event(log, "store_offsets_failed", level=WARNING, error=str(exc))
            return
        self.offsets.stored(targets)

    def _store_done(self) -> None:
        """After a sink wrote buffered rows, move the stored offsets forward to what is now durable (never past a
        batch whose outputs are still in flight)."""
        if self.offsets.done_next:
            self._store(self.offsets.done_targets(self._held()))

    # --- lag ------------------------------------------------------------------------------------------------

    def partition_lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition (logical topic, partition): records not consumed yet, from the high watermark
        of the last fetch (asked of the broker when unknown) and the next offset to consume (before a
        partition's first record: the committed offset, else the low watermark). Call it from the loop's thread
        (a handler or a sink); raises KafkaException when the broker cannot tell (treat that as lagging)."""
        consumer = self.consumer
        positions = self.offsets.consumed_next
        prefix_len = len(self._prefix)
        out: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            key = (tp.topic, tp.partition)
            next_offset = positions.get(key)
            if next_offset is None:
                next_offset = self._start_offsets.get(key)
            if next_offset is None:
                committed = consumer.committed([TopicPartition(tp.topic, tp.partition)], timeout=5)[0].offset
                if committed >= 0:
                    next_offset = committed
                else:
                    # The low watermark from the last fetch; asking the broker (ListOffsets) is a round trip per
                    # partition, which took ~0.5 s each on Tansu and stalled a loop at start-up.
                    low, _ = consumer.get_watermark_offsets(tp, cached=True)
                    if low is None or low < 0:
                        low, _ = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                    next_offset = low
                self._start_offsets[key] = next_offset
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high is None or high < 0:
                _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            out[(tp.topic[prefix_len:], tp.partition)] = max(0, high - next_offset)
        return out

    def _report_lag(self) -> None:
        """Per assigned partition: consumer lag (high watermark from the last fetch minus position) and records
        consumed but not yet stored for commit. Once a second, from the loop's thread."""
        self._lag_reported_at = time.monotonic()
        prefix_len = len(self._prefix)
        for (full_topic, partition), position in self.offsets.positions().items():
            labels = (full_topic[prefix_len:], str(partition))
            self._m_uncommitted.labels(*labels).set(self.offsets.uncommitted((full_topic, partition)))
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(full_topic, partition), cached=True)
            except (KafkaException, RuntimeError):
                continue
            if high is not None and high >= 0:
                self._m_lag.labels(*labels).set(max(0, high - position))

    # --- failures -------------------------------------------------------------------------------------------

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
        """An output was not acknowledged (or the handler failed): seek back to the failed batch and process it
        (and every later one in flight) again; nothing is skipped, some outputs may repeat (at-least-once)."""
        targets = OffsetTracker.rewind_targets([failed.first_offsets, *(b.first_offsets for b in self._pending)])
        self._pending.clear()
        self.stats.redelivered_batches += 1
        self._m_redeliver.inc()
        event(log, "batch_not_acknowledged_retrying", level=WARNING, failures=failed.failures[:5],
              partitions=len(targets))
        for (full_topic, partition), offset in targets.items():
            try:
                self.consumer.seek(TopicPartition(full_topic, partition, offset))
            except KafkaException as exc:
                event(log, "seek_failed", level=WARNING, error=str(exc))
        if self.retry_backoff_s:
            time.sleep(self.retry_backoff_s)

    def _dead_letter(self, batch: _Batch, msg: Message, topic: str, stage: str, exc: BaseException,
                     on_delivery: Callable[[KafkaError | None, Message], None], good_so_far: int) -> None:
        # A run of dead letters with no good record between them (for the DlqLimit).
        if good_so_far != self._dlq_good_mark:
            self._dlq_run = 0
        self._dlq_good_mark = good_so_far
        self._dlq_run += 1
        batch.dead_letters += 1
        headers = list(msg.headers() or []) + error_headers(
            topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), stage=stage,
            error_class=type(exc).__name__, message=str(exc), service=self.settings.service_name,
            group=self.group_id, stacktrace="".join(traceback.format_exception(exc, limit=5)))
        dlq = topic + DLQ_SUFFIX
        key, value = msg.key(), msg.value()

        def produce_truncated(reason: str) -> None:
            t_key, t_value, t_headers = truncated_dead_letter(key, value, headers, reason)
            self.producer.produce(dlq, t_key, t_value, t_headers, on_delivery=on_delivery, trace=False)
            batch.outstanding += 1
            event(log, "dead_letter_truncated", level=WARNING, topic=msg.topic(), partition=msg.partition(),
                  offset=msg.offset(), original_bytes=len(value or b""), kept_bytes=len(t_value or b""))

        def on_dlq_delivery(err: KafkaError | None, report: Message) -> None:
            # The broker refused it as too large for the DLQ topic: store it truncated instead (once).
            if err is not None and err.code() in _TOO_LARGE and \
                    not any(k == DLQ_TRUNCATED_HEADER for k, _ in report.headers() or ()):
                batch.outstanding -= 1
                produce_truncated(f"broker: {err.str()}")
                return
            on_delivery(err, report)

        try:
            self.producer.produce(dlq, key, value, headers, on_delivery=on_dlq_delivery, trace=False)
            batch.outstanding += 1
        except KafkaException as produce_error:
            if produce_error.args[0].code() not in _TOO_LARGE:
                raise
            produce_truncated(f"producer: {produce_error.args[0].str()}")
        self.stats.dead_lettered += 1
        self._m_dlq.labels(topic, stage).inc()
        throttled_event(log, self._dlq_log_throttle, (topic, stage, type(exc).__name__), "dead_lettered",
                        level=WARNING, topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                        stage=stage, error=f"{type(exc).__name__}: {exc}"[:500])
