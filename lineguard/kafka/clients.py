"""The one place that builds confluent-kafka clients, and `read_topic` for "read a topic to its end".

Every consumer, producer and admin client of every service comes from here, so each gets the security settings
(`LINEGUARD_KAFKA_SECURITY`, and Amazon MSK IAM when `LINEGUARD_KAFKA_MSK_IAM_REGION` is set) and the same
client id. A test fails if any other module constructs a confluent-kafka client.

- `new_consumer(settings, group_id, **overrides)`: a consumer (at-least-once defaults of the consumer loop);
- `new_producer(settings, **overrides)`: the raw librdkafka producer (idempotent, murmur2_random); services use
  `lineguard.kafka.Producer`, which wraps one;
- `new_admin(settings, **overrides)`: an admin client;
- `read_topic(settings, topic, start=...)`: every record of a topic from a start to its true end.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from logging import WARNING
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka import Producer as RdProducer
from confluent_kafka.admin import AdminClient

from lineguard.health import current_restore
from lineguard.kafka.records import Record
from lineguard.logs import Throttle, get_logger, throttled_event
from lineguard.settings import Settings

if TYPE_CHECKING:
    from lineguard.avro import AvroSerde

log = get_logger("lineguard.kafka")


def client_security(settings: Settings) -> dict[str, Any]:
    """Security settings for every librdkafka client: LINEGUARD_KAFKA_SECURITY, plus MSK IAM when configured."""
    conf: dict[str, Any] = dict(settings.kafka_security)
    if settings.kafka_msk_iam_region:
        conf.setdefault("security.protocol", "SASL_SSL")
        conf["sasl.mechanism"] = "OAUTHBEARER"
        conf["oauth_cb"] = msk_iam_token_callback(settings.kafka_msk_iam_region)
        if check_mode_clients is not None:  # the signer is installed (imported above); sign nothing
            conf["oauth_cb"] = _check_mode_token
    return conf


# Check mode (`python -m services.<name> --check-config`, lineguard.check_config): clients are built, never used.
# While this is a list, each client built is described in it, and the MSK IAM token callback is a placeholder:
# confluent-kafka calls the callback inside the constructor, and signing would reach for AWS credentials.
check_mode_clients: list[dict[str, Any]] | None = None


def _check_mode_token(_config: str) -> tuple[str, float]:
    return "lineguard-check-config", time.time() + 300.0


def _construct(kind: str, cls: Any, conf: dict[str, Any]) -> Any:
    if check_mode_clients is not None:
        check_mode_clients.append({
            "kind": kind, "client_id": conf.get("client.id"),
            "security_protocol": conf.get("security.protocol", "PLAINTEXT"),
            "sasl_mechanism": conf.get("sasl.mechanism"), "ssl_ca_location": conf.get("ssl.ca.location"),
            "msk_iam": "oauth_cb" in conf or None})
    return cls(conf)


def msk_iam_token_callback(region: str) -> Callable[[str], tuple[str, float]]:
    """An OAUTHBEARER token callback for Amazon MSK IAM auth (token signed with the current AWS credentials)."""
    try:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
    except ImportError as exc:  # pragma: no cover - depends on installed extras
        raise RuntimeError("LINEGUARD_KAFKA_MSK_IAM_REGION is set but the signer is missing: "
                           "pip install 'lineguard[aws]'") from exc

    def token(_config: str) -> tuple[str, float]:
        value, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
        return value, expiry_ms / 1000.0  # librdkafka wants seconds since the epoch

    return token


def _base(settings: Settings, suffix: str = "") -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap,
            "client.id": f"lineguard-{settings.service_name}{suffix}",
            **client_security(settings)}


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The producer settings every service uses (idempotent, acks=all, the Java client's key hash)."""
    conf: dict[str, Any] = {
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 30000,
        "queue.buffering.max.messages": 200000,
    }
    conf = {**_base(settings), **conf}
    conf.update(overrides)
    return conf


