"""On Tansu: a consumer loop whose state restores its partitions on assignment (the advisor's changelog, the
normalizer's alarms) blocks the loop; /livez follows the restore's progress (read_topic reports the records it
reads) instead of the loop's beat, and /readyz shows the progress (issue 17)."""

from __future__ import annotations

import threading
import time

import pytest
from loop_helpers import raw_reading
from polling import wait_for

from lineguard import topics
from lineguard.health import Health
from lineguard.kafka import ConsumerLoop, Producer, read_topic

pytestmark = pytest.mark.integration


class SlowRestoringState:
    """A state participant reading a changelog on assignment, slowly (a large changelog on a busy broker)."""

    def __init__(self, settings, health: Health) -> None:
        self.settings, self.health = settings, health
        self.samples: list[tuple[bool, dict]] = []
        self.restored = threading.Event()

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        for _ in read_topic(self.settings, topics.RAW_TELEMETRY, decode=False):
            time.sleep(0.03)  # 9 s in all: far longer than the liveness and the stall timeouts
            self.samples.append((self.health.alive(), self.health.status()))
        self.restored.set()

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        pass

    def flush(self) -> bool:
        return True


def test_a_restore_on_assignment_keeps_the_loop_alive_while_it_reads(make_settings, create_topics):
    settings = make_settings(liveness_timeout_s=0.3, restore_stall_timeout_s=4.0)
    create_topics(settings)
    producer = Producer(settings)
    for i in range(300):
        producer.produce(topics.RAW_TELEMETRY, f"device-{i % 12}", raw_reading(i))
    assert producer.close() == 0
    health = Health("restorer", settings.liveness_timeout_s, settings.restore_stall_timeout_s)
    state = SlowRestoringState(settings, health)
    loop = ConsumerLoop(settings, "restore-progress", [topics.LINE_ALARMS], lambda record: None, health=health,
                        state=state)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        assert wait_for(state.restored.is_set, timeout=60), "the restore on assignment did not finish"
        assert wait_for(lambda: health.status()["ready"], timeout=10), "not ready after the restore"
    finally:
        loop.stop()
        thread.join(30)
    assert len(state.samples) == 300
    blocked = max(s[1]["seconds_since_progress"] for s in state.samples)
    assert blocked > settings.restore_stall_timeout_s, "the loop was blocked longer than both timeouts"
    assert all(alive for alive, _ in state.samples), "a restore that moves never fails /livez"
    for _, status in state.samples:
        assert status["ready"] is False and status["why_not_ready"].startswith("restoring restore-progress")
    read = [s[1]["restore"][0]["records_read"] for s in state.samples]
    assert read == sorted(read) and read[-1] >= 275  # read_topic reports every 25 records
    last = state.samples[-1][1]["restore"][0]
    assert last["partitions_total"] >= 1
    assert health.alive() and "restore" not in health.status()
