"""The ingest process: one pipeline (producer, dedup, dead letters, metrics) shared by every adapter, one HTTP
port for health, metrics, HTTP push and webhooks, and the MQTT, Sparkplug B and SFTP adapters that are configured.

Shutdown (SIGTERM): stop taking new work, let in-flight records reach Kafka and their sources be acknowledged
(for a few seconds; what is left stays unacknowledged at its source and comes again), flush, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from aiohttp import web

from lineguard.health import Health, create_app
from lineguard.logs import event, get_logger
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
                 **producer_overrides: Any) -> None:
        self.settings = settings
        self.health = Health(settings.service_name, settings.liveness_timeout_s)
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
        self.port: int | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def app(self) -> web.Application:
        app = create_app(self.health)
        self.http.add_routes(app)
        return app

    def request_stop(self, *_: object) -> None:
        """Ask the service to stop (safe from signal handlers and other threads)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def install_signal_handlers(self) -> None:
        assert self._loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.request_stop)

    async def run(self, install_signals: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if install_signals:
            self.install_signal_handlers()
        settings = self.settings
        self.health.set_ready(False, "starting")
        runner = web.AppRunner(self.app(), access_log=None)  # access logs could carry secrets in URLs
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        self.port = runner.addresses[0][1]
        event(log, "ingest_started", port=self.port, settings=settings.redacted())
        tasks = [asyncio.create_task(self._heartbeat(), name="heartbeat")]
        if self.mqtt is not None:
            self.mqtt.start()
        if self.sparkplug is not None:
            self.sparkplug.start()
        if self.sftp is not None:
            tasks.append(asyncio.create_task(self.sftp.run(), name="sftp"))
        try:
            await self._stop.wait()
        finally:
            event(log, "ingest_stopping")
            self.health.set_ready(False, "stopping")
            if self.sftp is not None:
                self.sftp.stop()
            for task in tasks:
                if task.get_name() == "sftp":
                    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                        await asyncio.wait_for(task, 10)
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.mqtt is not None:
                await asyncio.to_thread(self.mqtt.stop)
            if self.sparkplug is not None:
                await asyncio.to_thread(self.sparkplug.stop)
            await runner.cleanup()
            remaining = await asyncio.to_thread(self.pipeline.close, 5.0)  # within a 15 s grace period
            event(log, "ingest_stopped", undelivered=remaining)

    def _adapters_ready(self) -> tuple[bool, str]:
        if self.mqtt is not None and not self.mqtt.ever_subscribed:
            return False, "MQTT not subscribed yet"
        if self.sparkplug is not None and not self.sparkplug.ever_subscribed:
            return False, "Sparkplug host not subscribed yet"
        return True, ""

    async def _heartbeat(self) -> None:
        while True:
            self.health.beat()
            ready, why = self._adapters_ready()
            if ready != self.health.ready:
                self.health.set_ready(ready, why)
                if ready:
                    event(log, "ingest_ready", port=self.port)
            await asyncio.sleep(0.2)
