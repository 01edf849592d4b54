"""The one way every adapter hands records to Kafka: dedup, produce, confirm, dead-letter, count.

An adapter builds `Emit`s (a reading or an alarm with its deterministic id) and calls `submit()` with a callback
(threaded adapters: MQTT) or awaits `deliver()` (asyncio adapters: HTTP, webhooks, SFTP). Either way the adapter
learns the outcome only after Kafka acknowledged every record (or failed to), so it acknowledges its own source
(an MQTT PUBACK, an HTTP 2xx, an SFTP file moved to done) only after delivery. An id is remembered as delivered
only once Kafka confirmed it; a later record with the same id is dropped as a duplicate.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message

from lineguard import telemetry, topics
from lineguard.avro import SerdeError
from lineguard.catalog import DLQ_SUFFIX
from lineguard.kafka import Producer, error_headers
from lineguard.logs import Throttle, get_logger, throttled_event
from lineguard.settings import Settings

log = get_logger(__name__)

READINGS = topics.RAW_TELEMETRY
ALARMS = topics.RAW_ALARMS
DEAD_LETTERS = READINGS + DLQ_SUFFIX


@dataclass(slots=True)
class Emit:
    """One record to produce: `value` fits the topic's Avro schema, `value["id"]` is its deterministic id."""

    topic: str
    key: str
    value: dict[str, Any]

    @property
    def id(self) -> str:
        return self.value["id"]


@dataclass(slots=True)
class DeadLetter:
    """Input that could not become a record: the original bytes and why."""

    payload: bytes
    reason: str
    error_class: str
    protocol: str
    address: str
    position: str | None = None
    key: str | None = None
    delivered: bool = False  # set once Kafka took it: a retried submit does not dead-letter it twice


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def source(protocol: str, device: str, address: str, position: str | None, received_by: str | None) -> dict:
    return {"protocol": protocol, "device": device, "address": address, "position": position,
            "received_by": received_by}


def reading(*, id: str, device: str, metric: str, value: Any, unit: str | None, observed_at: int,
            received_at: int, src: dict, attributes: dict[str, str] | None = None) -> Emit:
    return Emit(READINGS, device, {
        "id": id, "device": device, "metric": metric, "value": value, "unit": unit,
        "observed_at": observed_at, "received_at": received_at, "source": src, "attributes": attributes or {},
    })


def alarm(*, id: str, device: str, alarm_type: str, action: str, severity: str | None, message: str | None,
          observed_at: int, received_at: int, src: dict) -> Emit:
    return Emit(ALARMS, device, {
        "id": id, "device": device, "alarm_type": alarm_type, "action": action, "severity": severity,
        "message": message, "observed_at": observed_at, "received_at": received_at, "source": src,
    })


