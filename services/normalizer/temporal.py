"""History of an entity's attributes for the NGSI-LD temporal API, from the lake (through DuckDB) and from memory.

The lake holds every observation once its segment is closed (up to `LINEGUARD_LAKE_MAX_ROWS` records or
`LINEGUARD_LAKE_ROTATE_INTERVAL_S` of record time per input partition); the newest observations are still in open
segments. So a query reads both: the lake's Parquet objects of the entity's line for the hours the interval
touches (one listing per day, a local directory or S3), and the normalizer's in-memory ring of recent observations
per attribute. DuckDB joins them, drops the copies (an observation in both has the same id), and filters, orders or
aggregates. Nothing is cached: every query sees what the lake holds at that moment.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from services.normalizer.lake import LakeStore, LocalStore, S3Store

AGGREGATES = {
    "totalCount": "count(*)",
    "distinctCount": "count(DISTINCT coalesce(CAST(value AS VARCHAR), value_text))",
    "sum": "sum(value)",
    "avg": "avg(value)",
    "min": "min(value)",
    "max": "max(value)",
    "stddev": "stddev_pop(value)",
    "sumsq": "sum(value * value)",
}
COLUMNS = ["id", "entity_id", "attribute", "value", "value_text", "unit_code", "observed_at"]
SCHEMA = pa.schema([("id", pa.string()), ("entity_id", pa.string()), ("attribute", pa.string()),
                    ("value", pa.float64()), ("value_text", pa.string()), ("unit_code", pa.string()),
                    ("observed_at", pa.timestamp("ms", tz="UTC"))])
_DURATION = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")
DAY_MS = 86_400_000


class TemporalQueryError(ValueError):
    """The temporal query is invalid (400 BadRequestData)."""


class TooManyResults(ValueError):
    """More instances than the API returns at once (403 TooManyResults)."""


def parse_duration_ms(text: str) -> int:
    """An ISO 8601 duration of fixed length (weeks, days, hours, minutes, seconds) in ms; P0D = 0."""
    match = _DURATION.fullmatch(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise TemporalQueryError(f"aggrPeriodDuration={text!r}: expected an ISO 8601 duration such as PT1M, "
                                 "PT1H or P1D (years and months have no fixed length)")
    weeks, days, hours, minutes, seconds = match.groups()
    return int(((int(weeks or 0) * 7 + int(days or 0)) * 24 * 3600 + int(hours or 0) * 3600 +
                int(minutes or 0) * 60 + float(seconds or 0)) * 1000)


@dataclass(frozen=True)
class Interval:
    start_ms: int | None  # inclusive
    end_ms: int | None  # exclusive

    def contains(self, t: int) -> bool:
        return (self.start_ms is None or t >= self.start_ms) and (self.end_ms is None or t < self.end_ms)


def interval(timerel: str | None, time_at: int | None, end_time_at: int | None) -> Interval:
    """before: t < timeAt; after: t > timeAt; between: timeAt <= t < endTimeAt."""
    if timerel is None:
        raise TemporalQueryError("give timerel (before, after or between) and timeAt")
    if time_at is None:
        raise TemporalQueryError(f"timerel={timerel} needs timeAt")
    if timerel == "before":
        return Interval(None, time_at)
    if timerel == "after":
        return Interval(time_at + 1, None)
    if timerel == "between":
        if end_time_at is None:
            raise TemporalQueryError("timerel=between needs endTimeAt")
        if end_time_at <= time_at:
            raise TemporalQueryError("endTimeAt must be after timeAt")
        return Interval(time_at, end_time_at)
    raise TemporalQueryError(f"timerel={timerel!r}: expected before, after or between")


class LakeHistory:
    """Reads an entity's observations from the lake's `observations` table (local directory or S3)."""

    def __init__(self, store: LakeStore | None) -> None:
        self.store = store

    def describe(self) -> str:
        return self.store.describe() if self.store is not None else "none"

    def _days(self, line_id: str, window: Interval) -> list[str] | None:
        """The date folders to read, or None for every date of the line (an open or very long interval)."""
        if window.start_ms is None or window.end_ms is None or window.end_ms - window.start_ms > 400 * DAY_MS:
            return None
        first, last = window.start_ms // DAY_MS, (window.end_ms - 1) // DAY_MS
        return [dt.datetime.fromtimestamp(d * 86_400, dt.UTC).strftime("%Y-%m-%d") for d in range(first, last + 1)]

    def _hour_in(self, key: str, window: Interval) -> bool:
        """Whether the object's date/hour folder overlaps the interval (an hour folder holds rows of that hour)."""
        match = re.search(r"/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/", key)
        if not match:
            return False
        start = int(dt.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}:00:00+00:00").timestamp() * 1000)
        return ((window.end_ms is None or start < window.end_ms) and
                (window.start_ms is None or start + 3_600_000 > window.start_ms))

    def objects(self, line_id: str, window: Interval) -> list[str]:
        """Keys (relative to the lake) of the observation objects that may hold rows of the interval."""
        store = self.store
        base = f"observations/line_id={line_id}/"
        days = self._days(line_id, window)
        prefixes = [base] if days is None else [f"{base}date={d}/" for d in days]
        keys: list[str] = []
        if isinstance(store, LocalStore):
            for prefix in prefixes:
                folder = store.root / prefix
                if folder.is_dir():
                    keys += [p.relative_to(store.root).as_posix() for p in folder.rglob("*.parquet")
                             if not p.name.startswith(".")]
        elif isinstance(store, S3Store):
            paginator = store.client.get_paginator("list_objects_v2")
            strip = len(store.key(""))
            for prefix in prefixes:
                for page in paginator.paginate(Bucket=store.bucket, Prefix=store.key(prefix)):
                    keys += [o["Key"][strip:] for o in page.get("Contents", []) if o["Key"].endswith(".parquet")]
        return sorted(k for k in keys if self._hour_in(k, window))

    def read(self, line_id: str, entity_id: str, window: Interval) -> pa.Table:
        """The entity's rows of the objects that overlap the interval (time filtering is left to DuckDB)."""
        tables = []
        store = self.store
        for key in self.objects(line_id, window):
            if isinstance(store, LocalStore):
                source: Any = str(store.root / key)
            else:
                assert isinstance(store, S3Store)
                source = io.BytesIO(store.client.get_object(Bucket=store.bucket, Key=store.key(key))["Body"].read())
            table = pq.read_table(source, columns=COLUMNS, filters=[("entity_id", "=", entity_id)])
            tables.append(table.cast(SCHEMA))
        if not tables:
            return SCHEMA.empty_table()
        return pa.concat_tables(tables)


