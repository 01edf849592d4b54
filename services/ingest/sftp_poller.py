"""SFTP poller (asyncssh client): CSV files dropped by legacy machines -> readings, each file exactly once.

For each configured source, every poll interval:
1. list the directory and take only complete files. A file is complete when
   - its name is final: temporary names (`.x`, `*.part`, `*.tmp`, `*.filepart`, `*~`) are skipped, so a writer
     that uploads as `batch.csv.part` and renames on completion is taken only after the rename;
   - and a companion marker file (`<name>.done`, `<name>.ok`, or with the data suffix replaced: `batch.done`)
     exists; with `marker: true` on the source a file without one is never taken;
   - or, without a marker, its size and modification time stayed the same for the quiet period
     (`LINEGUARD_SFTP_QUIET_PERIOD_S`, or `quiet_period_s` on the source) and at least one poll interval;
   - and (both cases) its content ends with a newline: a PLC that paused mid-line has not finished. A file that
     stays without its final newline for `LINEGUARD_SFTP_UNTERMINATED_AFTER_S` is taken with its last line
     dead-lettered, never ingested as a value;
2. download it and hash it (sha256); a file already in the ledger (source, name, size, sha256) is not ingested
   again, only moved to done;
3. parse every row by the source's mapping (columns, types, units, timestamp format and zone): one reading per
   metric column; a row of the wrong shape is dead-lettered with its line and the reason, the others go on;
4. record the file in the ledger as "producing" (written atomically: temporary file, fsync, rename), produce
   every record and wait until Kafka acknowledged all of them (if it does not, the file stays where it is and is
   tried again on the next poll);
5. record it as "done", then move it (and its marker) to the done directory.
After a crash (SIGKILL) in 4, the file is found again with its ledger entry "producing": ingest reads the
readings topic from the moment producing began and produces only the records (ids `sftp:<source>:<file>:<sha256
prefix>:<row>:<metric>`) that are not there yet. After 5 the file is never ingested again.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import fnmatch
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncssh
import yaml
from confluent_kafka import KafkaException

from lineguard.kafka import AtTime, read_topic
from lineguard.logs import event, get_logger
from services.ingest.parsing import InputError, parse_timestamp
from services.ingest.pipeline import (
    READINGS,
    DeadLetter,
    DeliveryFailed,
    Emit,
    IngestPipeline,
    now_ms,
    reading,
    source,
)

log = get_logger(__name__)

TEMPORARY_SUFFIXES = (".part", ".tmp", ".temp", ".filepart", ".partial", ".crdownload", "~")
MARKER_SUFFIXES = (".done", ".ok")
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEAD_LETTER_BYTES = 900 * 1024
TYPES = ("float", "int", "bool", "str")
TRUE_WORDS = {"1", "true", "yes", "on", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "off", "n", "f"}


class SourceConfigError(ValueError):
    pass


@dataclass(frozen=True)
class MetricColumn:
    column: str
    metric: str
    type: str = "float"
    unit: str | None = None


@dataclass(frozen=True)
class SftpSource:
    name: str
    host: str
    port: int
    username: str
    directory: str
    done_directory: str
    device: str | None
    device_column: str | None
    timestamp_column: str
    timestamp_format: str  # iso | epoch | a strptime format
    timezone: str
    metrics: tuple[MetricColumn, ...]
    attributes: tuple[str, ...] = ()
    pattern: str = "*.csv"
    delimiter: str = ","
    encoding: str = "utf-8"
    password_env: str | None = None
    client_keys: tuple[str, ...] = ()
    known_hosts: str | None = None  # None: any host key is accepted (logged); set it in production
    decimal_comma: bool = False
    marker: bool = False  # take a file only once its .done/.ok marker exists
    quiet_period_s: float | None = None  # None: the poller's (LINEGUARD_SFTP_QUIET_PERIOD_S)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _require(raw: dict, key: str, where: str) -> Any:
    if raw.get(key) in (None, ""):
        raise SourceConfigError(f"{where}: '{key}' is required")
    return raw[key]


def parse_sources(raw: Any, origin: str = "<sources>") -> list[SftpSource]:
    items = raw.get("sources") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise SourceConfigError(f"{origin}: expected a list of sources (or {{sources: [...]}})")
    sources = []
    for index, item in enumerate(items):
        where = f"{origin}: source {index}"
        if not isinstance(item, dict):
            raise SourceConfigError(f"{where}: expected a mapping")
        name = str(_require(item, "name", where))
        where = f"{origin}: source {name!r}"
        stamp = _require(item, "timestamp", where)
        if not isinstance(stamp, dict) or "column" not in stamp:
            raise SourceConfigError(f"{where}: timestamp needs a column (and optionally format, timezone)")
        metrics = []
        for m_index, m in enumerate(_require(item, "metrics", where)):
            if not isinstance(m, dict) or "column" not in m:
                raise SourceConfigError(f"{where}: metrics[{m_index}] needs a column")
            kind = m.get("type", "float")
            if kind not in TYPES:
                raise SourceConfigError(f"{where}: metrics[{m_index}].type must be one of {', '.join(TYPES)}")
            metrics.append(MetricColumn(str(m["column"]), str(m.get("metric", m["column"])), kind, m.get("unit")))
        if not item.get("device") and not item.get("device_column"):
            raise SourceConfigError(f"{where}: set 'device' (or 'device_column')")
        directory = str(_require(item, "directory", where))
        source_obj = SftpSource(
            name=name, host=str(_require(item, "host", where)), port=int(item.get("port", 22)),
            username=str(_require(item, "username", where)), directory=directory,
            done_directory=str(item.get("done_directory") or posixpath.join(directory, "done")),
            device=item.get("device"), device_column=item.get("device_column"),
            timestamp_column=str(stamp["column"]), timestamp_format=str(stamp.get("format", "iso")),
            timezone=str(stamp.get("timezone", "UTC")), metrics=tuple(metrics),
            attributes=tuple(str(a) for a in item.get("attributes", ())), pattern=str(item.get("pattern", "*.csv")),
            delimiter=str(item.get("delimiter", ",")), encoding=str(item.get("encoding", "utf-8")),
            password_env=item.get("password_env"), client_keys=tuple(item.get("client_keys", ())),
            known_hosts=item.get("known_hosts"), decimal_comma=bool(item.get("decimal_comma", False)),
            marker=bool(item.get("marker", False)),
            quiet_period_s=None if item.get("quiet_period_s") is None else float(item["quiet_period_s"]))
        try:
            source_obj.zone  # noqa: B018 - fail at start-up, not on the first file
        except (ZoneInfoNotFoundError, ValueError):
            raise SourceConfigError(f"{where}: unknown timezone {source_obj.timezone!r}") from None
        if len(source_obj.delimiter) != 1:
            raise SourceConfigError(f"{where}: delimiter must be one character")
        sources.append(source_obj)
    return sources


def load_sources(path: Path) -> list[SftpSource]:
    return parse_sources(yaml.safe_load(Path(path).read_text()), str(path))


# --- CSV --------------------------------------------------------------------------------------------------------


def _convert(raw: str, kind: str, column: str, decimal_comma: bool) -> float | int | bool | str | None:
    text = raw.strip()
    if kind == "str":
        return text
    if text == "":
        return None  # an empty cell: no value, as the schema allows
    if kind == "bool":
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise InputError(column, f"expected a boolean, got {text[:40]!r}")
    if decimal_comma:
        text = text.replace(".", "").replace(",", ".")
    try:
        number = float(text) if kind == "float" else int(text)
    except ValueError:
        raise InputError(column, f"expected {'a number' if kind == 'float' else 'an integer'}, got {text[:40]!r}") \
            from None
    if not math.isfinite(number):
        raise InputError(column, f"expected a finite number, got {text[:40]!r}")
    return float(number)


def _timestamp(raw: str, src: SftpSource) -> int:
    column = src.timestamp_column
    text = raw.strip()
    fmt = src.timestamp_format
    if fmt in ("iso", "epoch"):
        if fmt == "iso" and text and not text.replace(".", "", 1).isdigit():
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise InputError(column, f"expected an ISO 8601 timestamp, got {text[:40]!r}") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=src.zone)
            return int(moment.timestamp() * 1000)
        return parse_timestamp(text, column)
    try:
        moment = datetime.strptime(text, fmt)
    except ValueError:
        raise InputError(column, f"expected a timestamp like {fmt!r}, got {text[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=src.zone)
    return int(moment.timestamp() * 1000)


@dataclass
class ParsedFile:
    records: list[Emit] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    rows: int = 0


def parse_csv(src: SftpSource, path: str, content: bytes, sha256: str, received_at: int,
              received_by: str | None) -> ParsedFile:
    """Every row of one file -> readings; bad rows -> dead letters with the line and the reason."""
    out = ParsedFile()
    name = posixpath.basename(path)

    def whole_file_letter(reason: str, error: str) -> ParsedFile:
        out.dead_letters.append(DeadLetter(content[:MAX_DEAD_LETTER_BYTES], reason, error, "sftp", path, None,
                                           src.device))
        return out

    try:
        text = content.decode(src.encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        return whole_file_letter(f"{name}: not {src.encoding} text: {exc}", "UnicodeDecodeError")
    text = text.removeprefix("\ufeff")
    if text and not text.endswith(("\n", "\r")):
        # Never ingest a final line without its newline: the writer may have stopped in the middle of it.
        cut = max(text.rfind("\n"), text.rfind("\r")) + 1
        tail, text = text[cut:], text[:cut]
        lines = len(text.splitlines())  # the tail is line lines + 1, data row `lines` (after the header)
        out.dead_letters.append(DeadLetter(tail.encode(src.encoding, "replace"), f"{name}: line {lines + 1} has "
                                           "no newline at the end of the file: an incomplete row, not ingested",
                                           "IncompleteRow", "sftp", path, str(lines), src.device))
        if not text:
            return out
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=src.delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return whole_file_letter(f"{name}: unreadable CSV header: {exc}", "CsvError")
    if header is None:
        return whole_file_letter(f"{name}: empty file", "InputError")
    header = [h.strip() for h in header]
    needed = {src.timestamp_column, *(m.column for m in src.metrics)}
    if src.device_column:
        needed.add(src.device_column)
    missing = sorted(needed - set(header))
    if missing:
        return whole_file_letter(f"{name}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})",
                                 "InputError")
    index = {column: i for i, column in enumerate(header)}
    rows = iter(reader)
    row_number = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:
            row_number += 1
            out.dead_letters.append(DeadLetter(b"", f"{name}: row {row_number}: {exc}", "CsvError", "sftp", path,
                                               str(row_number), src.device))
            continue
        row_number += 1
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line
        out.rows += 1
        line = src.delimiter.join(row).encode(src.encoding, "replace")
        try:
            if len(row) != len(header):
                raise InputError("row", f"expected {len(header)} columns, got {len(row)}")
            observed_at = _timestamp(row[index[src.timestamp_column]], src)
            device = src.device
            if src.device_column:
                device = row[index[src.device_column]].strip() or None
                if device is None:
                    raise InputError(src.device_column, "empty device")
            values = [(m, _convert(row[index[m.column]], m.type, m.column, src.decimal_comma)) for m in src.metrics]
        except InputError as exc:
            out.dead_letters.append(DeadLetter(line, f"{name}: row {row_number}: {exc}", type(exc).__name__,
                                               "sftp", path, str(row_number), src.device))
            continue
        attributes = {"file": name, "sha256": sha256}
        for column in src.attributes:
            if column in index and index[column] < len(row):
                attributes[column] = row[index[column]].strip()[:256]
        record_src = source("sftp", src.name, path, str(row_number), received_by)
        for metric, value in values:
            out.records.append(reading(
                id=f"sftp:{src.name}:{name}:{sha256[:16]}:{row_number}:{metric.metric}", device=device,
                metric=metric.metric, value=value, unit=metric.unit, observed_at=observed_at,
                received_at=received_at, src=record_src, attributes=attributes))
    if out.rows == 0 and not out.dead_letters:
        return whole_file_letter(f"{name}: no data rows", "InputError")
    return out


# --- ledger -----------------------------------------------------------------------------------------------------


class Ledger:
    """Files being or been ingested, one JSON object a line, keyed by (source, name, size, sha256), with a
    `state`: "producing" (written before the first record is produced) or "done" (after every record was
    acknowledged). Rewritten atomically (temporary file, fsync, rename, directory fsync). The oldest entries
    beyond `max_entries` are dropped (their files were moved to done long ago)."""

    def __init__(self, path: Path, max_entries: int = 50000) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str, int, str], dict] = {}
        if self.path.exists():
            for number, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self._entries[self._key(entry)] = entry
                except (ValueError, KeyError, TypeError):
                    event(log, "sftp_ledger_line_unreadable", level=30, path=str(self.path), line=number)

    @staticmethod
    def _key(entry: dict) -> tuple[str, str, int, str]:
        return entry["source"], entry["name"], int(entry["size"]), entry["sha256"]

    @property
    def entries(self) -> list[dict]:
        return list(self._entries.values())

    def get(self, key: tuple[str, str, int, str]) -> dict | None:
        return self._entries.get(key)

    def state(self, key: tuple[str, str, int, str]) -> str | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.get("state", "done")

    def __contains__(self, key: tuple[str, str, int, str]) -> bool:
        """The file was ingested completely."""
        return self.state(key) == "done"

    def put(self, entry: dict) -> None:
        key = self._key(entry)
        self._entries.pop(key, None)
        self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            for item in self._entries.values():
                handle.write(json.dumps(item, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself must survive a crash
        finally:
            os.close(directory)

    add = put


# --- poller -----------------------------------------------------------------------------------------------------


def is_temporary(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(TEMPORARY_SUFFIXES)


def is_marker(name: str) -> bool:
    return name.lower().endswith(MARKER_SUFFIXES)


def marker_names(name: str) -> list[str]:
    """The companion marker names that say `name` is complete: batch.csv.done, batch.csv.ok, batch.done,
    batch.ok."""
    stem = posixpath.splitext(name)[0]
    return [f"{base}{suffix}" for base in dict.fromkeys((name, stem)) for suffix in MARKER_SUFFIXES]


@dataclass
class _Seen:
    size: int
    mtime: int
    since: float  # time.monotonic() when this size and mtime were first seen
    polls: int = 1  # polls that saw them


class SftpPoller:
    name = "sftp"

    def __init__(self, pipeline: IngestPipeline, sources: list[SftpSource], ledger_path: Path,
                 poll_interval_s: float = 5.0, delivery_timeout_s: float = 60.0,
                 environ: dict[str, str] | None = None, quiet_period_s: float | None = None,
                 unterminated_after_s: float | None = None) -> None:
        self.pipeline = pipeline
        self.sources = sources
        self.ledger = Ledger(ledger_path)
        self.poll_interval_s = poll_interval_s
        self.delivery_timeout_s = delivery_timeout_s
        self.environ = os.environ if environ is None else environ
        # Unless given, from the ingest settings (LINEGUARD_SFTP_QUIET_PERIOD_S, ..._UNTERMINATED_AFTER_S).
        settings = pipeline.settings
        self.quiet_period_s = quiet_period_s if quiet_period_s is not None else \
            float(getattr(settings, "sftp_quiet_period_s", 0.0))
        self.unterminated_after_s = unterminated_after_s if unterminated_after_s is not None else \
            float(getattr(settings, "sftp_unterminated_after_s", 600.0))
        self._seen: dict[tuple[str, str], _Seen] = {}  # (source, name) -> size and mtime, since when
        self._connections: dict[str, tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]] = {}
        self._stopping = asyncio.Event()
        self.stats: dict[str, int] = {"files": 0, "rows": 0, "records": 0, "dead_letters": 0, "skipped": 0,
                                      "already_ingested": 0, "failures": 0, "incomplete_waits": 0}
        m = pipeline.metrics
        self._m_received = m.received.labels(self.name)
        self._m_lag = m.ack_lag.labels(self.name)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        event(log, "sftp_poller_started", sources=[s.name for s in self.sources], ledger=str(self.ledger.path),
              ledger_entries=len(self.ledger.entries))
        try:
            while not self._stopping.is_set():
                for src in self.sources:
                    if self._stopping.is_set():
                        break
                    try:
                        await self.poll(src)
                    except Exception as exc:  # noqa: BLE001 - one source's trouble never stops the poller
                        self.stats["failures"] += 1
                        with contextlib.suppress(Exception):
                            await self._drop_connection(src)
                        event(log, "sftp_poll_failed", level=30, source=src.name, host=src.host,
                              error=f"{type(exc).__name__}: {exc}"[:300])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll_interval_s)
        finally:
            for src in self.sources:
                await self._drop_connection(src)

    async def _connect(self, src: SftpSource) -> asyncssh.SFTPClient:
        cached = self._connections.get(src.name)
        if cached is not None:
            return cached[1]
        password = self.environ.get(src.password_env) if src.password_env else None
        if src.known_hosts is None:
            event(log, "sftp_host_key_not_checked", level=30, source=src.name,
                  hint="set known_hosts for this source in production")
        conn = await asyncssh.connect(src.host, src.port, username=src.username, password=password,
                                      client_keys=list(src.client_keys) or None, known_hosts=src.known_hosts,
                                      connect_timeout=10)
        sftp = await conn.start_sftp_client()
        self._connections[src.name] = (conn, sftp)
        event(log, "sftp_connected", source=src.name, host=src.host, port=src.port, user=src.username)
        return sftp

    async def _drop_connection(self, src: SftpSource) -> None:
        cached = self._connections.pop(src.name, None)
        if cached is not None:
            conn, sftp = cached
            sftp.exit()
            conn.close()
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                await asyncio.wait_for(conn.wait_closed(), 2)

    async def poll(self, src: SftpSource) -> int:
        """One pass over the source's directory; returns how many files were completed (moved to done)."""
        sftp = await self._connect(src)
        entries = await sftp.readdir(src.directory)
        names = {entry.filename for entry in entries}
        present = set()
        completed = 0
        quiet = self.quiet_period_s if src.quiet_period_s is None else src.quiet_period_s
        now = time.monotonic()
        for entry in sorted(entries, key=lambda e: e.filename):
            name = entry.filename
            attrs = entry.attrs
            if name in (".", "..") or attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
                continue
            if is_temporary(name) or is_marker(name) or not fnmatch.fnmatch(name, src.pattern):
                continue
            present.add(name)
            size, mtime = int(attrs.size or 0), int(attrs.mtime or 0)
            seen = self._seen.get((src.name, name))
            if seen is None or (seen.size, seen.mtime) != (size, mtime):
                seen = self._seen[(src.name, name)] = _Seen(size, mtime, now)
            else:
                seen.polls += 1
            marker = next((m for m in marker_names(name) if m in names), None)
            if marker is None and (src.marker or seen.polls < 2 or now - seen.since < quiet):
                continue  # new, still growing, or (marker sources) not declared complete yet
            if self._stopping.is_set():
                break
            force = now - seen.since >= self.unterminated_after_s
            if await self.process(sftp, src, name, size, marker, force):
                completed += 1
        for key in [k for k in self._seen if k[0] == src.name and k[1] not in present]:
            del self._seen[key]
        return completed

    async def process(self, sftp: asyncssh.SFTPClient, src: SftpSource, name: str, size: int,
                      marker: str | None = None, force: bool = False) -> bool:
        """Ingest one file; False when it is not taken now (too large, changed, or its last line has no
        newline yet and `force` is not set: it is looked at again on the next poll)."""
        path = posixpath.join(src.directory, name)
        if size > MAX_FILE_BYTES:
            self.stats["skipped"] += 1
            event(log, "sftp_file_too_large", level=30, source=src.name, path=path, size=size)
            return False
        started = time.monotonic()
        async with sftp.open(path, "rb") as handle:
            last = await handle.read(1, size - 1) if size else b""
            if last not in (b"", b"\n", b"\r") and not force:
                # The writer stopped mid-line (a slow PLC): not complete, whatever its size and age say.
                self.stats["incomplete_waits"] += 1
                event(log, "sftp_file_waiting_for_final_newline", source=src.name, path=path, size=size)
                return False
            content = await handle.read(-1, 0)
        if len(content) != size:
            return False  # changed under us: next poll
        sha256 = hashlib.sha256(content).hexdigest()
        key = (src.name, name, size, sha256)
        if key in self.ledger:
            self.stats["already_ingested"] += 1
            event(log, "sftp_file_already_ingested", source=src.name, path=path, sha256=sha256)
            await self._move_done(sftp, src, name, marker)
            return True
        self._m_received.inc()
        parsed = parse_csv(src, path, content, sha256, now_ms(), self.pipeline.instance)
        entry = {"source": src.name, "name": name, "size": size, "sha256": sha256, "rows": parsed.rows,
                 "records": len(parsed.records), "dead_letters": len(parsed.dead_letters)}
        records, dead_letters = parsed.records, parsed.dead_letters
        if self.ledger.state(key) == "producing":
            # A crash came after producing began and before it was confirmed: produce only what Kafka lacks.
            since = int(self.ledger.get(key).get("producing_since_ms", 0))
            present = await asyncio.to_thread(self._delivered_ids, f"sftp:{src.name}:{name}:{sha256[:16]}:",
                                              since - 60_000)
            if present is not None:
                records = [r for r in records if r.id not in present]
                dead_letters = []  # the dead letters of a file go first, with its records
                event(log, "sftp_file_resumed", source=src.name, path=path, already_in_kafka=len(present),
                      remaining=len(records))
        else:
            self.ledger.put({**entry, "state": "producing", "producing_since_ms": now_ms()})
        try:
            produced = await self.pipeline.deliver(self.name, records, dead_letters,
                                                   timeout=self.delivery_timeout_s)
        except DeliveryFailed as exc:
            self.stats["failures"] += 1
            event(log, "sftp_file_not_delivered_left_in_place", level=30, source=src.name, path=path,
                  error=str(exc)[:300])
            return False
        self.ledger.put({**entry, "state": "done",
                         "ingested_at": datetime.now().astimezone().isoformat(timespec="seconds")})
        self.stats["files"] += 1
        self.stats["rows"] += parsed.rows
        self.stats["records"] += produced
        self.stats["dead_letters"] += len(parsed.dead_letters)
        self._m_lag.observe(time.monotonic() - started)
        event(log, "sftp_file_ingested", source=src.name, path=path, rows=parsed.rows, records=produced,
              dead_letters=len(parsed.dead_letters))
        await self._move_done(sftp, src, name, marker)
        return True

    def _delivered_ids(self, prefix: str, since_ms: int) -> set[str] | None:
        """Ids starting with `prefix` already on the readings topic, produced after `since_ms` (a bounded read
        from that timestamp to the end of each partition). None when Kafka cannot be read: then the file is
        produced again in full (duplicates carry the same ids)."""
        serde = self.pipeline.producer.serde
        found: set[str] = set()
        try:
            for record in read_topic(self.pipeline.settings, READINGS, start=AtTime(max(since_ms, 0)), decode=False,
                                     timeout_s=60, group_id=f"{self.pipeline.settings.service_name}-sftp-recovery"):
                try:
                    rid = serde.decode(READINGS, record.value)["id"]
                except Exception:  # noqa: BLE001 - another writer's record: not ours to judge here
                    continue
                if rid.startswith(prefix):
                    found.add(rid)
        except (KafkaException, TimeoutError) as exc:
            event(log, "sftp_recovery_read_failed", level=logging.WARNING, error=str(exc)[:300])
            return None
        return found

    async def _move_done(self, sftp: asyncssh.SFTPClient, src: SftpSource, name: str,
                         marker: str | None = None) -> None:
        if not await sftp.exists(src.done_directory):
            await sftp.makedirs(src.done_directory, exist_ok=True)
        for moving in (name, marker):
            if moving is None:
                continue
            target = posixpath.join(src.done_directory, moving)
            if await sftp.exists(target):  # a file of the same name was done before: keep both
                target = posixpath.join(src.done_directory, f"{int(time.time() * 1000)}-{moving}")
            try:
                await sftp.rename(posixpath.join(src.directory, moving), target)
            except asyncssh.SFTPNoSuchFile:
                if moving == name:
                    raise  # the marker may have been removed by its writer; the data file must move
