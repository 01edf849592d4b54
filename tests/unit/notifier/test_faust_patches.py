"""Faust's seek back to committed offsets after table recovery must not skip a partition that has no commit yet
(records fetched while the flow was paused are dropped by Faust; aiokafka leaves such a partition where it is)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition

from services.notifier.faust_patches import seek_to_committed_or_beginning

NOTIFICATIONS = "p.notifications.v1"
CHANGELOG = "p.notifier.state.changelog.v1"


class FakeAiokafkaConsumer:
    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self.committed = committed
        self.to_beginning: list[TopicPartition] = []

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        return self.committed

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.to_beginning.extend(partitions)


class FakeConsumerThread:
    def __init__(self, consumer: FakeAiokafkaConsumer) -> None:
        self.consumer = consumer
        self.app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={CHANGELOG}))

    def _ensure_consumer(self) -> FakeAiokafkaConsumer:
        return self.consumer

    async def call_thread(self, fun, *args):
        return await fun(*args)


def test_stream_partitions_without_a_commit_start_from_the_beginning() -> None:
    never, zero, moved = (TopicPartition(NOTIFICATIONS, p) for p in range(3))
    changelog = TopicPartition(CHANGELOG, 0)
    committed = {never: None, zero: 0, moved: 7, changelog: None}
    consumer = FakeAiokafkaConsumer(committed)
    result = asyncio.run(seek_to_committed_or_beginning(FakeConsumerThread(consumer)))
    assert result == committed, "Faust still gets the committed offsets it records"
    assert sorted(consumer.to_beginning) == [never, zero], "a committed partition stays at its commit; the " \
                                                            "table's changelog is the recovery's"


def test_the_patch_is_what_faust_calls() -> None:
    from faust.transport.drivers import aiokafka as driver

    from services.notifier.faust_patches import rewind_uncommitted

    rewind_uncommitted()
    assert driver.AIOKafkaConsumerThread.seek_to_committed is seek_to_committed_or_beginning


def test_a_resume_without_a_suspend_keeps_what_is_queued() -> None:
    """Faust resumes flow control at the end of a table recovery that had resumed it already: records queued for
    the streams in between must stay; a resume after a suspend (a rebalance) still clears the queues."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    from services.notifier.faust_patches import keep_queued_on_resume

    keep_queued_on_resume()

    async def scenario() -> tuple[int, int]:
        flow = FlowControlEvent()
        queue: FlowControlQueue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        flow.suspend()
        queue.put_nowait("stale record of a revoked partition")
        flow.resume()
        after_rebalance = queue.qsize()
        queue.put_nowait("record fetched after the seek")
        flow.resume()
        return after_rebalance, queue.qsize()

    assert asyncio.run(scenario()) == (0, 1)
