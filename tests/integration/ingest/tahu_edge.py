"""A Sparkplug B edge node built on Eclipse Tahu's Python library (its `sparkplug_b` payload functions and
`array_packer`, shipped in the `sparkplug-b-packets` wheel), with paho for MQTT, the way Tahu's example edge node
is written: an NDEATH will carrying bdSeq, NBIRTH with seq 0 and the same bdSeq, data numbered by Tahu's seq
counter. Nothing of lineguard.sparkplug is used, so the host is checked against an independent encoder.

Tahu's generated protobuf module registers `sparkplug_b.proto` in protobuf's default pool, as the protoc output of
another test does, and one process cannot hold both: so the edge node runs as its own process (as a real one
would), driven with JSON lines on stdin:

    python tahu_edge.py encode                      messages in, payloads (hex) out, for unit tests
    python tahu_edge.py edge <mqtt_url> <group> <node>

A metric is [name or null, alias or null, datatype name (Tahu's MetricDataType, or an array type such as
"FloatArray"), value]. Tahu's copy in this wheel packs numeric arrays itself (little-endian, as the spec says) but
its MetricDataType lacks the array numbers, so array metrics are assembled here from Tahu's packers.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ARRAYS = {"Int8Array": (22, "int8"), "Int16Array": (23, "int16"), "Int32Array": (24, "int32"),
          "Int64Array": (25, "int64"), "UInt8Array": (26, "uint8"), "UInt16Array": (27, "uint16"),
          "UInt32Array": (28, "uint32"), "UInt64Array": (29, "uint64"), "FloatArray": (30, "float"),
          "DoubleArray": (31, "double"), "DateTimeArray": (34, "datetime")}


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the edge node side (runs in its own process) ----------------------------------------------------------


def _add(tahu: Any, packer: Any, payload: Any, metric: list, timestamp: int, with_datatype: bool = True) -> None:
    name, alias, datatype, value = metric
    if datatype in ARRAYS:
        number, kind = ARRAYS[datatype]
        out = payload.metrics.add()
        if name is not None:
            out.name = name
        if alias is not None:
            out.alias = alias
        out.timestamp = timestamp
        out.datatype = number
        out.bytes_value = getattr(packer, f"convert_to_packed_{kind}_array")(value)
    else:
        out = tahu.addMetric(payload, name, alias, getattr(tahu.MetricDataType, datatype), value, timestamp)
    if not with_datatype:
        out.ClearField("datatype")  # data messages SHOULD leave it out: the host must use the birth's


def _build(tahu: Any, packer: Any, message: dict) -> tuple[str, bytes]:
    kind, at = message["kind"], message.get("timestamp") or now_ms()
    if kind == "death":
        payload = tahu.getNodeDeathPayload()
        if message.get("same_session"):
            payload.metrics[0].long_value -= 1  # the will of the session already born
        payload.timestamp = at
    elif kind == "nbirth":
        payload = tahu.getNodeBirthPayload()
        payload.timestamp = at
        tahu.addMetric(payload, "Node Control/Rebirth", None, tahu.MetricDataType.Boolean, False, at)
    else:  # dbirth, ndata, ddata
        payload = tahu.getDdataPayload()
        payload.timestamp = at
    for metric in message.get("metrics", []):
        _add(tahu, packer, payload, metric, at, kind in ("nbirth", "dbirth") or message.get("with_datatype", False))
    return kind, payload.SerializeToString()


def _edge(tahu: Any, packer: Any, url: str, group: str, node: str, replies: Any) -> None:
    import paho.mqtt.client as mqtt

    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tahu-{group}-{node}")
    connected_at = now_ms()
    _, will = _build(tahu, packer, {"kind": "death", "timestamp": connected_at})  # bumps Tahu's bdSeq
    client.will_set(f"spBv1.0/{group}/NDEATH/{node}", will, qos=1, retain=False)
    client.connect(host, int(port))
    client.loop_start()
    print(json.dumps({"connected_at": connected_at}), flush=True, file=replies)
    topics = {"nbirth": "NBIRTH", "ndata": "NDATA", "dbirth": "DBIRTH", "ddata": "DDATA"}
    for line in sys.stdin:
        message = json.loads(line)
        if message["kind"] == "die":  # lose the connection without DISCONNECT: the broker sends the will
            client.socket().shutdown(socket.SHUT_RDWR)
            client.loop_stop()
            print(json.dumps({"died": now_ms()}), flush=True, file=replies)
            continue
        kind, payload = _build(tahu, packer, message)
        device = message.get("device")
        topic = f"spBv1.0/{group}/{topics[kind]}/{node}" + (f"/{device}" if device else "")
        client.publish(topic, payload, qos=0).wait_for_publish(5)
        print(json.dumps({"topic": topic, "payload": payload.hex()}), flush=True, file=replies)


def main() -> None:
    replies, sys.stdout = sys.stdout, sys.stderr  # Tahu prints debug lines; the replies get stdout alone
    from sparkplub_b_packets.core import array_packer as packer
    from sparkplub_b_packets.core import sparkplug_b as tahu

    if sys.argv[1] == "encode":
        print(json.dumps([_build(tahu, packer, m)[1].hex() for m in json.load(sys.stdin)]), file=replies)
    else:
        _edge(tahu, packer, *sys.argv[2:5], replies)


# --- the test side ------------------------------------------------------------------------------------------


def encode(messages: list[dict]) -> list[bytes]:
    """Payloads Tahu builds for `messages` (one process: Tahu's seq and bdSeq counters run through them)."""
    done = subprocess.run([sys.executable, __file__, "encode"], input=json.dumps(messages), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, timeout=60, check=True)
    return [bytes.fromhex(h) for h in json.loads(done.stdout)]


class TahuEdgeNode:
    """The edge node process, driven from a test."""

    def __init__(self, mqtt_url: str, group: str, node: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "edge", mqtt_url, group, node],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     cwd=Path(__file__).parent)
        self.connected_at = self._reply()["connected_at"]

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Tahu edge node exited ({self.proc.poll()})")
        return json.loads(line)

    def send(self, kind: str, metrics: list | None = None, **extra: Any) -> bytes:
        self.proc.stdin.write(json.dumps({"kind": kind, "metrics": metrics or [], **extra}) + "\n")
        self.proc.stdin.flush()
        return bytes.fromhex(self._reply()["payload"])

    def birth(self, metrics: list) -> bytes:
        return self.send("nbirth", metrics)

    def device_birth(self, device: str, metrics: list) -> bytes:
        return self.send("dbirth", metrics, device=device)

    def data(self, metrics: list, device: str | None = None) -> bytes:
        """NDATA (DDATA with a device): (alias, datatype, value) each, sent without the datatype."""
        return self.send("ddata" if device else "ndata", [[None, *m] for m in metrics], device=device)

    def die(self) -> None:
        self.proc.stdin.write(json.dumps({"kind": "die"}) + "\n")
        self.proc.stdin.flush()
        self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    main()
