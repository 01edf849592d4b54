"""A paho-mqtt 2.x client that reads and acknowledges in bulk.

Stock paho reads every packet with several small `recv` calls (fixed header, each length byte, body), wakes its
select loop once per packet, and writes every PUBACK with its own `send` plus one wake-up byte: on the 2-core
development machine that caps a QoS 1 subscriber near 7,000-9,000 messages/s. This subclass
- serves paho's reads from a 256 KiB buffer, and keeps parsing while the buffer holds data (no select per packet);
- coalesces queued PUBACKs into one `send`;
- `ack_many()` queues many PUBACKs with a single wake-up of the network thread;
- `on_read_done` is called after each read burst, so a subscriber can handle the burst's messages as a batch;
- hands QoS 0/1 messages straight to `on_message` (no per-message topic-filter walk, no unused publish-info
  condition variable, no debug-log formatting) when no per-topic callbacks and no logger are set.
Behaviour is otherwise paho's own (connect, keepalive, reconnect, TLS, will). It overrides private methods of
paho 2.x, so it checks the version it was written against and falls back to stock paho for any other.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterable

import paho.mqtt
import paho.mqtt.client as mqtt

SUPPORTED = paho.mqtt.__version__.startswith("2.")
# paho 2.2 decodes packets in its `_packet` module; older 2.x releases use stock message handling.
_decode_publish = getattr(getattr(mqtt, "_packet", None), "decode_publish", None)
_PUBACK = 0x40
_READ_SIZE = 256 * 1024
_WRITE_EVERY_PACKETS = 256


class FastClient(mqtt.Client):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()
        # Called on the network thread after each read burst (all messages read so far were delivered to
        # on_message): lets a subscriber handle a burst of messages as one batch.
        self.on_read_done: Callable[[], None] | None = None
        self._topic_callbacks = False

    def message_callback_add(self, sub: str, callback: Callable) -> None:
        self._topic_callbacks = True
        super().message_callback_add(sub, callback)

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        if qos == 2 or _decode_publish is None or self._topic_callbacks or self._logger is not None \
                or self.on_log is not None or self.on_message is None:
            return super()._handle_publish()
        result = _decode_publish(command, self._in_packet["packet"], self._protocol)
        message = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
        message.timestamp = mqtt.time_func()
        message.state = mqtt.mqtt_ms_invalid
        message.mid = result.mid
        message._topic = result.topic
        message.dup = result.dup
        message.qos = result.qos
        message.retain = result.retain
        message.properties = result.properties
        message.payload = result.payload
        message.info = None  # only meaningful for messages this client publishes
        with self._in_callback_mutex:
            try:
                self.on_message(self, self._userdata, message)
            except Exception:
                if not self.suppress_exceptions:
                    raise
        if qos == 1 and not self._manual_ack:
            return self._send_puback(message.mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self._rbuf:
            data = super()._sock_recv(_READ_SIZE)
            if not data:
                return data  # connection closed: paho handles it
            self._rbuf += data
        chunk = bytes(self._rbuf[:bufsize])
        del self._rbuf[:bufsize]
        return chunk

    def _sock_close(self) -> None:
        self._rbuf.clear()
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        try:
            rc = super().loop_read(max_packets)
            # The socket may be drained into our buffer: select would not wake for what is already here, so
            # keep parsing while it holds data, and send queued writes (our PUBACKs) now and then meanwhile.
            packets = 0
            while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._rbuf and self._sock is not None:
                rc = super().loop_read(1)
                packets += 1
                if packets % _WRITE_EVERY_PACKETS == 0 and self._out_packet and rc == 0:
                    rc = self.loop_write()
            return rc
        finally:
            if self.on_read_done is not None:
                self.on_read_done()

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        out = self._out_packet
        if len(out) > 1 and (out[0]["command"] & 0xF0) == _PUBACK and out[0]["pos"] == 0:
            merged = []
            while out and (out[0]["command"] & 0xF0) == _PUBACK and out[0]["pos"] == 0 and len(merged) < 4096:
                merged.append(out.popleft()["packet"])
            packet = b"".join(merged)
            out.appendleft({"command": _PUBACK, "mid": 0, "qos": 0, "pos": 0, "to_process": len(packet),
                            "packet": packet, "info": None})
        return super()._packet_write()

    def ack_many(self, acks: Iterable[tuple[int, int]]) -> None:
        """Acknowledge (mid, qos) pairs: PUBACKs for QoS 1, with one wake-up of the network thread."""
        packets = [struct.pack("!BBH", _PUBACK, 2, mid) for mid, qos in acks if qos == 1]
        if not packets:
            return
        for packet in packets:
            self._out_packet.append({"command": _PUBACK, "mid": 0, "qos": 0, "pos": 0, "to_process": 4,
                                     "packet": packet, "info": None})
        if self._sockpairW is not None:
            with contextlib.suppress(BlockingIOError):
                self._sockpairW.send(b"0")
        self._call_socket_register_write()


def client_class() -> type[mqtt.Client]:
    return FastClient if SUPPORTED else mqtt.Client
