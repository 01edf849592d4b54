"""lineguard.kafka.changelog: a state changelog is created compacted with its input's partition count, or refused
when an existing one has another count (its partition p must hold the state of input partition p)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lineguard.kafka.changelog import ensure_changelog
from lineguard.settings import Settings


class Admin:
    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = {name: SimpleNamespace(partitions=dict.fromkeys(range(n))) for name, n in topics.items()}
        self.created: list = []

    def list_topics(self, timeout: float = 0) -> SimpleNamespace:
        return SimpleNamespace(topics=self.topics)

    def create_topics(self, new: list) -> dict:
        self.created += new
        return {t.topic: SimpleNamespace(result=lambda timeout=None: None) for t in new}


SETTINGS = Settings.from_env(environ={}, topic_prefix="p.")


def test_a_missing_changelog_is_created_compacted_with_the_inputs_partitions() -> None:
    admin = Admin({"p.raw.alarms.v1": 6})
    ensure_changelog(SETTINGS, "normalizer.alarms.changelog.v1", 6, "p.raw.alarms.v1", admin)
    (topic,) = admin.created
    assert (topic.topic, topic.num_partitions, topic.config) == \
        ("p.normalizer.alarms.changelog.v1", 6, {"cleanup.policy": "compact"})


def test_an_existing_changelog_is_kept_when_it_matches_and_refused_when_it_does_not() -> None:
    admin = Admin({"p.normalizer.alarms.changelog.v1": 3})
    ensure_changelog(SETTINGS, "normalizer.alarms.changelog.v1", 3, "p.raw.alarms.v1", admin)
    assert admin.created == []
    with pytest.raises(ValueError, match="has 3 partitions and p.raw.alarms.v1 6"):
        ensure_changelog(SETTINGS, "normalizer.alarms.changelog.v1", 6, "p.raw.alarms.v1", admin)
