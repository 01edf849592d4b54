"""The webhook spool on a real directory: durable appends, replay in order after a restart, a torn tail cut off,
deduplication by uplink id, the size bound, retries in order, and segments deleted once acknowledged.

Kafka is replaced here by a recorder of what the drain task hands to the pipeline; the integration test
(tests/integration/ingest/test_ingest_webhook_spool.py) runs the same spool against a real broker."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from pathlib import Path

import pytest

from services.ingest.pipeline import DeadLetter, DeliveryFailed, reading, source
from services.ingest.spool import SUFFIX, Spool, SpoolFull


class Recorder:
    """Stands in for IngestPipeline.deliver: keeps what it is given; fails the first `failures` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.delivered: list[str] = []
        self.letters: list[DeadLetter] = []
        self.calls = 0

    async def deliver(self, adapter, records, dead_letters=(), timeout=None):  # noqa: ANN001
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise DeliveryFailed("Kafka is away")
        self.delivered.extend(r.id for r in records)
        self.letters.extend(dead_letters)
        return len(records)


def records(n: int) -> list:
    return [reading(id=f"chirpstack:u{n}:m{i}", device="a84041000181c061", metric=f"m{i}", value=float(n),
                    unit=None, observed_at=n, received_at=n, src=source("chirpstack", "d", "/x", str(n), None))
            for i in range(2)]


async def drain(spool: Spool, until) -> None:  # noqa: ANN001
    spool.start()
    task = asyncio.create_task(spool.run())
    try:
        for _ in range(500):
            if until():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the spool did not drain in time")
    finally:
        spool.stop()
        await asyncio.wait_for(task, 5)
        spool.close()


def test_appends_survive_a_restart_and_replay_in_order_once(tmp_path: Path):
    async def first() -> None:
        spool = Spool(tmp_path, 1 << 20, Recorder())
        spool.start()
        assert await spool.append("chirpstack:u1", "chirpstack", records(1), [])
        assert await spool.append("chirpstack:u2", "chirpstack", records(2), [])
        assert not await spool.append("chirpstack:u1", "chirpstack", records(1), [])  # a retry: duplicate
        letter = DeadLetter(b"\x00raw", "bad", "InputError", "tts", "/lorawan/tts")
        assert await spool.append("tts:invalid:1", "tts", [], [letter])
        assert len(spool) == 3
        spool.close()  # no drain: as if Kafka were away and the process then died

    asyncio.run(first())
    recorder = Recorder(failures=2)
    spool = Spool(tmp_path, 1 << 20, recorder)
    assert len(spool) == 3 and spool.stats["replayed"] == 3
    asyncio.run(drain(spool, lambda: len(spool) == 0))
    assert recorder.delivered == ["chirpstack:u1:m0", "chirpstack:u1:m1", "chirpstack:u2:m0", "chirpstack:u2:m1"]
    assert [letter.payload for letter in recorder.letters] == [b"\x00raw"]  # bytes kept exactly
    assert spool.stats["retries"] == 1  # both adapters' runs of the batch failed once, then went again

    again = Spool(tmp_path, 1 << 20, Recorder())
    assert len(again) == 0

    async def duplicate_after_restart() -> None:
        again.start()
        assert not await again.append("chirpstack:u2", "chirpstack", records(2), [])
        again.close()

    asyncio.run(duplicate_after_restart())


def test_a_torn_last_entry_is_cut_off_and_the_rest_replayed(tmp_path: Path):
    async def write() -> None:
        spool = Spool(tmp_path, 1 << 20, Recorder())
        spool.start()
        for n in range(3):
            await spool.append(f"k{n}", "chirpstack", records(n), [])
        spool.close()

    asyncio.run(write())
    (segment,) = tmp_path.glob(f"*{SUFFIX}")
    good = segment.stat().st_size
    with segment.open("ab") as handle:
        handle.write(b"\x00\x00\x01\x00\xde\xad")  # a crash in the middle of the next append
    spool = Spool(tmp_path, 1 << 20, Recorder())
    assert len(spool) == 3 and spool.stats["torn"] == 1 and segment.stat().st_size == good


def test_a_full_spool_refuses_and_accepts_again_once_drained(tmp_path: Path):
    recorder = Recorder()
    spool = Spool(tmp_path, 65536, recorder)

    async def scenario() -> None:
        spool.start()
        n = 0
        with pytest.raises(SpoolFull):
            while True:
                await spool.append(f"k{n}", "chirpstack", records(n) * 40, [])
                n += 1
        assert n > 0 and spool.bytes <= 65536 and spool.stats["full"] == 1
        task = asyncio.create_task(spool.run())
        for _ in range(500):
            if not len(spool):
                break
            await asyncio.sleep(0.01)
        assert await spool.append("after", "chirpstack", records(0), [])
        spool.stop()
        await task
        spool.close()

    asyncio.run(scenario())


def test_segments_roll_and_are_deleted_once_acknowledged(tmp_path: Path):
    recorder = Recorder()
    spool = Spool(tmp_path, 1 << 22, recorder, segment_bytes=2048)

    async def scenario() -> None:
        spool.start()
        for n in range(30):
            await spool.append(f"k{n}", "chirpstack", records(n), [])
        assert len(list(tmp_path.glob(f"*{SUFFIX}"))) > 3

    async def both() -> None:
        await scenario()
        task = asyncio.create_task(spool.run())
        for _ in range(500):
            if not len(spool):
                break
            await asyncio.sleep(0.01)
        spool.stop()
        await task
        spool.close()

    asyncio.run(both())
    assert len(recorder.delivered) == 60 and recorder.delivered == sorted(recorder.delivered, key=lambda i: int(
        i.split(":")[1][1:]))
    assert len(list(tmp_path.glob(f"*{SUFFIX}"))) <= 1  # only the one being written is kept
    assert Spool(tmp_path, 1 << 22, Recorder()).stats["replayed"] == 0


def test_an_unreadable_entry_is_dead_lettered_not_a_block_for_the_rest(tmp_path: Path):
    body = json.dumps({"seq": 1, "key": "k1", "adapter": "tts", "at": 1.0}).encode()  # no records field
    (tmp_path / f"{1:020d}{SUFFIX}").write_bytes(struct.pack(">II", len(body), zlib.crc32(body)) + body)
    recorder = Recorder()
    spool = Spool(tmp_path, 1 << 20, recorder)

    async def scenario() -> None:
        spool.start()
        assert await spool.append("k2", "chirpstack", records(2), [])
        spool.close()

    asyncio.run(scenario())
    spool = Spool(tmp_path, 1 << 20, recorder)
    asyncio.run(drain(spool, lambda: len(spool) == 0))
    assert [letter.error_class for letter in recorder.letters] == ["SpoolEntryError"]
    assert recorder.letters[0].payload == body and recorder.delivered == ["chirpstack:u2:m0", "chirpstack:u2:m1"]
