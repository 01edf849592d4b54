"""The webhook spool: LoRaWAN uplinks are made durable on local disk before the network server gets its 2xx,
and replayed into Kafka in order from there.

Neither ChirpStack v4 (5 s client timeout, then a warning) nor The Things Stack v3 (tried once unless Cloud Plus)
retries a failed webhook, so answering 503 while Kafka is away loses the uplink. Instead every parsed uplink
(its records and dead letters) is appended to this spool and answered as soon as the append is on disk; a drain
task produces the entries to Kafka in append order, and only a full spool makes ingest answer 503.

On disk (one directory, one process):
- segments `<first seq, 20 digits>.spool`, append-only; each entry is framed as 4-byte big-endian length,
  4-byte CRC-32, then the entry as compact JSON (`seq`, `key`, `adapter`, `at`, records, dead letters);
- appends are written and fsynced together (group commit on one writer thread) before any caller is answered;
- `ack.json` holds the first seq not yet acknowledged by Kafka, written atomically (temporary file, fsync,
  rename, directory fsync) after each delivered batch; segments wholly below it are deleted.
After a crash the spool is read back: a torn last entry (a crash mid-write, never acknowledged to its caller) is
cut off, entries below the ack are remembered only for deduplication, the rest are replayed. A crash between
Kafka's acknowledgement and the ack write replays that batch again: the records carry the same ids.

Deduplication: an entry's key is the uplink's own id (ChirpStack deduplicationId, TTS correlation id); a key that
is pending, or was delivered from a segment still on disk, is answered as a duplicate without a second append.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineguard import telemetry
from lineguard.logs import event, get_logger
from services.ingest.pipeline import DeadLetter, DeliveryFailed, Emit, IngestPipeline

log = get_logger(__name__)

_HEADER = struct.Struct(">II")
SUFFIX = ".spool"
ACK_FILE = "ack.json"
RECENT_KEYS = 100_000  # delivered keys remembered for deduplication
BATCH_ENTRIES = 500  # entries produced together by the drain task
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0


class SpoolFull(Exception):
    """The spool holds its maximum: the caller must answer 503 (the only case left where data is refused)."""


@dataclass(slots=True)
class _Entry:
    seq: int
    key: str
    adapter: str
    size: int
    appended: float  # time.time() of the append, for the age metric
    data: bytes  # the JSON body, decoded again when drained


def encode_entry(seq: int, key: str, adapter: str, records: list[Emit], dead_letters: list[DeadLetter]) -> bytes:
    return json.dumps({
        "seq": seq, "key": key, "adapter": adapter, "at": time.time(),
        "records": [[r.topic, r.key, r.value] for r in records],
        "dead_letters": [[base64.b64encode(d.payload).decode(), d.reason, d.error_class, d.protocol, d.address,
                          d.position, d.key] for d in dead_letters],
    }, separators=(",", ":"), allow_nan=False).encode()


def decode_entry(data: bytes) -> tuple[list[Emit], list[DeadLetter]]:
    body = json.loads(data)
    records = [Emit(topic, key, value) for topic, key, value in body["records"]]
    letters = [DeadLetter(base64.b64decode(payload), reason, error_class, protocol, address, position, key)
               for payload, reason, error_class, protocol, address, position, key in body["dead_letters"]]
    return records, letters


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable FIFO of webhook entries; `append` from the event loop, `run` drains it into the pipeline."""

    def __init__(self, directory: Path, max_bytes: int, pipeline: IngestPipeline, segment_bytes: int = 8 << 20,
                 delivery_timeout_s: float = 30.0, service: str = "ingest") -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.pipeline = pipeline
        self.delivery_timeout_s = delivery_timeout_s
        self._pending: deque[_Entry] = deque()
        self._pending_keys: set[str] = set()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0  # bytes of pending entries (what the bound counts)
        self._reserved = 0  # bytes accepted for appending but not yet on disk
        self._lock = threading.Lock()
        self._queue: list[tuple[_Entry, bytes, Callable[[BaseException | None], None]]] = []
        self._wake_writer = threading.Condition(self._lock)
        self._segments: list[tuple[int, Path]] = []  # (first seq, path), oldest first
        self._file: Any = None
        self._file_size = 0
        self._next_seq = 1
        self._acked = 1  # first seq not yet acknowledged by Kafka
        self._closing = False
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_drain: asyncio.Event | None = None
        self._stopping = False
        self.stats = {"appended": 0, "duplicates": 0, "full": 0, "delivered": 0, "replayed": 0, "retries": 0,
                      "torn": 0}
        self._m_entries = telemetry.gauge(service, "webhook_spool_entries",
                                          "Webhook entries on disk not yet acknowledged by Kafka.")
        self._m_bytes = telemetry.gauge(service, "webhook_spool_bytes", "Bytes of those entries.")
        self._m_age = telemetry.gauge(service, "webhook_spool_oldest_age_seconds",
                                      "Age of the oldest entry not yet acknowledged by Kafka (0 when empty).")
        self._m_full = telemetry.counter(service, "webhook_spool_full",
                                         "Webhook requests answered 503 because the spool was full.")
        self._m_entries.set_function(lambda: len(self._pending))
        self._m_bytes.set_function(lambda: self._bytes)
        self._m_age.set_function(self.oldest_age_s)
        self._recover()

    # --- state ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def bytes(self) -> int:
        return self._bytes

    def oldest_age_s(self) -> float:
        pending = self._pending
        return max(0.0, time.time() - pending[0].appended) if pending else 0.0

    # --- recovery ---------------------------------------------------------------------------------------------

    def _recover(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ack_path = self.directory / ACK_FILE
        if ack_path.exists():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self._acked = int(json.loads(ack_path.read_text())["next"])
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                first = int(path.stem)
            except ValueError:
                continue
            self._segments.append((first, path))
        replay = 0
        for index, (_, path) in enumerate(self._segments):
            last = index == len(self._segments) - 1
            data = path.read_bytes()
            offset = 0
            while offset < len(data):
                if offset + _HEADER.size > len(data):
                    break
                length, crc = _HEADER.unpack_from(data, offset)
                body = data[offset + _HEADER.size:offset + _HEADER.size + length]
                if len(body) != length or zlib.crc32(body) != crc:
                    break
                try:
                    meta = json.loads(body)
                    entry = _Entry(int(meta["seq"]), str(meta["key"]), str(meta["adapter"]), len(body),
                                   float(meta["at"]), body)
                except (ValueError, KeyError, TypeError):
                    break
                offset += _HEADER.size + length
                self._next_seq = max(self._next_seq, entry.seq + 1)
                if entry.seq < self._acked:
                    self._remember(entry.key)
                else:
                    self._pending.append(entry)
                    self._pending_keys.add(entry.key)
                    self._bytes += entry.size
                    replay += 1
            if offset < len(data):
                # A torn or corrupt tail: never acknowledged to its caller (the fsync came after the write).
                self.stats["torn"] += 1
                event(log, "webhook_spool_tail_cut", level=30, segment=path.name, at=offset, size=len(data),
                      last_segment=last)
                with path.open("r+b") as handle:
                    handle.truncate(offset)
                    os.fsync(handle.fileno())
        self._next_seq = max(self._next_seq, self._acked)
        self.stats["replayed"] = replay
        self._drop_acked_segments()
        event(log, "webhook_spool_opened", directory=str(self.directory), pending=replay, bytes=self._bytes,
              next_seq=self._next_seq, acked=self._acked)

    def _remember(self, key: str) -> None:
        recent = self._recent
        recent[key] = None
        recent.move_to_end(key)
        if len(recent) > RECENT_KEYS:
            recent.popitem(last=False)

    # --- appending (group commit on the writer thread) --------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake_drain = asyncio.Event()
        if self._pending:
            self._wake_drain.set()
        self._writer = threading.Thread(target=self._write_loop, name="webhook-spool-writer", daemon=True)
        self._writer.start()

    async def append(self, key: str, adapter: str, records: list[Emit], dead_letters: list[DeadLetter]) -> bool:
        """Make one uplink durable. True once it is on disk; False when its key is already spooled or was
        delivered (a duplicate); raises SpoolFull when the spool cannot take it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if key in self._pending_keys or key in self._recent:
                self.stats["duplicates"] += 1
                return False
            seq = self._next_seq
            data = encode_entry(seq, key, adapter, records, dead_letters)
            if self._bytes + self._reserved + len(data) > self.max_bytes:
                self.stats["full"] += 1
                self._m_full.inc()
                raise SpoolFull(f"the webhook spool holds {self._bytes} bytes (limit {self.max_bytes})")
            if self._closing:
                raise SpoolFull("ingest is stopping")
            self._next_seq += 1
            self._reserved += len(data)
            self._pending_keys.add(key)  # a concurrent retry of the same uplink is a duplicate already

            def done(error: BaseException | None) -> None:
                loop.call_soon_threadsafe(_resolve, future, error)

            self._queue.append((_Entry(seq, key, adapter, len(data), time.time(), data), data, done))
            self._wake_writer.notify()
        await future
        return True

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wake_writer.wait()
                if not self._queue and self._closing:
                    return
                batch, self._queue = self._queue, []
            error: BaseException | None = None
            try:
                for entry, data, _ in batch:
                    self._write(entry.seq, data)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                error = exc
                event(log, "webhook_spool_write_failed", level=40, error=str(exc)[:300])
                self._close_file()  # the next write starts a new segment after the last good entry
            with self._lock:
                for entry, data, _ in batch:
                    self._reserved -= len(data)
                    if error is None:
                        self._pending.append(entry)
                        self._bytes += entry.size
                        self.stats["appended"] += 1
                    else:
                        self._pending_keys.discard(entry.key)
            for _, _, done in batch:
                done(error)
            if error is None and self._loop is not None and self._wake_drain is not None:
                self._loop.call_soon_threadsafe(self._wake_drain.set)

    def _write(self, seq: int, data: bytes) -> None:
        if self._file is None or self._file_size >= self.segment_bytes:
            self._close_file()
            path = self.directory / f"{seq:020d}{SUFFIX}"
            self._file = path.open("ab")
            self._file_size = self._file.tell()
            with self._lock:
                self._segments.append((seq, path))
            _fsync_dir(self.directory)  # the new segment's name must survive a crash too
        self._file.write(_HEADER.pack(len(data), zlib.crc32(data)))
        self._file.write(data)
        self._file_size += _HEADER.size + len(data)

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
            self._file_size = 0

    # --- draining ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Produce the pending entries in order until `stop()`; a batch Kafka did not take is tried again."""
        assert self._wake_drain is not None, "start() first"
        backoff = RETRY_MIN_S
        while not self._stopping:
            with self._lock:
                batch = [self._pending[i] for i in range(min(BATCH_ENTRIES, len(self._pending)))]
            if not batch:
                self._wake_drain.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_drain.wait(), 1.0)
                continue
            decoded = [(entry, *_decode_or_dead_letter(entry)) for entry in batch]
            while not self._stopping:
                try:
                    await self._deliver(decoded)
                    break
                except Exception as exc:  # noqa: BLE001 - Kafka away (DeliveryFailed) or a bug: never stop draining
                    self.stats["retries"] += 1
                    event(log, "webhook_spool_delivery_failed", level=30, entries=len(batch), error=str(exc)[:300],
                          retry_in_s=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX_S)
            else:
                return
            backoff = RETRY_MIN_S
            await asyncio.to_thread(self._acknowledge, batch[-1].seq + 1, len(batch))

    async def _deliver(self, decoded: list[tuple[_Entry, list[Emit], list[DeadLetter]]]) -> None:
        # Consecutive entries of one adapter go together (metrics per adapter); every submit runs before the
        # first await, so Kafka receives the records in spool order.
        runs: list[tuple[str, list[Emit], list[DeadLetter]]] = []
        for entry, records, letters in decoded:
            if runs and runs[-1][0] == entry.adapter:
                runs[-1][1].extend(records)
                runs[-1][2].extend(letters)
            else:
                runs.append((entry.adapter, list(records), list(letters)))
        deliveries = [asyncio.ensure_future(self.pipeline.deliver(adapter, records, letters,
                                                                  timeout=self.delivery_timeout_s))
                      for adapter, records, letters in runs]
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result if isinstance(result, DeliveryFailed) else DeliveryFailed(repr(result))

    def _acknowledge(self, next_seq: int, count: int) -> None:
        ack_path = self.directory / ACK_FILE
        temporary = self.directory / f".{ACK_FILE}.tmp"
        with temporary.open("w") as handle:
            handle.write(json.dumps({"next": next_seq}))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, ack_path)
        _fsync_dir(self.directory)
        with self._lock:
            self._acked = next_seq
            for _ in range(count):
                entry = self._pending.popleft()
                self._pending_keys.discard(entry.key)
                self._bytes -= entry.size
                self._remember(entry.key)
            self.stats["delivered"] += count
        self._drop_acked_segments()

    def _drop_acked_segments(self) -> None:
        """Delete segments whose entries were all acknowledged, except the newest (being written, or kept so
        that its keys still deduplicate after a restart)."""
        with self._lock:
            segments = list(self._segments)
            current = self._file.name if self._file is not None else None
        removable = []
        for index, (_, path) in enumerate(segments[:-1]):
            next_first = segments[index + 1][0]
            if next_first <= self._acked and str(path) != current:
                removable.append(path)
        for path in removable:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if removable:
            with self._lock:
                self._segments = [s for s in self._segments if s[1] not in removable]

    # --- stopping ---------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking appends and draining (what is pending stays on disk for the next start)."""
        self._stopping = True
        with self._lock:
            self._closing = True
            self._wake_writer.notify_all()
        if self._wake_drain is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_drain.set)

    def close(self) -> None:
        self.stop()
        if self._writer is not None:
            self._writer.join(10)
        self._close_file()


def _decode_or_dead_letter(entry: _Entry) -> tuple[list[Emit], list[DeadLetter]]:
    """An entry's records and dead letters; one that cannot be read (it passed its CRC, so a bug, not a torn
    write) becomes a dead letter with its bytes instead of blocking the spool."""
    try:
        return decode_entry(entry.data)
    except (ValueError, KeyError, TypeError) as exc:
        return [], [DeadLetter(entry.data, f"webhook spool entry {entry.seq} unreadable: {exc!r}"[:500],
                               "SpoolEntryError", entry.adapter, "webhook-spool", str(entry.seq))]


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
