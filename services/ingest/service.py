"""The ingest process: one pipeline (producer, dedup, dead letters, metrics) shared by every adapter, one HTTP
port for health, metrics, HTTP push and webhooks, and the MQTT, Sparkplug B and SFTP adapters that are configured.

Shutdown (SIGTERM): stop taking new work, let in-flight records reach Kafka and their sources be acknowledged
(for a few seconds; what is left stays unacknowledged at its source and comes again), flush, close.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from lineguard.health import create_app
from lineguard.logs import event, get_logger
from lineguard.service import Runtime, Service, serve
from services.ingest.http_api import HttpIngest
from services.ingest.mqtt_adapter import MqttAdapter
from services.ingest.mqtt_rules import load_rules
from services.ingest.pipeline import IngestPipeline
from services.ingest.settings import IngestSettings
from services.ingest.sftp_poller import SftpPoller, load_sources
from services.ingest.sparkplug_host import SparkplugHost

log = get_logger(__name__)


class IngestService:
    def __init__(self, settings: IngestSettings, pipeline: IngestPipeline | None = None,
                 runtime: Runtime[IngestSettings] | None = None, **producer_overrides: Any) -> None:
        self.settings = settings
        self.runtime = runtime or Runtime(settings)
        self.health = self.runtime.health
        self.pipeline = pipeline or IngestPipeline(settings, dedup_capacity=settings.dedup_capacity,
                                                   **producer_overrides)
        self.http = HttpIngest(self.pipeline, settings)
        self.mqtt: MqttAdapter | None = None
        if settings.mqtt_url:
            self.mqtt = MqttAdapter(self.pipeline, settings.mqtt_url, settings.mqtt_topics,
                                    settings.mqtt_client_id, load_rules(settings.mqtt_rules_file),
                                    keepalive=settings.mqtt_keepalive_s)
        self.sparkplug: SparkplugHost | None = None
        if settings.mqtt_url and settings.sparkplug_enabled:
            self.sparkplug = SparkplugHost(self.pipeline, settings.mqtt_url, settings.sparkplug_host_id,
                                           settings.sparkplug_groups, keepalive=settings.mqtt_keepalive_s)
        self.sftp: SftpPoller | None = None
        if settings.sftp_sources_file:
            self.sftp = SftpPoller(self.pipeline, load_sources(settings.sftp_sources_file), settings.sftp_ledger,
                                   settings.sftp_poll_interval_s)
    @property
    def port(self) -> int | None:
        """The HTTP port once serving."""
        return self.runtime.port

    def app(self) -> web.Application:
        app = create_app(self.health)
        self.http.add_routes(app)
        return app

    def as_service(self) -> Service:
        """What lineguard.service runs: the HTTP routes, the adapters as one task, the pipeline closed last."""
        return Service(routes=self.http.add_routes, tasks=[self._adapters], on_stop=self._close,
                       ready=self._adapters_ready, stop_timeout_s=15.0)

    def request_stop(self, *_: object) -> None:
        """Ask the service to stop (safe from signal handlers and other threads)."""
        self.runtime.request_stop()

    async def run(self, install_signals: bool = False) -> int:
        """Serve until stopped (tests run it in-process; `python -m services.ingest` goes through run_service)."""
        return await serve(self.runtime, self.as_service(), install_signals=install_signals)

    async def _adapters(self) -> None:
        """Start the configured adapters; once the service stops, stop taking new work and let in-flight
        records reach Kafka and their sources be acknowledged (SFTP: up to 10 s)."""
        if self.mqtt is not None:
            self.mqtt.start()
        if self.sparkplug is not None:
            self.sparkplug.start()
        sftp = asyncio.create_task(self.sftp.run(), name="sftp") if self.sftp is not None else None
        try:
            await self.runtime.stopping.wait()
        finally:
            event(log, "ingest_stopping")
            if self.sftp is not None and sftp is not None:
                self.sftp.stop()
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(sftp, 10)
                sftp.cancel()
            if self.mqtt is not None:
                await asyncio.to_thread(self.mqtt.stop)
            if self.sparkplug is not None:
                await asyncio.to_thread(self.sparkplug.stop)

    async def _close(self) -> None:
        remaining = await asyncio.to_thread(self.pipeline.close, 5.0)  # within a 15 s grace period
        event(log, "ingest_stopped", undelivered=remaining)

    def _adapters_ready(self) -> tuple[bool, str]:
        if self.mqtt is not None and not self.mqtt.ever_subscribed:
            return False, "MQTT not subscribed yet"
        if self.sparkplug is not None and not self.sparkplug.ever_subscribed:
            return False, "Sparkplug host not subscribed yet"
        return True, ""
