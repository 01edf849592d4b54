"""Reading back what ingest produced: every record of a topic (all partitions, from the start), decoded."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from confluent_kafka import Consumer, TopicPartition

from lineguard.avro import AvroSerde
from lineguard.settings import Settings
from simulator.sftp import start_sftp_server


@dataclass
class Consumed:
    key: str | None
    value: dict | bytes
    headers: dict[str, str]


class TopicReader:
    """Reads one topic from the beginning without a consumer group (assign, no join wait)."""

    def __init__(self, settings: Settings, topic: str, decode: bool = True) -> None:
        self.settings = settings
        self.topic = topic
        self.decode = decode
        self.serde = AvroSerde(settings.schemas_dir, None, None, settings.topic_prefix)
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                                  "group.id": f"reader-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False})
        full = settings.topic(topic)
        meta = self.consumer.list_topics(full, timeout=10)
        partitions = meta.topics[full].partitions
        self.consumer.assign([TopicPartition(full, p, 0) for p in partitions])  # 0 = from the start
        self.records: list[Consumed] = []

    def poll(self, seconds: float) -> list[Consumed]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(500, 0.2):
                if msg.error():
                    continue
                value = self.serde.decode(self.topic, msg.value()) if self.decode else msg.value()
                headers = {k: (v or b"").decode("utf-8", "replace") for k, v in msg.headers() or []}
                self.records.append(Consumed(msg.key().decode() if msg.key() else None, value, headers))
        return self.records

    def read_until(self, count: int, timeout: float = 20.0, settle: float = 0.5) -> list[Consumed]:
        """Read until at least `count` records arrived (then `settle` more seconds, to catch extra ones)."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            self.poll(0.3)
        self.poll(settle)
        return self.records

    def close(self) -> None:
        self.consumer.close()


def publisher(mqtt_url: str, client_id: str | None = None) -> mqtt.Client:
    host, port = mqtt_url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, int(port))
    client.loop_start()
    return client


def publish_all(client: mqtt.Client, messages: list[tuple[str, bytes]], qos: int = 1, timeout: float = 20) -> None:
    infos = [client.publish(topic, payload, qos=qos) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(timeout)


class RunningService:
    """An IngestService on its own thread and event loop (as in its process), on a free port."""

    def __init__(self, service) -> None:  # noqa: ANN001
        import asyncio

        self.service = service
        self.error: BaseException | None = None

        def run() -> None:
            try:
                asyncio.run(service.run())
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                self.error = exc

        self.thread = threading.Thread(target=run, name="ingest-service", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while service.port is None:
            if self.error or time.monotonic() > deadline:
                raise RuntimeError(f"ingest did not start: {self.error!r}")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{service.port}"

    def stop(self) -> None:
        self.service.request_stop()
        self.thread.join(30)
        if self.error:
            raise self.error


def http(method: str, url: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None,
         timeout: float = 20) -> tuple[int, dict]:
    """A request; returns (status, JSON body)."""
    import json as _json
    import urllib.error
    import urllib.request

    data = _json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read() or b"{}"
            try:
                return response.status, _json.loads(raw)
            except ValueError:
                return response.status, {"raw": raw.decode("utf-8", "replace")}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, _json.loads(raw)
        except ValueError:
            return exc.code, {"raw": raw.decode("utf-8", "replace")}


PASSWORD = "plc-secret"


class SftpServer:
    """The simulator's SFTP server on its own thread and loop, serving `root` on a free port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.port: int | None = None
        ready = threading.Event()

        async def start() -> None:
            self.acceptor, self.port = await start_sftp_server(root, port=0, passwords={"lineguard": PASSWORD})
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        assert ready.wait(10)

    def close(self) -> None:
        async def stop() -> None:
            self.acceptor.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
