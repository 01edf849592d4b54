"""State changelogs: compacted topics co-partitioned with a service's input, so a worker restores only the
partitions it was assigned (the advisor's windows, the normalizer's alarms)."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic

from lineguard.kafka.clients import new_admin
from lineguard.settings import Settings


def ensure_changelog(settings: Settings, changelog: str, partitions: int, co_partitioned_with: str,
                     admin: Any = None, existing: dict[str, Any] | None = None) -> None:
    """Create the compacted topic `changelog` (logical name) with `partitions` partitions, or check that it has
    them: its partition p holds the state of input partition p, so another count would restore the wrong state.
    Raises ValueError naming both topics. `admin` and `existing` (its list_topics) may be passed to reuse them."""
    admin = admin if admin is not None else new_admin(settings)
    if existing is None:
        existing = admin.list_topics(timeout=10).topics
    name = settings.topic(changelog)
    if name in existing:
        have = len(existing[name].partitions)
        if have != partitions:
            raise ValueError(f"the changelog {name} has {have} partitions and {co_partitioned_with} {partitions}: "
                             "it must be co-partitioned with them (delete it; it is rebuilt)")
        return
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=-1,
                                            config={"cleanup.policy": "compact"})])
    for future in futures.values():
        try:
            future.result(15)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