def loop_producer_overrides(settings: Settings) -> dict[str, Any]:
    """What the shared consumer loop's producer sets on top of `producer_config`: a longer linger (as Kafka Streams
    lingers 100 ms), since the loop does not wait for a batch's deliveries before it consumes the next, fuller
    batches cost throughput nothing and the broker's CPU per record less."""
    return {"linger.ms": settings.kafka_loop_linger_ms}


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """The consumer loop's settings: offsets stored only after outputs are acknowledged, committed every second."""
    conf: dict[str, Any] = {
        **_base(settings),
        "group.id": group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,  # offsets are stored only after outputs are acknowledged
        "auto.commit.interval.ms": 1000,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.kafka_session_timeout_ms // 3),
        "partition.assignment.strategy": "range",
    }
    conf.update(overrides)
    return conf


def new_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    """A consumer with the loop's defaults; `overrides` are librdkafka settings (e.g. enable.auto.commit=False)."""
    return _construct("consumer", Consumer, consumer_config(settings, group_id, **overrides))


def new_producer(settings: Settings, **overrides: Any) -> RdProducer:
    """The raw librdkafka producer; services produce through `lineguard.kafka.Producer`, which builds one here."""
    return _construct("producer", RdProducer, producer_config(settings, **overrides))


def new_admin(settings: Settings, **overrides: Any) -> AdminClient:
    return _construct("admin", AdminClient, {**_base(settings, "-admin"), **overrides})


def admin_from_config(conf: dict[str, Any]) -> AdminClient:
    """An admin client from a plain configuration, for tools that know a bootstrap address but no settings
    (`lineguard.catalog.admin_client`, the embedded launcher's broker wait). Prefer `new_admin(settings)`."""
    return _construct("admin", AdminClient, conf)


def producer_from_config(conf: dict[str, Any]) -> RdProducer:
    """A raw producer from a complete configuration (`lineguard.kafka.Producer` replacing a fenced one)."""
    return _construct("producer", RdProducer, conf)


# --- read a topic to its end ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tail:
    """The last `count` records of each partition (handed out once the end is reached)."""

    count: int


@dataclass(frozen=True)
class AtTime:
    """Start at the first record with a timestamp at or after `ms` (epoch milliseconds)."""

    ms: int


BEGINNING = "beginning"
Start = str | Tail | AtTime

_skip_throttle = Throttle()


