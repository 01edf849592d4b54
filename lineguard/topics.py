"""Every catalog topic name, once. `schemas/topics.yaml` is the source of truth; a test checks that this module
and the catalog list the same topics (add a topic there first, then its constant here).

Names are logical: the producer and the consumer loop add `LINEGUARD_TOPIC_PREFIX` (`settings.topic(name)` gives
the full name). A dead-letter twin is `dlq(name)`.
"""

from __future__ import annotations

from lineguard.catalog import DLQ_SUFFIX

RAW_TELEMETRY = "raw.telemetry.v1"
RAW_ALARMS = "raw.alarms.v1"
RAW_INSPECTIONS = "raw.inspections.v1"
LINE_OBSERVATIONS = "line.observations.v1"
LINE_ALARMS = "line.alarms.v1"
LINE_INSPECTIONS = "line.inspections.v1"
RECOMMENDATIONS = "recommendations.v1"
ACTIONS = "actions.v1"
NOTIFICATIONS = "notifications.v1"
FEEDBACK = "feedback.v1"
ADVISOR_WINDOWS_CHANGELOG = "advisor.windows.changelog.v1"
NOTIFIER_STATE_CHANGELOG = "notifier.state.changelog.v1"
NORMALIZER_ALARMS_CHANGELOG = "normalizer.alarms.changelog.v1"


def dlq(topic: str) -> str:
    """The dead-letter twin of a topic."""
    return topic + DLQ_SUFFIX


def all_topics() -> list[str]:
    """Every constant of this module (for the catalog check)."""
    return [value for name, value in globals().items() if name.isupper() and isinstance(value, str)
            and name != "DLQ_SUFFIX"]
