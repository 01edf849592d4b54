"""Dead letters: Kafka Connect style headers, which existing tools already parse."""

from __future__ import annotations

from lineguard.kafka.records import Headers


def error_headers(*, topic: str, stage: str, error_class: str, message: str, service: str,
                  partition: int | None = None, offset: int | None = None, group: str | None = None,
                  stacktrace: str | None = None, source: dict[str, str | None] | None = None) -> Headers:
    """Kafka Connect style dead-letter headers, which existing tools already parse.

    `topic`/`partition`/`offset` name where the record came from (for an input that never was in Kafka, such as
    an MQTT message ingest could not parse: the topic it was meant for, partition and offset -1); `source` adds
    `lineguard.source.<name>` headers (protocol, address, position) so the original can be traced.
    """
    headers: Headers = [
        ("__connect.errors.topic", topic.encode()),
        ("__connect.errors.partition", str(-1 if partition is None else partition).encode()),
        ("__connect.errors.offset", str(-1 if offset is None else offset).encode()),
        ("__connect.errors.stage", stage.encode()),
        ("__connect.errors.exception.class.name", error_class.encode()),
        ("__connect.errors.exception.message", message[:2000].encode("utf-8", "replace")),
        ("lineguard.service", service.encode()),
    ]
    if stacktrace:
        headers.append(("__connect.errors.exception.stacktrace", stacktrace[-4000:].encode("utf-8", "replace")))
    if group:
        headers.append(("__connect.errors.consumer.group", group.encode()))
    for name, value in (source or {}).items():
        if value is not None:
            headers.append((f"lineguard.source.{name}", str(value).encode("utf-8", "replace")))
    return headers


def dlq_headers(headers: Headers | None) -> dict[str, str]:
    """The Connect-style error headers of a dead letter, decoded (for tools and tests)."""
    return {k: v.decode("utf-8", "replace") for k, v in headers or () if v is not None and
            (k.startswith("__connect.errors.") or k.startswith("lineguard."))}


# A dead letter too big for its topic (the producer's message.max.bytes, or the topic's max.message.bytes) is
# stored with its value cut to this many bytes and these headers; the original stays in the source topic at the
# offset the headers name, so nothing is lost while its retention lasts.
DLQ_TRUNCATED_BYTES = 64 * 1024
DLQ_TRUNCATED_HEADER = "lineguard.dlq.truncated"
_MAX_KEPT_HEADER_BYTES = 16 * 1024


def truncated_dead_letter(key: bytes | None, value: bytes | None, headers: Headers,
                          reason: str) -> tuple[bytes | None, bytes | None, Headers]:
    """The dead letter to store when the whole one is too large: the value's first `DLQ_TRUNCATED_BYTES`, the
    key cut likewise, the record's own headers only while small, and headers saying what was cut."""
    original = len(value or b"")
    kept_headers: Headers = []
    dropped = 0
    for name, header in headers:
        size = len(name) + len(header or b"")
        ours = name.startswith(("__connect.errors.", "lineguard."))
        if size <= (_MAX_KEPT_HEADER_BYTES if ours else 1024):  # the reason headers, and small ones (traceparent)
            kept_headers.append((name, header))
        else:
            dropped += 1
    kept_headers += [
        (DLQ_TRUNCATED_HEADER, b"true"),
        ("lineguard.dlq.original.value.bytes", str(original).encode()),
        ("lineguard.dlq.original.key.bytes", str(len(key or b"")).encode()),
        ("lineguard.dlq.truncated.reason", reason[:500].encode("utf-8", "replace")),
    ]
    if dropped:
        kept_headers.append(("lineguard.dlq.headers.dropped", str(dropped).encode()))
    cut_key = key[:1024] if key is not None else None
    cut_value = value[:DLQ_TRUNCATED_BYTES] if value is not None else None
    return cut_key, cut_value, kept_headers
