"""The topic catalog (`schemas/topics.yaml`) and topic bootstrap.

Bootstrap is idempotent: existing topics are left as they are (a differing partition count or config is reported,
never changed behind an operator's back), missing topics are created with their partitions, cleanup policy and
retention. Every data topic has a `<name>.dlq` twin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from lineguard.avro import default_schemas_dir

DLQ_SUFFIX = ".dlq"


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class TopicSpec:
    name: str  # logical name, without prefix
    key: str
    schema: str | None
    key_field: str | None
    partitions: int
    replication_factor: int
    cleanup_policy: str
    retention_ms: int
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    is_dlq: bool = False

    def config(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


@dataclass
class Catalog:
    topics: dict[str, TopicSpec] = field(default_factory=dict)

    def __getitem__(self, name: str) -> TopicSpec:
        try:
            return self.topics[name]
        except KeyError:
            raise CatalogError(f"topic {name!r} is not in the catalog; known: {', '.join(self.names())}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.topics

    def names(self, include_dlq: bool = True) -> list[str]:
        return [n for n, t in self.topics.items() if include_dlq or not t.is_dlq]


def load_catalog(schemas_dir: Path | None = None) -> Catalog:
    path = Path(schemas_dir or default_schemas_dir()) / "topics.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: cannot read the topic catalog: {exc}") from exc
    defaults: dict[str, Any] = doc.get("defaults", {})
    catalog = Catalog()
    for i, raw in enumerate(doc.get("topics", [])):
        try:
            name = raw["name"]
            spec = TopicSpec(
                name=name,
                key=raw.get("key", ""),
                schema=raw.get("schema"),
                key_field=raw.get("key_field"),
                partitions=int(raw.get("partitions", defaults.get("partitions", 1))),
                replication_factor=int(raw.get("replication_factor", defaults.get("replication_factor", 1))),
                cleanup_policy=raw.get("cleanup_policy", defaults.get("cleanup_policy", "delete")),
                retention_ms=int(raw.get("retention_ms", defaults.get("retention_ms", 604800000))),
                producers=tuple(raw.get("producers", [])),
                consumers=tuple(raw.get("consumers", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CatalogError(f"{path}: topics[{i}]: {exc}") from exc
        if spec.cleanup_policy not in ("delete", "compact", "compact,delete"):
            raise CatalogError(f"{path}: topics[{i}].cleanup_policy: {spec.cleanup_policy!r} is not a Kafka policy")
        if spec.schema and not (path.parent / spec.schema).is_file():
            raise CatalogError(f"{path}: topics[{i}].schema: {spec.schema} does not exist")
        catalog.topics[name] = spec
        if raw.get("dlq", True):
            dlq = TopicSpec(
                name=name + DLQ_SUFFIX, key="original key", schema=None, key_field=None, partitions=1,
                replication_factor=spec.replication_factor, cleanup_policy="delete",
                retention_ms=int(defaults.get("dlq_retention_ms", 1209600000)),
                producers=spec.consumers, is_dlq=True,
            )
            catalog.topics[dlq.name] = dlq
    return catalog


@dataclass
class BootstrapReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)  # differences left alone, for the operator to decide


def admin_client(bootstrap: str, extra: dict[str, str] | None = None) -> AdminClient:
    """An admin client for a bootstrap address (tools without settings); services use
    `lineguard.kafka.clients.new_admin(settings)`, which adds the security settings itself."""
    from lineguard.kafka.clients import admin_from_config

    return admin_from_config({"bootstrap.servers": bootstrap, **(extra or {})})


def bootstrap_topics(admin: AdminClient, catalog: Catalog, prefix: str = "", timeout: float = 30.0,
                     replication_factor: int | None = None,
                     min_insync_replicas: int | None = None) -> BootstrapReport:
    """Create missing topics; report existing ones and any drift from the catalog."""
    report = BootstrapReport()
    metadata = admin.list_topics(timeout=timeout)
    missing: list[NewTopic] = []
    for spec in catalog.topics.values():
        full = prefix + spec.name
        if full in metadata.topics:
            report.existing.append(full)
            have = len(metadata.topics[full].partitions)
            if have != spec.partitions:
                report.drift.append(f"{full}: {have} partitions, catalog says {spec.partitions}")
            continue
        config = spec.config()
        if min_insync_replicas:
            config["min.insync.replicas"] = str(min_insync_replicas)
        missing.append(NewTopic(full, num_partitions=spec.partitions,
                                replication_factor=replication_factor or spec.replication_factor,
                                config=config))
    if missing:
        futures = admin.create_topics(missing, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout)
                report.created.append(name)
            except KafkaException as exc:
                # Another instance may have created it between our listing and now: that is fine.
                if exc.args and getattr(exc.args[0], "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                    report.existing.append(name)
                else:
                    raise
    if report.existing:
        report.drift.extend(_config_drift(admin, catalog, prefix, report.existing, timeout))
    return report


def _config_drift(admin: AdminClient, catalog: Catalog, prefix: str, names: list[str], timeout: float) -> list[str]:
    drift: list[str] = []
    try:
        futures = admin.describe_configs([ConfigResource("topic", n) for n in names], request_timeout=timeout)
    except KafkaException:
        return drift
    for resource, future in futures.items():
        try:
            configs = future.result(timeout=timeout)
        except KafkaException:
            continue
        spec = catalog[resource.name[len(prefix):]]
        for key, want in spec.config().items():
            have = configs.get(key)
            if have is not None and have.value is not None and have.value != want:
                drift.append(f"{resource.name}: {key}={have.value}, catalog says {want}")
    return drift


def wait_for_broker(bootstrap: str, timeout: float = 30.0, extra: dict[str, str] | None = None) -> None:
    """Block until the broker answers a metadata request, or raise TimeoutError saying what to check."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    admin = admin_client(bootstrap, {"socket.connection.setup.timeout.ms": "2000", **(extra or {})})
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=2)
            return
        except KafkaException as exc:
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"no Kafka broker answered at {bootstrap} within {timeout:.0f}s "
                       f"(check LINEGUARD_KAFKA_BOOTSTRAP): {last}")