def memory_table(entity_id: str, recent: dict[str, Iterable[tuple[int, Any, str | None, str]]],
                 window: Interval) -> pa.Table:
    """The in-memory observations of the entity inside the interval, in the lake's columns."""
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for attribute, rows in recent.items():
        for observed_at, value, unit_code, oid in rows:
            if not window.contains(observed_at):
                continue
            text = value if isinstance(value, str) else None
            columns["id"].append(oid)
            columns["entity_id"].append(entity_id)
            columns["attribute"].append(attribute)
            columns["value"].append(None if text is not None else float(value))
            columns["value_text"].append(text)
            columns["unit_code"].append(unit_code)
            columns["observed_at"].append(observed_at)
    return pa.table(columns, schema=SCHEMA)


@dataclass
class TemporalQuery:
    entity_id: str
    line_id: str
    attrs: list[str] | None
    window: Interval
    last_n: int | None = None
    aggr_methods: list[str] | None = None
    aggr_period_ms: int = 0
    max_instances: int = 10_000


def run_query(query: TemporalQuery, lake: pa.Table, memory: pa.Table) -> dict[str, Any]:
    """attribute -> instances [(t ms, value, unit code, id)], or with aggrMethods attribute -> method ->
    [(value, start ms, end ms)], computed by DuckDB over the lake's and memory's rows (copies dropped)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("lake_rows", lake)
        con.register("memory_rows", memory)
        where = ["t >= $start" if query.window.start_ms is not None else "true",
                 "t < $end" if query.window.end_ms is not None else "true"]
        params: dict[str, Any] = {"entity": query.entity_id}
        if query.window.start_ms is not None:
            params["start"] = query.window.start_ms
        if query.window.end_ms is not None:
            params["end"] = query.window.end_ms
        if query.attrs:
            where.append("attribute IN (SELECT unnest($attrs))")
            params["attrs"] = query.attrs
        rows = f"""
            SELECT id, attribute, epoch_ms(observed_at) AS t, value, value_text, unit_code
            FROM (SELECT * FROM lake_rows UNION ALL SELECT * FROM memory_rows)
            WHERE entity_id = $entity AND {' AND '.join(where)}
            QUALIFY row_number() OVER (PARTITION BY id ORDER BY t) = 1"""
        if query.aggr_methods:
            origin = "$start" if query.window.start_ms is not None else "min(t) OVER ()"
            period = query.aggr_period_ms
            bucket = f"(origin + floor((t - origin) / {period}) * {period})::BIGINT" if period else "origin"
            selects = ", ".join(f"{AGGREGATES[m]} AS {m}" for m in query.aggr_methods)
            result = con.execute(f"""
                WITH deduped AS ({rows}),
                     framed AS (SELECT *, {origin} AS origin FROM deduped)
                SELECT attribute, {bucket} AS bucket, max(t) AS last_t, {selects}
                FROM framed GROUP BY attribute, bucket ORDER BY attribute, bucket""", params).fetchall()
            out: dict[str, dict[str, list]] = {}
            for attribute, start, last_t, *values in result:
                if period:
                    end = start + period
                elif query.window.end_ms is not None:
                    end = query.window.end_ms
                else:
                    end = last_t + 1
                if query.window.end_ms is not None:
                    end = min(end, query.window.end_ms)
                methods = out.setdefault(attribute, {m: [] for m in query.aggr_methods})
                for method, value in zip(query.aggr_methods, values, strict=True):
                    if value is not None and isinstance(value, float) and not math.isfinite(value):
                        value = None
                    methods[method].append((value, int(start), int(end)))
            return out
        if query.last_n:
            ranked = f"""SELECT * FROM ({rows}) QUALIFY row_number() OVER (PARTITION BY attribute ORDER BY t DESC)
                         <= {int(query.last_n)}"""
        else:
            ranked = rows
        result = con.execute(f"""SELECT attribute, t, coalesce(value_text, CAST(value AS VARCHAR)) IS NULL,
                                 value, value_text, unit_code, id
                                 FROM ({ranked}) ORDER BY attribute, t, id
                                 LIMIT {query.max_instances + 1}""", params).fetchall()
        if len(result) > query.max_instances:
            raise TooManyResults(f"more than {query.max_instances} instances: narrow the interval, use lastN, "
                                 "or aggregate (aggrMethods, aggrPeriodDuration)")
        instances: dict[str, list] = {}
        for attribute, t, _, value, value_text, unit_code, oid in result:
            instances.setdefault(attribute, []).append((int(t), value_text if value_text is not None else value,
                                                        unit_code, oid))
        return instances
    finally:
        con.close()
