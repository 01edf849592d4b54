"""The data lake writer: every normalized record, as Parquet, exactly once (a `lineguard.kafka.Sink`).

Layout (Hive-style partitions, queryable as is by DuckDB, Athena/Glue, Spark):

    <lake>/<table>/line_id=<line>/date=<YYYY-MM-DD>/hour=<HH>/<topic>+<partition>+<start offset, 19 digits>.parquet

Exactly once under crashes rests on four rules:

1. Segments. Records of one input partition (topic, partition) are buffered in one open *segment*, which starts at
   the offset of its first record. A segment holds one file per (table, line, date, hour) it touched; every file of
   a segment is named after the segment's start offset. The sink holds back the commit of the segment's start
   offset until the whole segment is durable (`held_offsets`), so the committed offset of a partition is always the
   start of a segment (or the point right after a flush).
2. Deterministic rotation. A segment closes when it holds `max_rows` records, or when a record's own time is
   `rotate_interval_ms` or more away from the segment's first record (that record starts the next segment). Both
   depend only on the records, never on wall clock, batch boundaries or when the process started. So a replay from
   the committed offset rebuilds exactly the segments the crashed process was building, and rewrites the same
   objects with the same rows (an overwrite, never a second copy).
3. Atomic objects. A local file is written under a temporary name, fsynced and renamed; an S3 object appears whole
   on `put_object`. Half a file is never visible.

4. Markers. A flush (shutdown, partitions revoked) closes segments early, where rule 2 would not. After its
   objects, every closed segment leaves an empty marker `_segments/<topic>+<partition>/<end>-<start>`; a writer
   that (re)starts on a partition lists the markers ending after its first offset and skips records that are
   durable already, so a replay after a lost commit never starts a second object holding the same rows.

Closed segments can be stored by a writer thread (`background=True`) while consuming goes on; their offsets stay
held until they are durable.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from lineguard import telemetry
from lineguard.kafka import Handled, Output, Record, Sink
from lineguard.logs import event, get_logger

log = get_logger(__name__)

TS = pa.timestamp("ms", tz="UTC")
SOURCE = pa.struct([("protocol", pa.string()), ("device", pa.string()), ("address", pa.string()),
                    ("position", pa.string()), ("received_by", pa.string())])
DEFECT = pa.struct([("defect_class", pa.string()), ("confidence", pa.float64()), ("box", pa.list_(pa.int32())),
                    ("reason", pa.string())])
MODEL = pa.struct([("provider", pa.string()), ("model_id", pa.string()), ("version", pa.string())])
LINEAGE = [("raw_topic", pa.string()), ("raw_partition", pa.int32()), ("raw_offset", pa.int64())]


@dataclass(frozen=True)
class TableSpec:
    """One lake table: its Parquet schema (partition columns excluded), the record field that dates a row, and
    how a unified record becomes a row (in place: the record was already encoded for Kafka)."""

    name: str
    time_field: str
    schema: pa.Schema
    prepare: Callable[[dict], None] | None = None
    # Dictionary-encode only the low-cardinality columns, and keep min/max statistics only where queries filter
    # (time, attribute, entity): writing is several times faster than with both everywhere, files are no larger.
    dictionary: tuple[str, ...] = ()
    statistics: tuple[str, ...] = ()
    # the columns taken from the rows: all but raw_topic and raw_partition, which are constant within an object
    row_schema: pa.Schema = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.row_schema is None:
            constant = ("raw_topic", "raw_partition")
            object.__setattr__(self, "row_schema", pa.schema([f for f in self.schema if f.name not in constant]))


def _split_value(row: dict) -> None:
    """Parquet columns have one type: numbers go to `value`, states (strings) to `value_text`."""
    value = row["value"]
    if isinstance(value, str):
        row["value_text"] = value
        row["value"] = None
    elif isinstance(value, bool):
        row["value_text"] = "true" if value else "false"
        row["value"] = None
    else:
        row["value_text"] = None


def _inspection_raw_id(row: dict) -> None:
    row["raw_id"] = row["id"]


def _table(name: str, time_field: str, fields: list[tuple[str, pa.DataType]],
           prepare: Callable[[dict], None] | None = None, dictionary: tuple[str, ...] = (),
           statistics: tuple[str, ...] = ()) -> TableSpec:
    return TableSpec(name, time_field, pa.schema(fields + LINEAGE), prepare, (*dictionary, "raw_topic"),
                     (time_field, *statistics, "raw_partition", "raw_offset"))


TABLES: dict[str, TableSpec] = {
    "observations": _table("observations", "observed_at", [
        ("id", pa.string()), ("entity_id", pa.string()), ("entity_type", pa.string()), ("sensor_id", pa.string()),
        ("attribute", pa.string()), ("value", pa.float64()), ("value_text", pa.string()),
        ("unit_code", pa.string()), ("observed_at", TS), ("quality", pa.list_(pa.string())),
        ("raw_id", pa.string()), ("source", SOURCE),
    ], _split_value, dictionary=("entity_id", "entity_type", "sensor_id", "attribute", "unit_code", "value_text"),
        statistics=("entity_id", "attribute")),
    "alarms": _table("alarms", "updated_at", [
        ("alarm_id", pa.string()), ("entity_id", pa.string()), ("alarm_type", pa.string()),
        ("severity", pa.string()), ("state", pa.string()), ("raised_at", TS), ("cleared_at", TS),
        ("duration_ms", pa.int64()), ("raise_count", pa.int32()), ("message", pa.string()), ("updated_at", TS),
        ("raw_id", pa.string()),
    ], dictionary=("entity_id", "alarm_type", "severity", "state"), statistics=("entity_id", "alarm_type")),
    "inspections": _table("inspections", "captured_at", [
        ("id", pa.string()), ("item_id", pa.string()), ("station", pa.string()), ("captured_at", TS),
        ("inspected_at", TS), ("verdict", pa.string()), ("defects", pa.list_(DEFECT)), ("image_uri", pa.string()),
        ("model", MODEL), ("latency_ms", pa.float64()), ("line_entity_id", pa.string()),
        ("station_entity_id", pa.string()), ("upstream", pa.list_(pa.string())), ("raw_id", pa.string()),
    ], _inspection_raw_id, dictionary=("station", "verdict", "line_entity_id", "station_entity_id"),
        statistics=("verdict",)),
}


# --- storage ------------------------------------------------------------------------------------------------


class LakeStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def list_names(self, folder: str, start_after: str) -> list[str]:
        """Names (not paths) directly in `folder` that sort after `start_after`, in order."""
        ...

    def describe(self) -> str: ...


class LocalStore:
    """A directory; each object is written to a temporary name, fsynced, then renamed into place."""

    def __init__(self, root: str | Path, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return str(self.root)

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:  # the rename itself must survive a power cut
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def list_names(self, folder: str, start_after: str) -> list[str]:
        try:
            names = os.listdir(self.root / folder)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n > start_after and not n.startswith("."))


class S3Store:
    """An S3 bucket and prefix (boto3 `put_object`; an object appears whole or not at all)."""

    def __init__(self, url: str, endpoint_url: str | None = None, region: str | None = None,
                 client: Any = None) -> None:
        if not url.startswith("s3://"):
            raise ValueError(f"expected s3://bucket[/prefix], got {url!r}")
        bucket, _, prefix = url[5:].partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self.client = client

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        """Fail early, with the reason, when the bucket cannot be reached (wrong name, endpoint or credentials)."""
        self.client.head_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data,
                               ContentType="application/vnd.apache.parquet")

    def list_names(self, folder: str, start_after: str) -> list[str]:
        prefix = self.key(folder) + "/"
        names: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, StartAfter=prefix + start_after):
            names += [obj["Key"][len(prefix):] for obj in page.get("Contents", [])]
        return [n for n in names if "/" not in n]


def open_store(lake_url: str | None, lake_dir: str | Path, endpoint_url: str | None = None,
               region: str | None = None) -> LakeStore:
    if lake_url:
        return S3Store(lake_url, endpoint_url, region)
    return LocalStore(lake_dir)


# --- the writer ---------------------------------------------------------------------------------------------


MARKERS = "_segments"


@dataclass(slots=True)
class _Segment:
    start_offset: int
    first_time: int
    count: int = 0
    end_offset: int = 0  # one past the last record's offset
    # (table, line_id, hour bucket) -> rows, in offset order
    files: dict[tuple[str, str, int], list[dict]] = field(default_factory=dict)


# (record, its outputs) -> (table, row), or None for a record that makes no row.
RowSource = Callable[[Record, Sequence[Output]], tuple[str, dict] | None]


class LakeWriter(Sink):
    """Buffers rows per input partition in segments and writes each closed segment as Parquet objects.

    With `background=True` a closed segment is encoded and stored by a writer thread while the loop goes on
    consuming (Parquet encoding and fsync or the S3 PUT overlap with the next batches); its start offset stays
    held until it is durable. A failed write is retried there with back-off, the offsets stay held meanwhile, and
    at most `max_in_flight` closed segments wait before `write` waits too (backpressure). Without it, `write`
    stores a segment itself and raises on failure (the loop retries the batch)."""

    def __init__(self, store: LakeStore, rows: RowSource, *, topic_prefix: str = "", max_rows: int = 100_000,
                 rotate_interval_ms: int = 600_000, compression: str = "snappy", service: str = "normalizer",
                 background: bool = False, max_in_flight: int = 4) -> None:
        self.store = store
        self.rows = rows
        self.topic_prefix = topic_prefix
        self.max_rows = max_rows
        self.rotate_interval_ms = rotate_interval_ms
        self.compression = None if compression == "none" else compression
        self._segments: dict[tuple[str, int], _Segment] = {}
        self._next: dict[tuple[str, int], int] = {}
        # (start, end) of the segments already durable, by end, as far as this writer knows (see _load_closed)
        self._closed: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self._hours: dict[int, tuple[str, str]] = {}
        self._background = background
        self._max_in_flight = max_in_flight
        self._in_flight: deque[tuple[tuple[str, int], _Segment, Future[None]]] = deque()
        self._queue: queue.SimpleQueue[tuple[tuple[str, int], _Segment, Future[None]]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.objects_written = 0
        self.bytes_written = 0
        self.rows_written = 0
        self._m_objects = telemetry.counter(service, "lake_objects_written", "Parquet objects written to the lake.",
                                            ["table"])
        self._m_bytes = telemetry.counter(service, "lake_bytes_written", "Bytes of Parquet written to the lake.",
                                          ["table"])
        self._m_rows = telemetry.counter(service, "lake_rows_written", "Rows written to the lake.", ["table"])
        self._m_seconds = telemetry.histogram(service, "lake_write_duration_seconds",
                                              "Time to encode and store one lake segment.")
        self._m_buffered = telemetry.gauge(service, "lake_buffered_rows",
                                           "Rows buffered in lake segments not yet durable (their offsets are held).")
        self._m_failures = telemetry.counter(service, "lake_write_failures", "Lake writes that failed (retried).")

    # --- Sink -------------------------------------------------------------------------------------------------

    def write(self, batch: list[Handled]) -> None:
        rows = self.rows
        segments = self._segments
        interval = self.rotate_interval_ms
        for record, outputs in batch:
            found = rows(record, outputs)
            tp = (record.topic, record.partition)
            offset = record.offset
            closed = self._closed.get(tp)
            if closed is None:
                closed = self._load_closed(tp, offset)
            if offset < self._next.get(tp, -1):
                continue  # a rewound batch: this record is buffered or written already
            if closed and offset < closed[-1][1] and _inside(closed, offset):
                continue  # replayed, but its segment is durable already (see _load_closed)
            if found is None:
                self._next[tp] = offset + 1
                continue
            table, row = found
            spec = TABLES[table]
            at = row[spec.time_field]
            segment = segments.get(tp)
            if segment is not None and (segment.count >= self.max_rows or at >= segment.first_time + interval
                                        or at <= segment.first_time - interval):
                self._close(tp, segment)
                segment = None
            if segment is None:
                segment = segments[tp] = _Segment(offset, at)
            bucket = at // 3_600_000
            key = (table, row["line_id"], bucket)
            rows_of_file = segment.files.get(key)
            if rows_of_file is None:
                rows_of_file = segment.files[key] = []
            if spec.prepare is not None:
                spec.prepare(row)
            row["raw_offset"] = offset
            rows_of_file.append(row)
            segment.count += 1
            segment.end_offset = offset + 1
            self._next[tp] = offset + 1
            if segment.count >= self.max_rows:
                self._close(tp, segment)
        self._m_buffered.set(self.buffered_rows())

    def held_offsets(self) -> dict[tuple[str, int], int]:
        self._reap()
        held = {tp: segment.start_offset for tp, segment in self._segments.items()}
        for tp, segment, _ in self._in_flight:  # oldest first: the first one seen per partition is the lowest
            if tp not in held or segment.start_offset < held[tp]:
                held[tp] = segment.start_offset
        self._m_buffered.set(self.buffered_rows())
        return held

    def flush(self) -> None:
        """Close every open segment and wait until all are durable (shutdown, partitions revoked). What this
        writer knows about partitions is then dropped: after a rebalance the next records of a partition reload
        its segment markers from the lake."""
        for tp, segment in list(self._segments.items()):
            self._close(tp, segment)
        self._reap(keep=0)
        self._next.clear()
        self._closed.clear()
        self._m_buffered.set(0)

    # --- internals ----------------------------------------------------------------------------------------------

    def buffered_rows(self) -> int:
        return (sum(segment.count for segment in self._segments.values()) +
                sum(segment.count for _, segment, _ in self._in_flight))

    def object_key(self, table: str, line_id: str, bucket: int, topic: str, partition: int, start: int) -> str:
        date, hour = self._hour(bucket)
        return (f"{table}/line_id={line_id}/date={date}/hour={hour}/"
                f"{self.topic_prefix}{topic}+{partition}+{start:019d}.parquet")

    def _hour(self, bucket: int) -> tuple[str, str]:
        found = self._hours.get(bucket)
        if found is None:
            tm = time.gmtime(bucket * 3600)
            found = (time.strftime("%Y-%m-%d", tm), f"{tm.tm_hour:02d}")
            if len(self._hours) > 10_000:
                self._hours.clear()
            self._hours[bucket] = found
        return found

    def _marker_folder(self, tp: tuple[str, int]) -> str:
        return f"{MARKERS}/{self.topic_prefix}{tp[0]}+{tp[1]}"

    def _load_closed(self, tp: tuple[str, int], offset: int) -> list[tuple[int, int]]:
        """The durable segments of a partition that end after `offset`, from their markers in the lake.

        A segment closed early by a flush (shutdown, revocation) ends where the regular rule would not have
        ended it. Should the commit after that flush be lost, the replay must not start a segment of its own in
        the middle of the flushed one (a second object would hold the same rows): it skips what a marker says is
        durable, whichever instance wrote it. Markers are named `<end>-<start>`, so one listing from `offset`
        finds exactly the segments that matter."""
        closed: list[tuple[int, int]] = []
        for name in self._marker_names(tp, offset):
            end, _, start = name.partition("-")
            if end.isdigit() and start.isdigit():
                closed.append((int(start), int(end)))
        self._closed[tp] = closed
        return closed

    def _marker_names(self, tp: tuple[str, int], offset: int) -> list[str]:
        return self.store.list_names(self._marker_folder(tp), f"{offset:019d}.")  # '.' sorts after '-'

    def _close(self, tp: tuple[str, int], segment: _Segment) -> None:
        """Hand a finished segment over to be stored (or store it now without a writer thread)."""
        if self._background:
            del self._segments[tp]
            future: Future[None] = Future()
            self._in_flight.append((tp, segment, future))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="lake-writer", daemon=True)
                self._worker.start()
            self._queue.put((tp, segment, future))
            self._reap(keep=self._max_in_flight)
        else:
            self._persist(tp, segment)  # raises: the segment stays open for the loop's retry
            del self._segments[tp]
        closed = self._closed.setdefault(tp, [])
        closed.append((segment.start_offset, segment.end_offset))
        if len(closed) > 64:
            del closed[:32]

    def _reap(self, keep: int | None = None) -> None:
        """Forget segments that are durable; with `keep`, first wait until no more than that many are pending."""
        in_flight = self._in_flight
        while in_flight:
            future = in_flight[0][2]
            if not future.done():
                if keep is None or len(in_flight) <= keep:
                    return
                future.result()  # the writer thread stores in order: the oldest finishes first
            in_flight.popleft()

    def _work(self) -> None:
        while True:
            tp, segment, future = self._queue.get()
            delay = 0.5
            while True:
                try:
                    self._persist(tp, segment)
                    break
                except Exception as exc:  # noqa: BLE001 - the store is down: keep the offsets held and retry
                    self._m_failures.inc()
                    event(log, "lake_write_failed_retrying", level=logging.WARNING, topic=tp[0], partition=tp[1],
                          start_offset=segment.start_offset, error=f"{type(exc).__name__}: {exc}"[:500],
                          retry_in_s=delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 30.0)
            future.set_result(None)

    def _persist(self, tp: tuple[str, int], segment: _Segment) -> None:
        """Write every file of the segment, then its marker (the marker says: all of it is durable)."""
        started = time.perf_counter()
        topic, partition = tp
        for (table, line_id, bucket), rows in segment.files.items():
            key = self.object_key(table, line_id, bucket, topic, partition, segment.start_offset)
            # raw_topic is the Kafka topic as named on the broker (prefix included), as in the object's name
            data = encode_parquet(TABLES[table], rows, self.compression, self.topic_prefix + topic, partition)
            self.store.put(key, data)
            with self._lock:
                self.objects_written += 1
                self.bytes_written += len(data)
                self.rows_written += len(rows)
            self._m_objects.labels(table).inc()
            self._m_bytes.labels(table).inc(len(data))
            self._m_rows.labels(table).inc(len(rows))
        start, end = segment.start_offset, segment.end_offset
        self.store.put(f"{self._marker_folder(tp)}/{end:019d}-{start:019d}", b"")
        self._m_seconds.observe(time.perf_counter() - started)
        event(log, "lake_segment_written", topic=topic, partition=partition, start_offset=start, end_offset=end,
              rows=segment.count, objects=len(segment.files), store=self.store.describe())


def _inside(closed: list[tuple[int, int]], offset: int) -> bool:
    """Whether `offset` lies in one of the (start, end) segments, which are ordered by end."""
    for start, end in reversed(closed):
        if offset >= end:
            return False
        if offset >= start:
            return True
    return False


def encode_parquet(spec: TableSpec, rows: list[dict], compression: str | None = "snappy", topic: str = "",
                   partition: int = 0) -> bytes:
    """Rows (prepared with `spec.prepare`, with `raw_offset`) of one input partition -> Parquet bytes; keys that
    are not columns are ignored."""
    from_rows = pa.Table.from_pylist(rows, schema=spec.row_schema)
    count = from_rows.num_rows
    constant = {"raw_topic": pa.repeat(pa.scalar(topic, pa.string()), count),
                "raw_partition": pa.repeat(pa.scalar(partition, pa.int32()), count)}
    table = pa.Table.from_arrays([constant[f.name] if f.name in constant else from_rows.column(f.name)
                                  for f in spec.schema], schema=spec.schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression, use_dictionary=list(spec.dictionary),
                   write_statistics=list(spec.statistics))
    return buf.getvalue()
