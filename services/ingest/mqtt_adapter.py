"""MQTT adapter (paho-mqtt 2.x): QoS 1 readings, acknowledged to the broker only after Kafka confirmed them.

The session is persistent (fixed client id, clean_session False), so while ingest is down or Kafka is out, the
broker keeps the messages. Every QoS 1 message is acknowledged manually (`manual_ack=True`, `client.ack(mid, qos)`)
once its record (or its dead letter) is delivered; acknowledgements go out in the order the messages came in (as
MQTT asks), so one message waiting for Kafka holds back the acks after it, the broker's in-flight window fills,
and the broker stops sending: a Kafka outage becomes backpressure at the broker, not loss. A record Kafka failed
to take is produced again after a pause, until it is delivered.
"""

from __future__ import annotations

import collections
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from lineguard.logs import event, get_logger
from services.ingest.fast_paho import client_class
from services.ingest.mqtt_rules import DEFAULT_RULES, MqttMapper, TopicRule
from services.ingest.parsing import InputError
from services.ingest.pipeline import DeadLetter, Emit, IngestPipeline, now_ms

log = get_logger(__name__)

RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
MAX_GROUP_MESSAGES = 200  # a read burst goes to Kafka in batches of at most this many messages
MAX_GROUP_RECORDS = 4000  # ... or this many records


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme in ("mqtts", "ssl")
        if not parts.hostname:
            raise ValueError("MQTT URL needs a host (mqtt://host:port)")
        return cls(parts.hostname, parts.port or (8883 if tls else 1883), tls,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)

    def __repr__(self) -> str:  # never show the password
        return f"BrokerAddress({self.host}:{self.port}, tls={self.tls}, user={self.username!r})"


