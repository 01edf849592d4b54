"""Reading back what ingest produced: every record of a topic (all partitions, from the start), decoded."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from confluent_kafka import Consumer, TopicPartition

from lineguard.avro import AvroSerde
from lineguard.settings import Settings


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
