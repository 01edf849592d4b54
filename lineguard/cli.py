"""`lineguard`: the command-line tool for operators and SREs.

    lineguard up                      the whole system on its embedded default (what `make run` calls)
    lineguard topics create|list      topics from the catalog (idempotent)
    lineguard tail TOPIC              decode Avro and print JSON lines (--from-beginning, --max N)
    lineguard produce TOPIC           JSON lines on stdin, encoded with the topic's schema
    lineguard settings                every environment variable, its default and what it does
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition

from lineguard.avro import AvroSerde, RecordMismatchError, SerdeError
from lineguard.catalog import CatalogError, admin_client, bootstrap_topics, load_catalog
from lineguard.kafka import Producer, client_security, new_consumer
from lineguard.settings import Settings, SettingsError


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {"service_name": "cli"}
    if getattr(args, "bootstrap", None):
        overrides["kafka_bootstrap"] = args.bootstrap
    return Settings.from_env(**overrides)


def _fail(message: str, code: int = 2) -> int:
    print(f"lineguard: {message}", file=sys.stderr)
    return code


def cmd_up(args: argparse.Namespace) -> int:
    from lineguard.embedded import up
    from lineguard.logs import setup_logging

    settings = _settings(args)
    setup_logging("lineguard", settings.log_level)
    return up(settings, kafka_port=args.kafka_port, mqtt_port=args.mqtt_port, scenario=args.scenario,
              speed=args.speed, with_simulator=not args.no_simulator, ready_timeout=args.ready_timeout,
              lines=args.lines, workers=args.workers)


def cmd_topics(args: argparse.Namespace) -> int:
    settings = _settings(args)
    catalog = load_catalog(settings.schemas_dir)
    admin = admin_client(settings.kafka_bootstrap, client_security(settings))
    if args.action == "create":
        report = bootstrap_topics(admin, catalog, settings.topic_prefix, timeout=args.timeout,
                                  replication_factor=args.replication_factor,
                                  min_insync_replicas=args.min_insync_replicas)
        for name in report.created:
            print(f"created  {name}")
        for name in report.existing:
            print(f"exists   {name}")
        for drift in report.drift:
            print(f"drift    {drift}  (left alone)")
        print(f"{len(report.created)} created, {len(report.existing)} already there")
        return 0
    metadata = admin.list_topics(timeout=args.timeout)
    prefix = settings.topic_prefix
    print(f"{'topic':<32} {'partitions':>10}  {'in cluster':<10}  key / schema")
    for spec in catalog.topics.values():
        full = prefix + spec.name
        have = metadata.topics.get(full)
        partitions = str(len(have.partitions)) if have else "-"
        print(f"{full:<32} {partitions:>10}  {'yes' if have else 'MISSING':<10}  "
              f"{spec.key or '-'} / {spec.schema or ('raw bytes (dead letters)' if spec.is_dlq else 'raw bytes')}")
    extra = sorted(t for t in metadata.topics if t.startswith(prefix) and t[len(prefix):] not in catalog
                   and not t.startswith("__"))
    for name in extra:
        print(f"{name:<32} {len(metadata.topics[name].partitions):>10}  {'yes':<10}  (not in the catalog)")
    return 0


def _logical(topic: str, prefix: str) -> str:
    return topic[len(prefix):] if prefix and topic.startswith(prefix) else topic


def cmd_tail(args: argparse.Namespace) -> int:
    settings = _settings(args)
    catalog = load_catalog(settings.schemas_dir)
    topic = _logical(args.topic, settings.topic_prefix)
    if topic not in catalog:
        return _fail(f"unknown topic {args.topic!r}; known: {', '.join(catalog.names())}")
    serde = AvroSerde(settings.schemas_dir, settings.schema_registry_url, settings.schema_registry_auth,
                      settings.topic_prefix)
    full = settings.topic(topic)
    consumer = new_consumer(settings, f"lineguard-tail-{uuid.uuid4()}", **{"enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(full, timeout=10)
        topic_meta = metadata.topics.get(full)
        if topic_meta is None or topic_meta.error is not None or not topic_meta.partitions:
            return _fail(f"topic {full} does not exist in the cluster; run `lineguard topics create`")
        start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
        consumer.assign([TopicPartition(full, p, start) for p in topic_meta.partitions])
        printed = 0
        idle_since = time.monotonic()
        has_schema = serde.has_schema(topic)
        while args.max is None or printed < args.max:
            msg = consumer.poll(0.5)
            if msg is None:
                if args.timeout and time.monotonic() - idle_since > args.timeout:
                    break
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"lineguard: {msg.error().str()}", file=sys.stderr)
                continue
            idle_since = time.monotonic()
            out: dict[str, Any]
            if has_schema:
                try:
                    out = serde.decode(topic, msg.value())
                except SerdeError as exc:
                    out = {"_undecodable": str(exc), "_bytes_b64": base64.b64encode(msg.value() or b"").decode()}
            else:  # a dead-letter topic: original bytes and the reason headers
                out = {"headers": {k: (v or b"").decode("utf-8", "replace") for k, v in msg.headers() or []},
                       "value_b64": base64.b64encode(msg.value() or b"").decode()}
            if args.meta:
                out = {"partition": msg.partition(), "offset": msg.offset(),
                       "key": (msg.key() or b"").decode("utf-8", "replace"), "value": out}
            print(json.dumps(out, default=str), flush=True)
            printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    settings = _settings(args)
    catalog = load_catalog(settings.schemas_dir)
    topic = _logical(args.topic, settings.topic_prefix)
    if topic not in catalog:
        return _fail(f"unknown topic {args.topic!r}; known: {', '.join(catalog.names(include_dlq=False))}")
    spec = catalog[topic]
    if spec.schema is None:
        return _fail(f"{topic} carries raw bytes, not Avro records (a dead-letter topic or a service's own state); "
                     "produce to a topic with a schema")
    producer = Producer(settings)
    records: list[tuple[str | None, dict]] = []
    errors: list[str] = []
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not JSON: {exc.msg} at column {exc.colno}")
            continue
        try:
            producer.serde.check(topic, value)
        except RecordMismatchError as exc:
            errors.append(f"line {number}: {exc}")
            continue
        key = args.key if args.key is not None else (str(value.get(spec.key_field)) if spec.key_field else None)
        records.append((key, value))
    if errors:
        for error in errors:
            print(f"lineguard: refused {error}", file=sys.stderr)
        print(f"lineguard: nothing produced: {len(errors)} of {len(errors) + len(records)} record(s) "
              f"do not fit {topic}", file=sys.stderr)
        return 1
    failures: list[str] = []
    for key, value in records:
        producer.produce(topic, key, value,
                         on_delivery=lambda err, msg: failures.append(err.str()) if err else None)
    remaining = producer.close(timeout=args.timeout)
    if failures or remaining:
        return _fail(f"{len(failures) + remaining} record(s) not acknowledged by Kafka: {failures[:3]}", 1)
    print(f"produced {len(records)} record(s) to {settings.topic(topic)}", file=sys.stderr)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    for var, default, help_text in Settings.describe():
        print(f"{var:<36} {default!s:<22} {help_text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineguard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $LINEGUARD_KAFKA_BOOTSTRAP)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the whole system on its embedded default, in the foreground")
    p.add_argument("--kafka-port", type=int, default=9092)
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--scenario", default="normal_run", help="simulator scenario (default: normal_run)")
    p.add_argument("--speed", type=float, default=1.0, help="simulator clock speed (default: 1 = real time)")
    p.add_argument("--no-simulator", action="store_true", help="start the platform without the simulated line")
    p.add_argument("--lines", type=int, default=0,
                   help="a plant of N lines generated from the plant model's first line (services and simulator)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes of each consumer service (normalizer, advisor) in one group, ports +100 each")
    p.add_argument("--ready-timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("topics", help="create or list the catalog's topics")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--replication-factor", type=int, default=None,
                   help="replicas per partition for new topics (default: the catalog's, 1; use 3 in production)")
    p.add_argument("--min-insync-replicas", type=int, default=None,
                   help="min.insync.replicas for new topics (e.g. 2 with 3 replicas)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("tail", help="print a topic's records as JSON lines")
    p.add_argument("topic")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not the newest")
    p.add_argument("--max", type=int, default=None, help="stop after N records")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many idle seconds")
    p.add_argument("--meta", action="store_true", help="wrap each value with partition, offset and key")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("produce", help="encode JSON lines from stdin with the topic's schema and produce them")
    p.add_argument("topic")
    p.add_argument("--key", default=None, help="record key (default: the catalog's key field of each record)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("settings", help="list every environment variable, its default and meaning")
    p.set_defaults(func=cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SettingsError, CatalogError) as exc:
        return _fail(str(exc))
    except KafkaException as exc:
        return _fail(f"Kafka: {exc}; is a broker running at $LINEGUARD_KAFKA_BOOTSTRAP?", 1)
    except SerdeError as exc:
        return _fail(str(exc), 1)


if __name__ == "__main__":
    sys.exit(main())