class DedupCache:
    """The most recent delivered ids (bounded, least recently seen evicted first). Not locked itself: the
    pipeline calls it under its in-flight lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, id: str) -> bool:
        if id in self._ids:
            self._ids.move_to_end(id)
            return True
        return False

    def add(self, id: str) -> None:
        ids = self._ids
        if id in ids:
            ids.move_to_end(id)
            return
        ids[id] = None
        if len(ids) > self.capacity:
            ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


class AdapterMetrics:
    """Counters per adapter (label `adapter`): received, produced, dead-lettered, duplicates, ack lag."""

    def __init__(self, service: str) -> None:
        self.received = telemetry.counter(service, "messages_received", "Source messages received.", ["adapter"])
        self.produced = telemetry.counter(service, "records_produced", "Records Kafka acknowledged.",
                                          ["adapter", "topic"])
        self.dead_lettered = telemetry.counter(service, "dead_letters", "Inputs sent to the dead-letter topic.",
                                               ["adapter", "reason"])
        self.duplicates = telemetry.counter(service, "duplicates_dropped", "Records dropped as already delivered.",
                                            ["adapter"])
        self.rejected = telemetry.counter(service, "requests_rejected", "HTTP requests answered 4xx.",
                                          ["adapter", "status"])
        self.unavailable = telemetry.counter(service, "requests_unavailable",
                                             "Requests answered 503 because Kafka did not take the data.",
                                             ["adapter"])
        self.ignored = telemetry.counter(service, "events_ignored", "Webhook events acknowledged but not ingested.",
                                         ["adapter", "event"])
        self.ack_lag = telemetry.histogram(service, "ack_lag_seconds",
                                           "From receiving a source message to acknowledging it to its source.",
                                           ["adapter"])
        self.pending = telemetry.gauge(service, "unacknowledged_messages",
                                       "Source messages received but not yet acknowledged.", ["adapter"])


class _Batch:
    """Counts the outcomes of one submit(); calls `done(errors)` once, when the last one arrives."""

    __slots__ = ("remaining", "errors", "done", "lock")

    def __init__(self, remaining: int, done: Callable[[list[str]], None]) -> None:
        self.remaining = remaining
        self.errors: list[str] = []
        self.done = done
        self.lock = threading.Lock()

    def report(self, error: str | None) -> None:
        self.report_all([error] if error is not None else [])

    def report_all(self, errors: list[str]) -> None:
        """One outcome (of a record, a dead letter or a whole set of records) with its errors, if any."""
        with self.lock:
            self.errors.extend(errors)
            self.remaining -= 1
            finished = self.remaining == 0
        if finished:
            self.done(self.errors)


class _Deliveries:
    """The delivery reports of the fresh records of one submit(). Each report only counts (it runs once per
    record on the polling thread and bounds the acknowledged rate); the bookkeeping (dedup, waiters, metrics)
    runs once, when the last report is in."""

    __slots__ = ("pipeline", "adapter", "batch", "records", "remaining", "failed", "lock")

    def __init__(self, pipeline: IngestPipeline, adapter: str, batch: _Batch,
                 records: list[tuple[Emit, bytes]]) -> None:
        self.pipeline = pipeline
        self.adapter = adapter
        self.batch = batch
        self.records = records
        self.remaining = len(records)
        self.failed: dict[bytes, str] = {}  # payload -> error, for the (rare) records Kafka did not take
        self.lock = threading.Lock()

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed[msg.value()] = f"{msg.topic()}: {err.str()}"
            self.pipeline._delivery_failed(err, self.pipeline.producer)
        with self.lock:
            self.remaining -= 1
            finished = self.remaining == 0
        if finished:
            self.pipeline._settle(self)


class DeliveryFailed(Exception):
    """Kafka did not acknowledge every record in time; the caller must not acknowledge its source."""


class IngestPipeline:
    """Owns the producer; every adapter of one ingest process shares it."""

    def __init__(self, settings: Settings, producer: Producer | None = None, dedup_capacity: int = 200000,
                 **producer_overrides: Any) -> None:
        self.settings = settings
        self.producer = producer or Producer(settings, **producer_overrides)
        self.producer.start_polling()
        self.dedup = DedupCache(dedup_capacity)
        self._inflight: dict[str, list[_Batch]] = {}
        self._inflight_lock = threading.Lock()
        self._produced_children: dict[tuple[str, str], Any] = {}
        self._trace_cache: dict[str, tuple[float, list[tuple[str, bytes]]]] = {}
        self.metrics = AdapterMetrics(settings.service_name)
        self.instance = settings.instance_id
        self.last_delivery_error: str | None = None
        self.last_delivery_ok = time.monotonic()
        self._dlq_log_throttle = Throttle()  # per adapter and error class; the dead_letters metric counts them all

    # --- producing ----------------------------------------------------------------------------------------------

    def submit(self, adapter: str, records: list[Emit], done: Callable[[list[str]], None],
               dead_letters: list[DeadLetter] = ()) -> int:
        """Produce the records not delivered before, and the dead letters; `done(errors)` runs once every
        delivery report is in (on the producer's polling thread, or at once when nothing needed producing).
        Returns how many records were produced (duplicates excluded)."""
        dead_letters = [letter for letter in dead_letters if not letter.delivered]
        encoded: list[tuple[Emit, bytes]] = []
        encode = self.producer.serde.encode
        for record in records:
            try:
                encoded.append((record, encode(record.topic, record.value)))
            except SerdeError as exc:
                # A record that does not fit the schema is a bug in a mapping, never a reason to stop.
                src = record.value.get("source") or {}
                dead_letters.append(DeadLetter(repr(record.value).encode(), str(exc), type(exc).__name__,
                                               src.get("protocol", adapter), src.get("address", record.topic),
                                               src.get("position"), record.key))
        fresh: list[tuple[Emit, bytes]] = []
        joined: list[str] = []  # ids already on their way to Kafka: wait for that delivery instead
        duplicates = 0
        with self._inflight_lock:
            for item in encoded:
                rid = item[0].value["id"]
                if rid in self.dedup:
                    duplicates += 1
                elif rid in self._inflight:
                    duplicates += 1
                    joined.append(rid)
                else:
                    self._inflight[rid] = []
                    fresh.append(item)
            total = (1 if fresh else 0) + len(joined) + len(dead_letters)
            if total == 0:
                batch = None
            else:
                batch = _Batch(total, done)
                for rid in joined:
                    self._inflight[rid].append(batch)
        if duplicates:
            self.metrics.duplicates.labels(adapter).inc(duplicates)
        if batch is None:
            done([])
            return 0
        if fresh:
            trace_headers = self._trace_headers(fresh[0][0].topic)
            on_delivery = _Deliveries(self, adapter, batch, fresh).on_delivery
            produce = self.producer.produce
            for record, payload in fresh:
                produce(record.topic, record.key, payload, trace_headers, on_delivery=on_delivery, trace=False)
        for letter in dead_letters:
            self._produce_dead_letter(adapter, letter, batch)
        return len(fresh)

    def _settle(self, deliveries: _Deliveries) -> None:
        """Every record of one submit() has its delivery report: remember the delivered ids, release the
        submits waiting on them, count, and report the outcome."""
        failed = deliveries.failed
        released: list[tuple[list[_Batch], str | None]] = []
        delivered: dict[str, int] = {}
        with self._inflight_lock:
            for record, payload in deliveries.records:
                rid = record.value["id"]
                error = failed.get(payload) if failed else None
                if error is None:
                    self.dedup.add(rid)
                    delivered[record.topic] = delivered.get(record.topic, 0) + 1
                waiters = self._inflight.pop(rid, None)
                if waiters:
                    released.append((waiters, error))
        for topic, count in delivered.items():
            self._produced_counter(deliveries.adapter, topic).inc(count)
        if delivered:
            self.last_delivery_ok = time.monotonic()
        deliveries.batch.report_all(list(failed.values()))
        for waiters, error in released:
            for waiter in waiters:
                waiter.report(error)

    def _produced_counter(self, adapter: str, topic: str) -> Any:
        child = self._produced_children.get((adapter, topic))
        if child is None:
            child = self._produced_children[(adapter, topic)] = self.metrics.produced.labels(adapter, topic)
        return child

    def _trace_headers(self, topic: str) -> list[tuple[str, bytes]]:
        """One `send <topic>` span per 100 ms of producing, shared by the records sent meanwhile: a span per
        reading would cost more than the rest of ingest together at 20,000 readings/s."""
        now = time.monotonic()
        cached = self._trace_cache.get(topic)
        if cached is not None and now - cached[0] < 0.1:
            return cached[1]
        with telemetry.send_span(self.producer.full_topic(topic)):
            headers = telemetry.inject_headers(None)
        self._trace_cache[topic] = (now, headers)
        return headers

    def _produce_dead_letter(self, adapter: str, letter: DeadLetter, batch: _Batch) -> None:
        reason_label = letter.error_class
        producer = self.producer

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                letter.delivered = True
                self.metrics.dead_lettered.labels(adapter, reason_label).inc()
                batch.report(None)
            else:
                self._delivery_failed(err, producer)
                batch.report(f"{DEAD_LETTERS}: {err.str()}")

        headers = dead_letter_headers(self.settings, letter, producer.full_topic(READINGS))
        producer.produce(DEAD_LETTERS, letter.key, letter.payload, headers, on_delivery=report, trace=False)
        throttled_event(log, self._dlq_log_throttle, (adapter, letter.error_class), "dead_lettered", level=30,
                        adapter=adapter, protocol=letter.protocol, address=letter.address, position=letter.position,
                        error=f"{letter.error_class}: {letter.reason}"[:300])

    async def deliver(self, adapter: str, records: list[Emit], dead_letters: list[DeadLetter] = (),
                      timeout: float | None = None) -> int:
        """Produce and wait for Kafka; raise DeliveryFailed when a record was not acknowledged within `timeout`.
        Returns how many records were produced (duplicates excluded)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[str]] = loop.create_future()

        def done(errors: list[str]) -> None:
            loop.call_soon_threadsafe(_settle, future, errors)

        produced = self.submit(adapter, records, done, dead_letters)
        try:
            errors = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise DeliveryFailed(f"Kafka did not acknowledge within {timeout:g} s") from None
        if errors:
            raise DeliveryFailed(f"Kafka did not acknowledge {len(errors)} record(s): {errors[0]}")
        return produced

    def _delivery_failed(self, err: KafkaError, producer: Producer) -> None:
        self.last_delivery_error = err.str()
        # After a fatal error (seen with Tansu after message timeouts: the idempotent producer's epoch bump is
        # answered PRODUCER_FENCED for good) the shared Producer replaces its client; failed records are produced
        # again by their adapters, so nothing is lost.
        producer.note_delivery_error(err)

    def kafka_suspect(self) -> bool:
        """Records have waited long for Kafka: new HTTP data is refused at once instead of timing out."""
        return len(self.producer) > 0 and self.last_delivery_error is not None and \
            time.monotonic() - self.last_delivery_ok > 5.0

    def close(self, timeout: float = 30.0) -> int:
        return self.producer.close(timeout)


def _settle(future: asyncio.Future, errors: list[str]) -> None:
    if not future.done():
        future.set_result(errors)


def dead_letter_headers(settings: Settings, letter: DeadLetter, intended_topic: str) -> list[tuple[str, bytes]]:
    """Kafka Connect style error headers (the runtime's `error_headers`), plus where the input came from."""
    return error_headers(topic=intended_topic, stage="parse", error_class=letter.error_class, message=letter.reason,
                         service=settings.service_name,
                         source={"protocol": letter.protocol, "address": letter.address,
                                 "position": letter.position})
