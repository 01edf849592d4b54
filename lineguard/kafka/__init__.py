"""Kafka for every service: one client factory, a producer that confirms delivery, an at-least-once loop.

- `lineguard.kafka.clients`: the only place that constructs confluent-kafka clients (security settings, MSK
  IAM), and `read_topic` (read a topic to its true end);
- `lineguard.kafka.producer`: `Producer` (Avro, idempotent, delivery awaited; `send()` for asyncio);
- `lineguard.kafka.loop`: `ConsumerLoop`, the consume-transform-produce loop with dead letters, and `DlqLimit`;
- `lineguard.kafka.offsets`: `OffsetTracker`, which offsets the loop may commit;
- `lineguard.kafka.records`: `Record`, `Output`, `Sink`;
- `lineguard.kafka.deadletters`: Kafka Connect style dead-letter headers.

The loop and producer are plain confluent-kafka (librdkafka) code; no stream framework is involved.
"""

from lineguard.kafka.clients import (
    AtTime,
    Tail,
    client_security,
    consumer_config,
    loop_producer_overrides,
    msk_iam_token_callback,
    new_admin,
    new_consumer,
    new_producer,
    producer_config,
    read_topic,
)
from lineguard.kafka.deadletters import DLQ_TRUNCATED_HEADER, dlq_headers, error_headers
from lineguard.kafka.loop import ConsumerLoop, DlqLimit, LoopStats
from lineguard.kafka.offsets import OffsetTracker
from lineguard.kafka.producer import DeliveryError, Producer
from lineguard.kafka.records import Handled, Handler, Headers, Output, Record, Sink

__all__ = [
    "AtTime", "ConsumerLoop", "DLQ_TRUNCATED_HEADER", "DeliveryError", "DlqLimit", "OffsetTracker", "Handled", "Handler", "Headers", "LoopStats", "Output", "Producer",
    "Record", "Sink", "Tail", "client_security", "consumer_config", "dlq_headers", "error_headers",
    "loop_producer_overrides", "msk_iam_token_callback", "new_admin", "new_consumer", "new_producer", "producer_config", "read_topic",
]
