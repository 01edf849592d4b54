"""Three fixes to faust-streaming 0.15's aiokafka driver, applied before the worker consumer is built.

- `tune_fetch_wait`: Faust builds its worker consumer with `fetch_max_wait_ms=1500`, fixed. Tansu 0.6 answers a
  waiting fetch only when that time is up, not when data arrives (measured: aiokafka p50 486 ms with 1500, 19 ms
  with 100), which put up to 1.5 s on every notification.
- `keep_queued_on_resume`: Faust clears its streams' queues whenever flow control resumes (so records of revoked
  partitions are not processed after a rebalance). At the end of a table recovery it resumes a flow that the
  recovery had already resumed, after the stream partitions were resumed and sought: records fetched in between
  (the committed-offset round trip) were dropped with their read offset already taken, so an agent never saw them
  (seen on a restart: the ledger agent missed a vote, the notifier never became ready). Queues are cleared only when
  the flow was suspended.
- `rewind_uncommitted`: after table recovery Faust seeks the stream partitions back to their committed offsets,
  because records fetched while its flow was paused were dropped. aiokafka's `seek_to_committed` leaves a partition
  with no committed offset (or offset 0) where its fetcher is, so those dropped records were skipped for good:
  seen on a restart before the first commit, where the ledger agent never saw the notifications sent before it and
  the notifier never became ready. Such partitions are sought to their beginning, where
  `auto_offset_reset=earliest` starts them anyway (at least once, as everywhere: a record seen twice is deduplicated
  by the ledger).
"""

from __future__ import annotations

from typing import Any


def tune_fetch_wait(ms: int) -> None:
    """Set the fetch wait on the consumer Faust builds, before it starts."""
    from faust.transport.drivers import aiokafka as driver

    original = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, "lineguard_wait_ms", None) == ms:
        return
    original = getattr(original, "lineguard_original", original)

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    create.lineguard_wait_ms = ms  # type: ignore[attr-defined]
    create.lineguard_original = original  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._create_worker_consumer = create


async def seek_to_committed_or_beginning(self: Any) -> Any:
    """Faust's consumer thread's `seek_to_committed`, plus: stream partitions (not a table's changelog, which the
    recovery reads itself) with no committed offset are sought to their beginning."""
    consumer = self._ensure_consumer()
    changelogs = set(self.app.tables.changelog_topics)

    async def seek() -> Any:
        committed = await consumer.seek_to_committed()
        rewind = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
        if rewind:
            await consumer.seek_to_beginning(*rewind)
        return committed

    return await self.call_thread(seek)


def resume_clearing_only_after_suspend(self: Any) -> None:
    """`FlowControlEvent.resume` that clears the managed queues only when the flow was suspended."""
    suspended = self._suspend.is_set()
    self._suspend.clear()
    self._resume.set()
    if suspended:
        self.clear()


def keep_queued_on_resume() -> None:
    """Install `resume_clearing_only_after_suspend` on mode's FlowControlEvent (Faust's flow control)."""
    from mode.utils.queues import FlowControlEvent

    FlowControlEvent.resume = resume_clearing_only_after_suspend


def rewind_uncommitted() -> None:
    """Install `seek_to_committed_or_beginning` on Faust's aiokafka consumer thread."""
    from faust.transport.drivers import aiokafka as driver

    driver.AIOKafkaConsumerThread.seek_to_committed = seek_to_committed_or_beginning
