"""What the consumer loop hands to a service and takes back: records, outputs, sinks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class Record:
    """One consumed record, decoded."""

    topic: str  # logical name (prefix removed)
    partition: int
    offset: int
    key: bytes | None
    value: Any  # the decoded Avro record (dict), or the raw bytes when decoding is off
    headers: Headers
    timestamp_ms: int
    raw_value: bytes | None


@dataclass(slots=True)
class Output:
    """A record to produce; values that are dicts are Avro-encoded with the topic's schema."""

    topic: str
    key: str | bytes | None
    value: dict | bytes | None
    headers: Headers | None = None
    # An explicit partition (a state changelog written to the partition of the input it came from, as Kafka
    # Streams does); -1: the key's hash decides.
    partition: int = -1


Handler = Callable[[Record], Iterable[Output] | None]

# A handled record and the outputs its handler returned (an empty sequence when it returned none).
Handled = tuple[Record, Sequence[Output]]
TopicPartitionKey = tuple[str, int]  # (logical topic, partition)


class Sink:
    """A buffering output (the data lake writer) behind the loop: the loop commits no offset the sink still holds.

    Subclass it and override what you need. The loop calls, on its own thread:
    - `write(batch)`: every successfully handled record of a batch with its outputs (dead letters excluded);
    - `on_batch_done()`: once per batch, after its outputs were queued (time-based rotation belongs here);
    - `on_idle()`: after a poll that brought no record (about every `batch_timeout_s` while the input is quiet):
      work that time alone makes due, with the loop's own view of its partitions (lag) at hand;
    - `held_offsets()`: per (logical topic, partition), the lowest offset not yet durable; absent = nothing held;
    - `flush()`: make everything buffered durable (every checkpoint: revoke, shutdown, idle);
    - `on_assign(partitions)` / `on_revoke(partitions)`: (logical topic, partition) pairs gained or lost, so a
      sink or state owner can load or drop per-partition state (`on_revoke` runs after the final checkpoint of
      those partitions).

    A duck-typed object that does not subclass `Sink` is still accepted with the old contract (`write` gets the
    records only); that path is kept until every service has moved to `(record, outputs)` pairs.
    """

    def write(self, batch: list[Handled]) -> None:
        """Buffer the batch's records and outputs."""

    def on_batch_done(self) -> None:
        """Called once per batch after `write` (and after a batch with nothing to write)."""

    def on_idle(self) -> None:
        """Called after a poll that brought no record."""

    def held_offsets(self) -> dict[TopicPartitionKey, int]:
        return {}

    def flush(self) -> None:
        """Make everything buffered durable."""

    def on_assign(self, partitions: Sequence[TopicPartitionKey]) -> None:
        """Partitions gained (logical topic names)."""

    def on_revoke(self, partitions: Sequence[TopicPartitionKey]) -> None:
        """Partitions lost (after their final checkpoint)."""


def sink_takes_outputs(sink: Any) -> bool:
    """True for a `Sink` subclass (gets `(record, outputs)` pairs), False for an old-style duck-typed sink."""
    return isinstance(sink, Sink)
