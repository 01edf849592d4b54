"""The HTTP routes of ingest (aiohttp), added to the health/metrics application of `lineguard.health`:

    POST /ingest/v1/batch          HTTP push (Authorization: Bearer <token>, LINEGUARD_PUSH_TOKENS)
    GET  /ingest/v1/schema         the published JSON schema of a push batch
    POST /lorawan/chirpstack       ChirpStack v4 HTTP integration (?event=up; X-Lineguard-Secret header)
    POST /lorawan/tts[/<type>]     The Things Stack v3 webhook (X-Lineguard-Secret header)

HTTP push answers 2xx only after Kafka acknowledged every record (and every dead letter); when Kafka cannot take
the data in time the answer is 503 with Retry-After, so the caller retries, and the ids make that retry safe.

Network servers do not retry a failed webhook, so LoRaWAN uplinks (and their dead letters) go to the durable
webhook spool (`spool.py`) instead: the answer comes once the uplink is on disk (milliseconds, well within
ChirpStack's 5 s), and the spool replays it into Kafka in order; 503 only when the spool is full. An uplink id
already in the spool (or delivered from it) is answered as a duplicate. Bad input gets 4xx with the field that is
wrong. Secrets are compared in constant time and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import os
import time

from aiohttp import web

from lineguard.logs import event, get_logger
from services.ingest import http_push, lorawan_webhooks
from services.ingest.lorawan_webhooks import UndecodablePayload
from services.ingest.parsing import InputError
from services.ingest.pipeline import DeadLetter, DeliveryFailed, Emit, IngestPipeline, now_ms
from services.ingest.settings import IngestSettings
from services.ingest.spool import Spool, SpoolFull

log = get_logger(__name__)

SECRET_HEADER = "X-Lineguard-Secret"
RETRY_AFTER_S = "5"
SPOOL_APPEND_TIMEOUT_S = 1.5  # network servers wait 5 s (ChirpStack) or 10 s (TTS): answer well within


class _TooLarge(Exception):
    pass


def _error(status: int, message: str, field: str | None = None, **extra: object) -> web.Response:
    body: dict[str, object] = {"error": message}
    if field is not None:
        body["field"] = field
    body.update(extra)
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    return web.json_response(body, status=status, headers=headers)


def _raiser(exc: Exception):  # noqa: ANN202
    def parse() -> None:
        raise exc
    return parse


def _secret_ok(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class HttpIngest:
    def __init__(self, pipeline: IngestPipeline, settings: IngestSettings) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.metrics = pipeline.metrics
        self.schema = http_push.load_schema()
        self.spool: Spool | None = None
        self._spool_lock: int | None = None
        self._drain: asyncio.Task | None = None
        if settings.chirpstack_secret or settings.tts_secret:
            directory = settings.webhook_spool_dir / (settings.topic_prefix.strip(".") or "default")
            self._spool_lock = _lock_directory(directory)
            self.spool = Spool(directory, settings.webhook_spool_max_bytes, pipeline,
                               service=settings.service_name)

    async def _start_spool(self, app: web.Application) -> None:
        if self.spool is not None:
            self.spool.start()
            self._drain = asyncio.create_task(self.spool.run(), name="webhook-spool")

    async def _stop_spool(self, app: web.Application) -> None:
        if self.spool is None:
            return
        self.spool.stop()
        if self._drain is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._drain, 5)
        await asyncio.to_thread(self.spool.close)
        if self._spool_lock is not None:
            os.close(self._spool_lock)
            self._spool_lock = None
        event(log, "webhook_spool_closed", pending=len(self.spool), **self.spool.stats)

    def add_routes(self, app: web.Application) -> None:
        app.on_startup.append(self._start_spool)
        app.on_cleanup.append(self._stop_spool)
        app.router.add_post(http_push.PATH, self.push)
        app.router.add_get("/ingest/v1/schema", self.push_schema)
        app.router.add_post(lorawan_webhooks.CHIRPSTACK_PATH, self.chirpstack)
        app.router.add_post(lorawan_webhooks.TTS_PATH, self.tts)
        app.router.add_post(lorawan_webhooks.TTS_PATH + "/{message_type}", self.tts)

    # --- shared ---------------------------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _TooLarge
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _reject(self, adapter: str, status: int, message: str, field: str | None = None) -> web.Response:
        self.metrics.rejected.labels(adapter, str(status)).inc()
        return _error(status, message, field)

    async def _deliver(self, adapter: str, started: float, records: list[Emit],
                       dead_letters: list[DeadLetter] = (), **extra: object) -> web.Response:
        """Produce and answer: 200 once Kafka acknowledged everything, 503 when it did not in time."""
        if self.pipeline.kafka_suspect():
            self.metrics.unavailable.labels(adapter).inc()
            return _error(503, "Kafka is not acknowledging records at the moment; retry later")
        try:
            produced = await self.pipeline.deliver(adapter, records, dead_letters,
                                                   timeout=self.settings.delivery_timeout_s)
        except DeliveryFailed as exc:
            self.metrics.unavailable.labels(adapter).inc()
            event(log, "http_delivery_failed", level=30, adapter=adapter, records=len(records), error=str(exc))
            return _error(503, f"Kafka could not take the data: {exc}; retry later")
        self.metrics.ack_lag.labels(adapter).observe(time.monotonic() - started)
        return web.json_response({"accepted": produced, "duplicates": len(records) - produced,
                                  "dead_lettered": len(dead_letters), **extra})

    # --- HTTP push ------------------------------------------------------------------------------------------------

    async def push_schema(self, request: web.Request) -> web.Response:
        return web.json_response(self.schema, content_type="application/schema+json")

    async def push(self, request: web.Request) -> web.Response:
        adapter = "http"
        started = time.monotonic()
        tokens = self.settings.push_tokens
        if not tokens:
            return self._reject(adapter, 404, "HTTP push is not enabled (set LINEGUARD_PUSH_TOKENS)")
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not any(_secret_ok(token.strip(), t) for t in tokens):
            self.metrics.rejected.labels(adapter, "401").inc()
            return web.json_response({"error": "missing or invalid bearer token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="lineguard-ingest"'})
        self.metrics.received.labels(adapter).inc()
        try:
            body = await self._body(request)
            records = http_push.parse_batch(body, now_ms(), self.pipeline.instance)
        except _TooLarge:
            return self._reject(adapter, 413, f"body larger than {self.settings.max_body_bytes} bytes")
        except InputError as exc:
            return self._reject(adapter, 400, exc.message, exc.field)
        return await self._deliver(adapter, started, records)

    # --- LoRaWAN --------------------------------------------------------------------------------------------------

    def _check_secret(self, adapter: str, request: web.Request, expected: str | None) -> web.Response | None:
        if not expected:
            return self._reject(adapter, 404, f"the {adapter} webhook is not enabled")
        if not _secret_ok(request.headers.get(SECRET_HEADER), expected):
            return self._reject(adapter, 401, f"missing or wrong {SECRET_HEADER} header")
        return None

    async def _webhook_body(self, adapter: str, request: web.Request, secret: str | None) -> bytes | web.Response:
        """Authenticate a webhook call, count it and read its body; or the error response to send."""
        denied = self._check_secret(adapter, request, secret)
        if denied is not None:
            return denied
        self.metrics.received.labels(adapter).inc()
        try:
            return await self._body(request)
        except _TooLarge:
            return self._reject(adapter, 413, f"body larger than {self.settings.max_body_bytes} bytes")

    async def _spool(self, adapter: str, started: float, key: str, records: list[Emit],
                     dead_letters: list[DeadLetter]) -> bool | web.Response:
        """Append one uplink to the spool: True once on disk, False for a duplicate, or the 503 to send."""
        assert self.spool is not None
        try:
            fresh = await asyncio.wait_for(asyncio.shield(self.spool.append(key, adapter, records, dead_letters)),
                                           SPOOL_APPEND_TIMEOUT_S)
        except SpoolFull as exc:
            self.metrics.unavailable.labels(adapter).inc()
            event(log, "webhook_spool_full", level=30, adapter=adapter, error=str(exc))
            return _error(503, f"{exc}; retry later")
        except (TimeoutError, OSError) as exc:
            self.metrics.unavailable.labels(adapter).inc()
            return _error(503, f"the webhook spool could not write the uplink: {exc!r}; retry later")
        self.metrics.ack_lag.labels(adapter).observe(time.monotonic() - started)
        return fresh

    async def _uplink(self, adapter: str, started: float, body: bytes, parse, address: str) -> web.Response:
        received_at = now_ms()
        try:
            uplink = parse()
        except InputError as exc:
            # Not an uplink we can read: keep the bytes, tell the sender which field is wrong.
            letter = DeadLetter(body, str(exc), type(exc).__name__, adapter, address)
            key = f"{adapter}:invalid:{hashlib.sha256(body).hexdigest()}"
            spooled = await self._spool(adapter, started, key, [], [letter])
            if isinstance(spooled, web.Response):
                return spooled
            return self._reject(adapter, 400, exc.message, exc.field)
        key = f"{uplink.protocol}:{uplink.dedup_id}"
        try:
            records = lorawan_webhooks.uplink_readings(uplink, self.settings.lorawan_codecs, address, received_at,
                                                       self.pipeline.instance)
        except UndecodablePayload as exc:
            # Well formed but undecodable: a retry would not help. Dead-letter it and acknowledge.
            letter = DeadLetter(body, str(exc), type(exc).__name__, adapter, address, str(uplink.f_cnt),
                                uplink.dev_eui)
            spooled = await self._spool(adapter, started, key, [], [letter])
            if isinstance(spooled, web.Response):
                return spooled
            return web.json_response({"accepted": 0, "duplicates": 0, "dead_lettered": int(spooled),
                                      "reason": str(exc)})
        spooled = await self._spool(adapter, started, key, records, [])
        if isinstance(spooled, web.Response):
            return spooled
        if not spooled:
            self.metrics.duplicates.labels(adapter).inc(len(records))
        return web.json_response({"accepted": len(records) if spooled else 0,
                                  "duplicates": 0 if spooled else len(records), "dead_lettered": 0})

    async def chirpstack(self, request: web.Request) -> web.Response:
        adapter = "chirpstack"
        started = time.monotonic()
        body = await self._webhook_body(adapter, request, self.settings.chirpstack_secret)
        if isinstance(body, web.Response):
            return body
        kind = lorawan_webhooks.chirpstack_event(request.query.get("event"))
        if kind != "up":
            # join, ack, txack, log, status, location, integration: acknowledged and counted, not ingested.
            label = kind if kind in ("join", "ack", "txack", "log", "status", "location", "integration") else "other"
            self.metrics.ignored.labels(adapter, label).inc()
            return web.json_response({"ignored": kind or "(no event parameter)"})
        return await self._uplink(adapter, started, body,
                                  lambda: lorawan_webhooks.parse_chirpstack_up(body, now_ms()),
                                  lorawan_webhooks.CHIRPSTACK_PATH)

    async def tts(self, request: web.Request) -> web.Response:
        adapter = "tts"
        started = time.monotonic()
        body = await self._webhook_body(adapter, request, self.settings.tts_secret)
        if isinstance(body, web.Response):
            return body
        try:
            kind, data = lorawan_webhooks.parse_tts(body)
        except InputError as exc:
            return await self._uplink(adapter, started, body, _raiser(exc), request.path)
        if kind != "uplink_message":
            self.metrics.ignored.labels(adapter, kind or "other").inc()
            return web.json_response({"ignored": kind or "unknown message type"})
        return await self._uplink(adapter, started, body,
                                  lambda: lorawan_webhooks.parse_tts_uplink(data, now_ms()), request.path)


def _lock_directory(directory) -> int:  # noqa: ANN001 - a Path
    """Hold an exclusive lock on the spool directory for this process's life: two processes appending to one
    spool would interleave their segments."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OSError(f"another ingest process uses the webhook spool {directory} "
                      "(set LINEGUARD_WEBHOOK_SPOOL_DIR per process)") from None
    return fd
