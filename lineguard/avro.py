"""Avro serialization for every topic, in one of two wire formats.

- Embedded default: Avro single-object encoding (`C3 01` + 8-byte little-endian CRC-64-AVRO fingerprint of the
  writer schema's canonical form + body) against the schemas shipped in `schemas/` and their history.
- With a schema registry (`LINEGUARD_SCHEMA_REGISTRY_URL`): the Confluent wire format (magic `00` + 4-byte
  big-endian schema id + body); schemas are registered under `<topic>-value` (TopicNameStrategy).

Reading detects the format from the first byte and resolves the writer schema to the topic's current (reader)
schema, so records written under an older compatible schema still decode. An unknown schema or corrupt payload
raises a `SerdeError` subclass, which the consumer loop dead-letters.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from lineguard.avro_codec import compile_codec

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0


class SerdeError(Exception):
    """Base of every serialization error; the consumer loop dead-letters the record."""


class CorruptPayloadError(SerdeError):
    """The bytes are not a payload in either wire format, or the body does not decode."""


class UnknownSchemaError(SerdeError):
    """The payload names a schema (fingerprint or registry id) that this service does not know."""


class RecordMismatchError(SerdeError):
    """A record does not fit its topic's schema; the message names the field path and why."""


def default_schemas_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas"


