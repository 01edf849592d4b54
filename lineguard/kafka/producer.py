"""A producer that encodes with the topic's Avro schema and confirms delivery.

Idempotence on, `partitioner=murmur2_random` (the hash Faust/aiokafka and the Java client use, so records
co-partition with the consumers that key state by line), delivery reports awaited before anything upstream is
acknowledged. `send()` is for asyncio services: it returns once the broker acknowledged, without blocking the
event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from logging import ERROR, INFO, WARNING
from typing import Any

from confluent_kafka import KafkaError, Message

from lineguard import telemetry
from lineguard.avro import AvroSerde
from lineguard.kafka.clients import producer_config, producer_from_config
from lineguard.kafka.records import Headers
from lineguard.logs import event, get_logger
from lineguard.settings import Settings

log = get_logger("lineguard.kafka")


class DeliveryError(Exception):
    """The broker did not acknowledge a record (after librdkafka's own retries)."""


def _key_bytes(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode("utf-8")


class Producer:
    """A confluent-kafka producer that encodes values with the topic's Avro schema.

    Topic arguments are logical catalog names (`raw.telemetry.v1`); the configured prefix is added here.
    """

    def __init__(self, settings: Settings, serde: AvroSerde | None = None, *, client: Any = None,
                 **conf_overrides: Any) -> None:
        """`client`: a raw producer to use instead of building one (tests inject the in-memory broker's)."""
        self.settings = settings
        telemetry.setup_tracing(settings.service_name)  # so trace context exists and travels in headers
        self.serde = serde or AvroSerde(settings.schemas_dir, settings.schema_registry_url,
                                        settings.schema_registry_auth, settings.topic_prefix)
        self._conf = {**producer_config(settings, **conf_overrides), "error_cb": self._on_error}
        self._producer = client if client is not None else producer_from_config(self._conf)
        self._fatal: KafkaError | None = None
        self._swap_lock = threading.Lock()
        self._prefix = settings.topic_prefix
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        service = settings.service_name
        self._produced = telemetry.counter(service, "messages_produced", "Records acknowledged by Kafka.", ["topic"])
        self._failed = telemetry.counter(service, "produce_failures", "Records Kafka did not acknowledge.", ["topic"])
        self._replaced = telemetry.counter(service, "producers_replaced",
                                           "Producers replaced after a fatal error (e.g. fenced idempotent producer).")
        self._labelled: dict[tuple[str, bool], Any] = {}

    def full_topic(self, topic: str) -> str:
        return self._prefix + topic

    def produce(self, topic: str, key: str | bytes | None, value: dict | bytes | None,
                headers: Headers | None = None,
                on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
                trace: bool = True, partition: int = -1) -> None:
        """Queue one record (non-blocking apart from back-off when the local queue is full); `partition` -1: the
        key's hash decides.

        Without `on_delivery` the producer counts deliveries in its metrics itself; a caller that passes one
        (the consumer loop, `send`) counts them, so the hot path pays for one callback per record, not two.
        """
        if self._fatal is not None:
            self._replace_after_fatal()
        payload = self.serde.encode(topic, value) if isinstance(value, dict) else value
        full = self._prefix + topic
        callback = on_delivery if on_delivery is not None else self._count_delivery
        if trace and telemetry.traceparent(headers) is None:
            with telemetry.send_span(full, key):
                headers = telemetry.inject_headers(headers)
                self._produce_raw(full, _key_bytes(key), payload, headers, callback, partition)
        else:
            self._produce_raw(full, _key_bytes(key), payload, headers, callback, partition)

    def _counter(self, topic: str, ok: bool) -> Any:
        child = self._labelled.get((topic, ok))
        if child is None:
            child = (self._produced if ok else self._failed).labels(topic)
            self._labelled[(topic, ok)] = child
        return child

    def _count_delivery(self, err: KafkaError | None, msg: Message) -> None:
        topic = msg.topic()[len(self._prefix):]
        if err is None:
            self._counter(topic, True).inc()
        else:
            self._counter(topic, False).inc()
            self.note_delivery_error(err)
            event(log, "delivery_failed", level=WARNING, topic=msg.topic(), error=err.str())

    # --- fatal errors -----------------------------------------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (broker down, auth failures, fatal errors)."""
        if err.fatal():
            self._fatal = err
        event(log, "kafka_client_error", level=ERROR if err.fatal() else INFO, error=err.str(), fatal=err.fatal())

    def note_delivery_error(self, err: KafkaError) -> None:
        """A delivery failed; remember it when the producer can never deliver again."""
        if err.fatal() or err.code() == KafkaError.PRODUCER_FENCED:
            self._fatal = err

    def _replace_after_fatal(self) -> None:
        """A fatal error (seen with an idempotent producer whose epoch bump is answered PRODUCER_FENCED after
        its messages timed out during a broker outage) means this librdkafka producer will never deliver again.
        Start a new one; records that failed are produced again by their callers (rewind, retry), so none is lost.
        """
        with self._swap_lock:
            if self._fatal is None:
                return
            reason, self._fatal = self._fatal, None
            old, self._producer = self._producer, producer_from_config(self._conf)
        self._replaced.inc()
        event(log, "producer_replaced", level=WARNING, error=reason.str())

        def retire() -> None:
            old.purge()
            old.flush(5)

        threading.Thread(target=retire, name="producer-retire", daemon=True).start()

    def count_delivered(self, topic: str, delivered: int, failed: int = 0) -> None:
        """Metrics for records whose delivery a caller tracked itself."""
        if delivered:
            self._counter(topic, True).inc(delivered)
        if failed:
            self._counter(topic, False).inc(failed)

    def produce_encoded(self, full: str, key: bytes | None, payload: bytes | None, headers: Headers | None,
                        callback: Callable[[KafkaError | None, Message], None], partition: int = -1) -> None:
        """The hot-path form of produce() for loops: topic already prefixed, key in bytes, value encoded, trace
        context already in `headers`, and a delivery callback the caller counts with (`partition` -1: the key's
        hash decides)."""
        if self._fatal is not None:
            self._replace_after_fatal()
        self._produce_raw(full, key, payload, headers, callback, partition)

    def _produce_raw(self, full: str, key: bytes | None, payload: bytes | None, headers: Headers | None,
                     callback: Callable, partition: int = -1) -> None:
        try:
            self._producer.produce(full, payload, key, partition=partition, headers=headers, on_delivery=callback)
        except BufferError:
            # Local queue full: serve delivery reports to make room (backpressure on the caller).
            while True:
                self._producer.poll(0.05)
                try:
                    self._producer.produce(full, payload, key, partition=partition, headers=headers,
                                           on_delivery=callback)
                    return
                except BufferError:
                    continue

    def poll(self, timeout: float = 0.0) -> int:
        return self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every queued record's delivery report; returns how many are still undelivered."""
        remaining = self._producer.flush(timeout)
        if self._fatal is not None:
            self._replace_after_fatal()
        return remaining

    def __len__(self) -> int:
        return len(self._producer)

    # --- asyncio ----------------------------------------------------------------------------------------------

    def start_polling(self) -> None:
        """Serve delivery reports from a background thread (for asyncio services that `await send()`)."""
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_forever, name="producer-poll", daemon=True)
            self._poller.start()

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
            if self._fatal is not None:
                self._replace_after_fatal()

    async def send(self, topic: str, key: str | bytes | None, value: dict | bytes | None,
                   headers: Headers | None = None) -> Message:
        """Produce one record and return once Kafka acknowledged it; raise DeliveryError if it did not."""
        self.start_polling()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()

        def done(err: KafkaError | None, msg: Message) -> None:
            self._count_delivery(err, msg)
            loop.call_soon_threadsafe(_resolve, future, err, msg)

        self.produce(topic, key, value, headers, on_delivery=done)
        return await future

    async def send_many(self, records: Iterable[tuple[str, str | bytes | None, dict | bytes | None]],
                        headers: Headers | None = None) -> list[Message]:
        """Produce records and return once every one is acknowledged (raises on the first failure)."""
        self.start_polling()
        loop = asyncio.get_running_loop()
        futures = []
        for topic, key, value in records:
            future: asyncio.Future[Message] = loop.create_future()

            def done(err: KafkaError | None, msg: Message, future: asyncio.Future = future) -> None:
                self._count_delivery(err, msg)
                loop.call_soon_threadsafe(_resolve, future, err, msg)

            self.produce(topic, key, value, headers, on_delivery=done)
            futures.append(future)
        return list(await asyncio.gather(*futures))

    def close(self, timeout: float = 30.0) -> int:
        """Flush and stop; returns how many records were left undelivered (0 is the only good answer)."""
        remaining = self.flush(timeout)
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=2)
            self._poller = None
        if remaining:
            event(log, "producer_closed_with_undelivered_records", level=ERROR, remaining=remaining)
        return remaining


def _resolve(future: asyncio.Future, err: KafkaError | None, msg: Message) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(msg)
    else:
        future.set_exception(DeliveryError(f"{msg.topic()}: {err.str()}"))
