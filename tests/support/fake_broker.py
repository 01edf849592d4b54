"""An in-memory Kafka for consumer-loop tests that run in milliseconds (in the spirit of arroyo's LocalBroker).

`FakeBroker` holds topics as lists of messages per partition and the committed offsets per group.
`broker.consumer(group)` and `broker.producer()` give objects with the parts of the confluent-kafka Consumer and
Producer APIs the runtime uses; inject them with `ConsumerLoop(..., consumer=...)` and
`Producer(settings, client=...)`. Faults are injected on the broker: `fail_deliveries(n)`, `max_message_bytes`.
This is a test double: the product always runs on librdkafka, and the Tansu tests cover the same paths for real.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

TP = tuple[str, int]


class FakeMessage:
    """What confluent_kafka.Message offers the loop."""

    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_headers", "_timestamp", "_error")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                 headers: list | None = None, timestamp: int = 0, error: KafkaError | None = None) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._headers = key, value, headers
        self._timestamp, self._error = timestamp, error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)

    def error(self) -> KafkaError | None:
        return self._error

    def __len__(self) -> int:
        return len(self._value or b"")


@dataclass
class FakeBroker:
    partitions: int = 1
    max_message_bytes: int = 1_048_588  # Kafka's default max.message.bytes
    topics: dict[str, list[list[FakeMessage]]] = field(default_factory=dict)
    committed: dict[tuple[str, TP], int] = field(default_factory=dict)  # (group, tp) -> next offset
    # What consumers and producers did, in order ("store", "commit", "producer flush", "close"): tests append
    # their own steps (a sink's flush) to check the order of a checkpoint.
    journal: list[str] = field(default_factory=list)
    _fail_deliveries: int = 0

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        self.topics.setdefault(name, [[] for _ in range(partitions or self.partitions)])

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
               headers: list | None = None) -> FakeMessage:
        self.create_topic(topic)
        log = self.topics[topic][partition]
        msg = FakeMessage(topic, partition, len(log), key, value, headers, int(time.time() * 1000))
        log.append(msg)
        return msg

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, headers: list | None = None,
                partition: int = 0) -> None:
        """Put a record straight on the broker (test input)."""
        self.append(topic, partition, key, value, headers)

    def messages(self, topic: str) -> list[FakeMessage]:
        return [m for log in self.topics.get(topic, []) for m in log]

    def fail_deliveries(self, count: int) -> None:
        """The next `count` produced records are not acknowledged (delivery reports with an error)."""
        self._fail_deliveries = count

    def consumer(self, group: str = "g") -> FakeConsumer:
        return FakeConsumer(self, group)

    def producer(self) -> FakeProducer:
        return FakeProducer(self)


class FakeConsumer:
    def __init__(self, broker: FakeBroker, group: str) -> None:
        self.broker = broker
        self.group = group
        self.positions: dict[TP, int] = {}
        self.stored: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self.closed = False
        self.calls = broker.journal
        self._subscribed: list[str] = []
        self._on_assign: Callable | None = None
        self._on_revoke: Callable | None = None
        self._pending_assign = False
        self._pending_rebalance = False

    # subscription and assignment
    def subscribe(self, topics: list[str], on_assign: Callable | None = None, on_revoke: Callable | None = None,
                  on_lost: Callable | None = None) -> None:
        self._subscribed = list(topics)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._pending_assign = True

    def _all_partitions(self) -> list[TopicPartition]:
        out = []
        for topic in self._subscribed:
            self.broker.create_topic(topic)
            out.extend(TopicPartition(topic, p) for p in range(len(self.broker.topics[topic])))
        return out

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def revoke_all(self) -> None:
        """A rebalance that takes every partition away (the loop's on_revoke runs now)."""
        partitions = self.assignment()
        if self._on_revoke is not None:
            self._on_revoke(self, partitions)
        self.positions.clear()
        self.stored.clear()

    def reassign(self) -> None:
        """Partitions come back at the next consume (from the committed offsets)."""
        self._pending_assign = True

    def request_rebalance(self) -> None:
        """At the next consume (on the loop's thread, as librdkafka does): every partition is revoked, then
        assigned again from the committed offsets."""
        self._pending_rebalance = True

    def _assign_now(self) -> None:
        self._pending_assign = False
        partitions = self._all_partitions()
        for tp in partitions:
            self.positions[(tp.topic, tp.partition)] = self.broker.committed.get((self.group, (tp.topic, tp.partition)), 0)
        if self._on_assign is not None:
            self._on_assign(self, partitions)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self._check_open()
        if self._pending_rebalance:
            self._pending_rebalance = False
            self.revoke_all()
            self._pending_assign = True
        if self._pending_assign:
            self._assign_now()
        out: list[FakeMessage] = []
        for tp, position in self.positions.items():
            if tp in self.paused:
                continue
            log = self.broker.topics[tp[0]][tp[1]]
            take = log[position:position + num_messages - len(out)]
            out.extend(take)
            self.positions[tp] = position + len(take)
            if len(out) >= num_messages:
                break
        if not out and timeout and timeout > 0:
            time.sleep(min(timeout, 0.001))
        return out

    # offsets
    def store_offsets(self, offsets: list[TopicPartition] | None = None, message: Any = None) -> None:
        self._check_open()
        self.calls.append("store")
        for tp in offsets or []:
            key = (tp.topic, tp.partition)
            if key not in self.positions:
                raise KafkaException(KafkaError(KafkaError._STATE, "partition not assigned"))
            self.stored[key] = tp.offset

    def commit(self, asynchronous: bool = True, **_: Any) -> None:
        self._check_open()
        self.calls.append("commit")
        if not self.stored:
            raise KafkaException(KafkaError(KafkaError._NO_OFFSET, "no offset stored"))
        for tp, offset in self.stored.items():
            self.broker.committed[(self.group, tp)] = offset

    def committed_offset(self, topic: str, partition: int = 0) -> int | None:
        return self.broker.committed.get((self.group, (topic, partition)))

    def committed(self, partitions: list[TopicPartition], timeout: float | None = None) -> list[TopicPartition]:
        return [TopicPartition(p.topic, p.partition, self.broker.committed.get((self.group, (p.topic, p.partition)),
                                                                               -1001)) for p in partitions]

    def seek(self, tp: TopicPartition) -> None:
        self.calls.append("seek")
        self.positions[(tp.topic, tp.partition)] = tp.offset

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update((p.topic, p.partition) for p in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update((p.topic, p.partition) for p in partitions)

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float | None = None,
                              cached: bool = False) -> tuple[int, int]:
        log = self.broker.topics.get(tp.topic, [[]])[tp.partition]
        return 0, len(log)

    def close(self) -> None:
        if self.closed:
            return
        self.calls.append("close")
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("Consumer closed")


class FakeProducer:
    """The raw producer: records reach the broker when produced; delivery reports are served by poll/flush."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self._reports: list[tuple[Callable | None, KafkaError | None, FakeMessage]] = []
        self.calls = broker.journal

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: list | None = None,
                on_delivery: Callable | None = None, partition: int = -1, **_: Any) -> None:
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers or [])
        if size > self.broker.max_message_bytes:
            # librdkafka refuses a record larger than message.max.bytes at once (produce() raises)
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))
        if self.broker._fail_deliveries > 0:
            self.broker._fail_deliveries -= 1
            msg = FakeMessage(topic, 0, -1, key, value, headers)
            self._reports.append((on_delivery, KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"),
                                  msg))
            return
        msg = self.broker.append(topic, max(partition, 0), key, value, headers)
        self._reports.append((on_delivery, None, msg))

    def poll(self, timeout: float = 0) -> int:
        reports, self._reports = self._reports, []
        for callback, err, msg in reports:
            if callback is not None:
                callback(err, msg)
        return len(reports)

    def flush(self, timeout: float = 0) -> int:
        self.calls.append("producer flush")
        self.poll()
        return 0

    def purge(self) -> None:
        self._reports.clear()

    def __len__(self) -> int:
        return len(self._reports)