def single_object_fingerprint(parsed_schema: Any) -> bytes:
    canonical = to_parsing_canonical_form(parsed_schema)
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def load_schema_file(path: Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


class _TopicSchema:
    __slots__ = ("name", "raw", "parsed", "fingerprint", "header", "codec")

    def __init__(self, name: str, raw: dict) -> None:
        self.name = name
        self.raw = raw
        self.parsed = fastavro.parse_schema(raw)
        # The hot path: code generated for this schema (None: a schema it does not cover, fastavro for all).
        self.codec = compile_codec(raw)
        self.fingerprint = single_object_fingerprint(self.parsed)
        self.header = SINGLE_OBJECT_MAGIC + self.fingerprint


def describe_mismatch(record: Any, parsed_schema: Any) -> str:
    """Why a record does not fit a schema, as 'field.path: reason' lines."""
    try:
        validate(record, parsed_schema, raise_errors=True)
    except ValidationError as exc:
        reasons = []
        for err in exc.errors:
            path = getattr(err, "field", None) or "record"
            # 'io.lineguard.v1.RawReading.source.device' -> 'source.device'
            parts = path.split(".")
            record_at = next((i for i, p in enumerate(parts) if p[:1].isupper()), None)
            short = ".".join(parts[record_at:]) if record_at is not None else path
            datum = getattr(err, "datum", None)
            expected = getattr(err, "schema", None)
            if isinstance(expected, dict):
                expected = expected.get("type", expected)
            got = "missing or null" if datum is None else f"{datum!r} ({type(datum).__name__})"
            reasons.append(f"{short or 'record'}: expected {expected}, got {got}")
        return "; ".join(reasons)
    except Exception as exc:  # noqa: BLE001 - report whatever the validator found
        return f"{type(exc).__name__}: {exc}"
    return "record fits the schema"


class AvroSerde:
    """Encode and decode the values of every catalogued topic.

    `topic` arguments are logical names (without prefix), e.g. `raw.telemetry.v1`.
    """

    def __init__(self, schemas_dir: Path | None = None, registry_url: str | None = None,
                 registry_auth: str | None = None, topic_prefix: str = "") -> None:
        self.schemas_dir = Path(schemas_dir or default_schemas_dir())
        self.topic_prefix = topic_prefix
        self._topics: dict[str, _TopicSchema] = {}
        self._by_fingerprint: dict[bytes, Any] = {}
        self._registry = None
        self._registry_ids: dict[str, int] = {}
        self._registry_schemas: dict[int, Any] = {}
        self._lock = threading.Lock()
        for path in sorted(self.schemas_dir.glob("*.avsc")):
            topic = path.name[: -len(".avsc")]
            schema = _TopicSchema(topic, load_schema_file(path))
            self._topics[topic] = schema
            self._by_fingerprint[schema.fingerprint] = schema.parsed
        # Older versions stay readable: a record written before an upgrade still decodes.
        for path in sorted(self.schemas_dir.glob("history/*/*.avsc")):
            parsed = fastavro.parse_schema(load_schema_file(path))
            self._by_fingerprint.setdefault(single_object_fingerprint(parsed), parsed)
        if registry_url:
            self._registry = _make_registry_client(registry_url, registry_auth)

    @property
    def wire_format(self) -> str:
        return "confluent" if self._registry is not None else "single-object"

    def topics(self) -> list[str]:
        return sorted(self._topics)

    def has_schema(self, topic: str) -> bool:
        return topic in self._topics

    def schema(self, topic: str) -> dict:
        return self._topic(topic).raw

    def parsed_schema(self, topic: str) -> Any:
        return self._topic(topic).parsed

    def _topic(self, topic: str) -> _TopicSchema:
        try:
            return self._topics[topic]
        except KeyError:
            raise UnknownSchemaError(
                f"no schema for topic {topic!r}; known: {', '.join(sorted(self._topics))}") from None

    # --- encoding -----------------------------------------------------------------------------------------

    def encode(self, topic: str, record: dict) -> bytes:
        schema = self._topic(topic)
        if self._registry is not None:
            header = struct.pack(">bI", CONFLUENT_MAGIC, self._registry_id(schema))
        else:
            header = schema.header
        if schema.codec is not None:
            out = bytearray(header)
            try:
                schema.codec.encode(out, record)
                return bytes(out)
            except Exception:  # noqa: BLE001, S110 - fastavro below gives the verdict and the error
                pass
        buf = io.BytesIO()
        buf.write(header)
        try:
            fastavro.schemaless_writer(buf, schema.parsed, record)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise RecordMismatchError(
                f"record does not fit schema {topic}: {describe_mismatch(record, schema.parsed)}") from exc
        return buf.getvalue()

    def check(self, topic: str, record: Any) -> None:
        """Raise RecordMismatchError with field paths when `record` does not fit the topic's schema."""
        schema = self._topic(topic)
        if not isinstance(record, dict):
            raise RecordMismatchError(f"record for {topic} must be a JSON object, got {type(record).__name__}")
        try:
            validate(record, schema.parsed, raise_errors=True)
        except ValidationError:
            raise RecordMismatchError(f"record does not fit schema {topic}: "
                                      f"{describe_mismatch(record, schema.parsed)}") from None
        unknown = sorted(set(record) - {f["name"] for f in schema.raw["fields"]})
        if unknown:
            raise RecordMismatchError(f"record does not fit schema {topic}: unknown field(s) {', '.join(unknown)}")

    # --- decoding -----------------------------------------------------------------------------------------

    def decode(self, topic: str, data: bytes | None) -> dict:
        if not data:
            raise CorruptPayloadError("empty payload (null or zero bytes)")
        schema = self._topic(topic)
        reader = schema.parsed
        first = data[0]
        if first == 0xC3:
            if len(data) < 10 or data[1] != 0x01:
                raise CorruptPayloadError("payload starts like single-object encoding but the header is truncated")
            fp = data[2:10]
            writer = self._by_fingerprint.get(fp)
            if writer is None:
                raise UnknownSchemaError(f"unknown schema fingerprint {fp.hex()} (single-object encoding)")
            start = 10
        elif first == CONFLUENT_MAGIC:
            if len(data) < 5:
                raise CorruptPayloadError("payload starts like the Confluent wire format but is shorter than 5 bytes")
            schema_id = struct.unpack(">I", data[1:5])[0]
            writer = self._registry_schema(schema_id)
            start = 5
        else:
            raise CorruptPayloadError(
                f"unknown wire format: first byte 0x{first:02x} (expected 0xc3 single-object or 0x00 Confluent)")
        if writer is reader and schema.codec is not None:
            try:
                record, end = schema.codec.decode(data, start)
            except Exception as exc:  # noqa: BLE001 - garbage raises IndexError, ValueError, struct.error...
                raise CorruptPayloadError(
                    f"body does not decode with its schema: {type(exc).__name__}: {exc}") from exc
            if end != len(data):
                raise CorruptPayloadError(f"{len(data) - end} trailing bytes after the record")
            return record
        body = data[start:]
        try:
            buf = io.BytesIO(body)
            if writer is reader:
                record = fastavro.schemaless_reader(buf, writer, None)
            else:
                record = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on garbage
            raise CorruptPayloadError(f"body does not decode with its schema: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(body):
            raise CorruptPayloadError(f"{len(body) - buf.tell()} trailing bytes after the record")
        return record  # type: ignore[return-value]

    # --- registry -----------------------------------------------------------------------------------------

    def _registry_id(self, schema: _TopicSchema) -> int:
        schema_id = self._registry_ids.get(schema.name)
        if schema_id is not None:
            return schema_id
        from confluent_kafka.schema_registry import Schema

        subject = f"{self.topic_prefix}{schema.name}-value"
        with self._lock:
            schema_id = self._registry.register_schema(subject, Schema(json.dumps(schema.raw), "AVRO"))
            self._registry_ids[schema.name] = schema_id
            self._registry_schemas[schema_id] = schema.parsed
        return schema_id

    def _registry_schema(self, schema_id: int) -> Any:
        parsed = self._registry_schemas.get(schema_id)
        if parsed is not None:
            return parsed
        if self._registry is None:
            raise UnknownSchemaError(
                f"payload uses the Confluent wire format (schema id {schema_id}) but no schema registry is "
                "configured; set LINEGUARD_SCHEMA_REGISTRY_URL")
        try:
            registered = self._registry.get_schema(schema_id)
        except Exception as exc:  # noqa: BLE001 - SchemaRegistryError or transport errors
            raise UnknownSchemaError(f"schema id {schema_id} not found in the registry: {exc}") from exc
        parsed = fastavro.parse_schema(json.loads(registered.schema_str))
        with self._lock:
            self._registry_schemas[schema_id] = parsed
        return parsed


def _make_registry_client(url: str, auth: str | None) -> Any:
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as exc:  # pragma: no cover - depends on installed extras
        raise RuntimeError("LINEGUARD_SCHEMA_REGISTRY_URL is set but the registry client is missing: "
                           "pip install 'lineguard[registry]'") from exc
    conf: dict[str, Any] = {"url": url}
    if auth:
        conf["basic.auth.user.info"] = auth
    # new_client() also understands mock:// URLs (an in-process registry, for tests and demos).
    return SchemaRegistryClient.new_client(conf)