def read_topic(settings: Settings, topic: str, *, start: Start = BEGINNING, decode: bool = True,
               serde: AvroSerde | None = None, timeout_s: float = 60.0, quiet_s: float = 1.0,
               group_id: str | None = None, partitions: Collection[int] | None = None) -> Iterator[Record]:
    """Every record of `topic` (logical name) from `start` to the topic's end, in order per partition (only
    `partitions` when given: a worker restoring the state of the partitions it was assigned).

    The end is found without trusting a high watermark alone (Tansu 0.6 reports the first offset of the last
    batch + 1, so a watermark-bounded read stops early). A partition is finished when either
    - librdkafka reports end-of-partition (`enable.partition.eof`: the fetch position equals the high
      watermark and the fetch returned nothing more), or
    - the position has reached the high watermark read after the assignment AND either no record of that
      partition arrived during `quiet_s` of consuming (a broker with a low watermark then has nothing more to
      give) or the position has passed the high watermark of the first fetch response (where the partition
      ended when the read began: a topic written to all the time is never quiet and never reports its end).
    Records produced after the read started may or may not be included. Undecodable records (with `decode`) are
    skipped with a log line. Raises TimeoutError when `timeout_s` pass without progress (no record read, no
    partition finished: a slow but moving read of a large changelog goes on); a topic that does not exist yields
    nothing. No offsets are committed and no group is joined. Inside `Health.restoring` the read reports its
    progress (records read, partitions done) to that restore, which keeps `/livez` up while it moves.
    """
    if decode and serde is None:
        from lineguard.avro import AvroSerde

        serde = AvroSerde(settings.schemas_dir, settings.schema_registry_url, settings.schema_registry_auth,
                          settings.topic_prefix)
    full = settings.topic(topic)
    only = None if partitions is None else set(partitions)
    consumer = new_consumer(settings, group_id or f"lineguard-{settings.service_name}-reader-{uuid.uuid4().hex[:8]}",
                            **{"enable.auto.commit": False, "enable.partition.eof": True,
                               "auto.offset.reset": "earliest", "client.id": f"lineguard-{settings.service_name}-reader"})
    try:
        metadata = consumer.list_topics(full, timeout=10)
        info = metadata.topics.get(full)
        if info is None or info.error is not None or not info.partitions:
            return
        partitions = sorted(p for p in info.partitions if only is None or p in only)
        assignment: list[TopicPartition] = []
        if isinstance(start, AtTime):
            found = consumer.offsets_for_times([TopicPartition(full, p, max(start.ms, 0)) for p in partitions],
                                               timeout=10)
            assignment = [tp for tp in found if tp.offset >= 0]  # -1: no record at or after the time
        else:
            for p in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(full, p), timeout=10)
                if high <= low:
                    continue
                offset = OFFSET_BEGINNING if not isinstance(start, Tail) else max(low, high - start.count)
                assignment.append(TopicPartition(full, p, offset))
        if not assignment:
            return
        consumer.assign(assignment)
        # Watermarks taken after the assignment: what the read must at least reach.
        goal = {tp.partition: consumer.get_watermark_offsets(TopicPartition(full, tp.partition), timeout=10)[1]
                for tp in assignment}
        position = {tp.partition: (tp.offset if tp.offset >= 0 else 0) for tp in assignment}
        now = time.monotonic()
        last_record = {p: now for p in goal}
        todo = set(goal)
        fetched: dict[int, int] = {}
        deadline = now + timeout_s
        restore = current_restore()
        read = 0
        if restore is not None:
            restore.update(full, 0, 0, len(goal))
        # A tail starts `count` before the reported end, which may be short of the true end: keep the last
        # `count` per partition and hand them out once the end is reached.
        tails: dict[int, deque[Record]] | None = {} if isinstance(start, Tail) else None
        while todo:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"reading {full} to its end took more than {timeout_s:.0f} s "
                                   f"(partitions left: {sorted(todo)})")
            messages = consumer.consume(1000, 0.2)
            now = time.monotonic()
            done_before = len(todo)
            if any(m.error() is None for m in messages):
                deadline = now + timeout_s  # progress: the clock counts from the last record
            for msg in messages:
                err = msg.error()
                partition = msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(partition)
                    continue
                offset = msg.offset()
                position[partition] = offset + 1
                last_record[partition] = now
                read += 1
                if restore is not None and read % 25 == 0:  # a consumer of this generator may be slow
                    restore.update(full, read, len(goal) - len(todo), len(goal))
                value = msg.value()
                if decode:
                    try:
                        value = serde.decode(topic, value)  # type: ignore[union-attr]
                    except Exception as exc:  # noqa: BLE001 - SerdeError and what a broken record raises
                        throttled_event(log, _skip_throttle, (full, type(exc).__name__), "read_topic_record_skipped",
                                        level=WARNING, topic=full, partition=partition, offset=offset, error=str(exc)[:300])
                        continue
                record = Record(topic, partition, offset, msg.key(), value, msg.headers() or [], msg.timestamp()[1],
                                msg.value())
                if tails is None:
                    yield record
                else:
                    tails.setdefault(partition, deque(maxlen=start.count)).append(record)  # type: ignore[union-attr]
            for partition in list(todo):
                if partition not in fetched and messages:
                    # The high watermark of the first fetch: where the partition ended when the read began (a
                    # fetch response's watermark is right on Tansu; its ListOffsets answer can run short).
                    high = consumer.get_watermark_offsets(TopicPartition(full, partition), cached=True)[1]
                    if high is not None and high >= 0:
                        fetched[partition] = high
                if position[partition] >= goal[partition] and (
                        now - last_record[partition] >= quiet_s or position[partition] >= fetched.get(partition, -1) >= 0):
                    # Quiet, or past where the partition ended when the read began: a topic that is written
                    # to all the time (a running line) is never quiet, and never reaches end-of-partition.
                    todo.discard(partition)
            if len(todo) < done_before:
                deadline = now + timeout_s
            if restore is not None:
                restore.update(full, read, len(goal) - len(todo), len(goal))
        for partition in sorted(tails or {}):
            yield from tails[partition]  # type: ignore[index]
    finally:
        consumer.close()