def make_client(address: BrokerAddress, client_id: str, *, clean_session: bool, manual_ack: bool,
                keepalive: int = 30) -> mqtt.Client:
    client = client_class()(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                            protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    client.max_queued_messages_set(0)
    return client


@dataclass(slots=True, eq=False)
class _InFlight:
    """The messages of one read burst, produced together and acknowledged together once all are delivered."""

    received: float  # time.monotonic() at receipt of the first
    acks: list[tuple[int, int]] = field(default_factory=list)  # (mid, qos) of the QoS 1 messages, in order
    delivered: bool = False
    attempts: int = 0
    records: list[Emit] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


class MqttAdapter:
    """Subscribes with QoS 1 and a persistent session; hands each message to the pipeline; acks after delivery."""

    name = "mqtt"

    def __init__(self, pipeline: IngestPipeline, url: str, topics: list[str], client_id: str,
                 rules: tuple[TopicRule, ...] = DEFAULT_RULES, keepalive: int = 30) -> None:
        self.pipeline = pipeline
        self.address = BrokerAddress.parse(url)
        self.topics = topics
        self.client_id = client_id
        self.mapper = MqttMapper(rules, received_by=pipeline.instance)
        self.client = make_client(self.address, client_id, clean_session=False, manual_ack=True,
                                  keepalive=keepalive)
        self.keepalive = keepalive
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._order: collections.deque[_InFlight] = collections.deque()
        self._pending_messages = 0
        self._group: _InFlight | None = None
        # With the buffered client, messages of one read burst go to Kafka as one batch (fewer, larger
        # handoffs between threads); with stock paho, one message at a time.
        self._batching = hasattr(self.client, "on_read_done")
        if self._batching:
            self.client.on_read_done = self._on_read_done
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.ever_subscribed = False
        self.stats = collections.Counter()
        m = pipeline.metrics
        self._m_received = m.received.labels(self.name)
        self._m_lag = m.ack_lag.labels(self.name)
        self._m_pending = m.pending.labels(self.name)
        self._closing = False

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.client.connect_async(self.address.host, self.address.port, keepalive=self.keepalive)
        self.client.loop_start()

    def wait_ready(self, timeout: float) -> bool:
        return self.subscribed.wait(timeout)

    def pending(self) -> int:
        """QoS 1 messages received and not yet acknowledged."""
        with self._lock:
            return self._pending_messages

    def stop(self, drain_timeout: float = 5.0) -> int:
        """Wait a little for in-flight messages to be delivered and acknowledged, then disconnect. What is still
        unacknowledged stays in the broker's session and comes again on the next connect. Returns that count."""
        deadline = time.monotonic() + drain_timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._closing = True
        left = self.pending()
        time.sleep(0.05)  # let the network thread write the last acks
        self.client.disconnect()
        self.client.loop_stop()
        event(log, "mqtt_stopped", unacknowledged=left, **self.stats)
        return left

    # --- paho callbacks (network thread) --------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            event(log, "mqtt_connect_refused", level=30, broker=repr(self.address), reason=str(reason))
            return
        self.connected.set()
        self.stats["connects"] += 1
        event(log, "mqtt_connected", broker=repr(self.address), client_id=self.client_id,
              session_present=bool(getattr(flags, "session_present", False)))
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        failures = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if failures:
            event(log, "mqtt_subscribe_refused", level=40, topics=self.topics, reasons=failures)
            return
        self.subscribed.set()
        self.ever_subscribed = True
        event(log, "mqtt_subscribed", topics=self.topics)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._closing:
            event(log, "mqtt_disconnected", level=30, reason=str(reason), unacknowledged=self.pending())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._handle(message)
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill paho's network thread
            event(log, "mqtt_message_failed", level=40, topic=message.topic, error=repr(exc)[:300])

    def _on_read_done(self) -> None:
        try:
            self._flush_group()
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill paho's network thread
            event(log, "mqtt_batch_failed", level=40, error=repr(exc)[:300])

    def _handle(self, message: mqtt.MQTTMessage) -> None:
        self._m_received.inc()
        received_at = now_ms()
        group = self._group
        if group is None:
            group = self._group = _InFlight(time.monotonic())
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "replace")
        try:
            group.records.extend(self.mapper.map_many(topic, message.payload, received_at, str(message.mid)))
        except InputError as exc:
            group.dead_letters.append(DeadLetter(message.payload, str(exc), type(exc).__name__, self.name, topic,
                                                 str(message.mid)))
        if message.qos > 0:
            group.acks.append((message.mid, message.qos))
        if not self._batching or len(group.acks) >= MAX_GROUP_MESSAGES or len(group.records) >= MAX_GROUP_RECORDS:
            self._flush_group()

    def _flush_group(self) -> None:
        """End of a read burst: hand its messages to the pipeline as one batch."""
        group, self._group = self._group, None
        if group is None:
            return
        if group.acks:
            with self._lock:
                self._order.append(group)
                self._pending_messages += len(group.acks)
        self._submit(group)

    # --- delivery (producer polling thread) -----------------------------------------------------------------------

    def _submit(self, entry: _InFlight) -> None:
        entry.attempts += 1
        self.pipeline.submit(self.name, entry.records, lambda errors: self._delivered(entry, errors),
                             entry.dead_letters)

    def _delivered(self, entry: _InFlight, errors: list[str]) -> None:
        if errors:
            self.stats["delivery_failures"] += 1
            delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(entry.attempts - 1, 4))
            if entry.attempts <= 3 or entry.attempts % 20 == 0:
                event(log, "mqtt_delivery_failed_retrying", level=30, messages=len(entry.acks),
                      attempts=entry.attempts, retry_in_s=delay, error=errors[0][:200])
            timer = threading.Timer(delay, self._submit, args=(entry,))
            timer.daemon = True
            timer.start()
            return
        if not entry.acks:
            return
        entry.delivered = True
        ready: list[_InFlight] = []
        with self._lock:
            while self._order and self._order[0].delivered:
                done = self._order.popleft()
                self._pending_messages -= len(done.acks)
                ready.append(done)
            pending = self._pending_messages
        if not ready:
            return
        now = time.monotonic()
        acks = [ack for done in ready for ack in done.acks]
        ack_many = getattr(self.client, "ack_many", None)
        if ack_many is not None:
            ack_many(acks)
        else:
            for mid, qos in acks:
                self.client.ack(mid, qos)
        for done in ready:
            lag = now - done.received
            for _ in done.acks:
                self._m_lag.observe(lag)
        self.stats["acknowledged"] += len(acks)
        self._m_pending.set(pending)
