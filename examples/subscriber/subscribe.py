#!/usr/bin/env python3
"""A plant system subscribing to a Lineguard topic, with nothing from Lineguard but its published schemas.

    pip install confluent-kafka fastavro            # plus confluent-kafka[schemaregistry] with a registry
    python examples/subscriber/subscribe.py recommendations.v1 --group mes.recommendations --max 5

Prints each record as one JSON line. Reads both wire formats Lineguard writes (docs/subscribing.md):
Avro single-object encoding (embedded default: C3 01 + CRC-64-AVRO fingerprint, schemas from `schemas/`) and
the Confluent wire format (0x00 + 4-byte schema id, schemas from the registry given by --registry).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, KafkaError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def single_object_schemas(folder: Path) -> dict[bytes, dict]:
    """CRC-64-AVRO fingerprint (8 bytes, little-endian, as the encoding carries it) -> parsed schema."""
    by_fingerprint = {}
    for path in folder.glob("*.avsc"):
        parsed = fastavro.parse_schema(json.loads(path.read_text()))
        canonical = fastavro.schema.to_parsing_canonical_form(parsed)
        by_fingerprint[bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))] = parsed
    return by_fingerprint


class Decoder:
    def __init__(self, folder: Path, registry_url: str | None) -> None:
        self.by_fingerprint = single_object_schemas(folder)
        self.registry = None
        self.by_id: dict[int, dict] = {}
        if registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient
            self.registry = SchemaRegistryClient({"url": registry_url})

    def decode(self, value: bytes) -> dict:
        if value[:2] == b"\xc3\x01":
            schema = self.by_fingerprint.get(value[2:10])
            if schema is None:
                raise ValueError(f"unknown schema fingerprint {value[2:10].hex()}: update your copy of schemas/")
            return fastavro.schemaless_reader(io.BytesIO(value[10:]), schema)
        if value[:1] == b"\x00" and len(value) >= 5:
            if self.registry is None:
                raise ValueError("Confluent wire format: pass --registry URL")
            schema_id = int.from_bytes(value[1:5], "big")
            if schema_id not in self.by_id:
                text = self.registry.get_schema(schema_id).schema_str
                self.by_id[schema_id] = fastavro.parse_schema(json.loads(text))
            return fastavro.schemaless_reader(io.BytesIO(value[5:]), self.by_id[schema_id])
        raise ValueError("not a Lineguard Avro record (first bytes are neither C3 01 nor 00)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topic", help="catalog name, e.g. recommendations.v1 (the prefix is added)")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--prefix", default="", help="the deployment's LINEGUARD_TOPIC_PREFIX")
    parser.add_argument("--group", required=True, help="your own consumer group: <system>.<purpose>")
    parser.add_argument("--registry", help="schema registry URL (production)")
    parser.add_argument("--schemas", type=Path, default=SCHEMAS, help="folder with Lineguard's *.avsc")
    parser.add_argument("--max", type=int, default=0, help="stop after N records (0: run until Ctrl-C)")
    parser.add_argument("--idle-timeout", type=float, default=0, help="stop after N seconds without a record")
    args = parser.parse_args(argv)

    decoder = Decoder(args.schemas, args.registry)
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.offset.store": False})
    consumer.subscribe([args.prefix + args.topic])
    seen = idle = 0.0
    try:
        while not args.max or seen < args.max:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1.0
                if args.idle_timeout and idle >= args.idle_timeout:
                    break
                continue
            idle = 0.0
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"consume error: {msg.error()}", file=sys.stderr)
                continue
            try:
                record = decoder.decode(msg.value())
            except ValueError as exc:  # keep going: log it, and store the offset so it is not read again
                print(f"skipped {msg.topic()}[{msg.partition()}]@{msg.offset()}: {exc}", file=sys.stderr)
            else:
                key = msg.key().decode() if msg.key() else None
                print(json.dumps({"key": key, "offset": msg.offset(), "value": record}, default=str), flush=True)
                seen += 1
            consumer.store_offsets(msg)  # after the record is handled: at-least-once
    finally:
        consumer.close()  # commits the stored offsets and leaves the group
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
