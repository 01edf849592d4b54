"""Ingest benchmark: MQTT readings acknowledged into Kafka per second, against the same broker and MQTT client
delivering without Kafka in the path, both measured in the same run.

    .venv/bin/python bench/bench_ingest.py [--readings 60000] [--batch 20]

Measured twice: with one reading per MQTT message (the simulator's emitter), and with `--batch` readings per
message (a gateway's batch payload, `{"readings": [...]}`). Both sides start from the same state: N readings are queued at Mosquitto in the client's persistent session
while it is offline; then the client connects and the clock runs until it has acknowledged all N.
- bare:   a paho client (manual ack, QoS 1) that acknowledges each message on receipt (the broker/client ceiling).
- ingest: the ingest MQTT adapter: parse, map, Avro-encode, produce to raw.telemetry.v1 on a local Tansu broker,
          and acknowledge each message only after Kafka confirmed its record.
Budget (DESIGN.md): 20,000 readings/s acknowledged per ingest process.

Also measured: LoRaWAN webhook uplinks (ChirpStack v4 bodies, 4 readings each) per second through the webhook
spool: answered 200 once on disk (fsynced), with 16 requests in flight from an aiohttp client in the same
process, and per second into Kafka (until the spool has drained).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt  # noqa: E402

from lineguard.catalog import admin_client, bootstrap_topics, load_catalog, wait_for_broker  # noqa: E402
from lineguard.embedded import free_port, mosquitto_binary, start_listening, tansu_command  # noqa: E402
from services.ingest.mqtt_adapter import BrokerAddress, MqttAdapter, make_client  # noqa: E402
from services.ingest.pipeline import IngestPipeline  # noqa: E402
from services.ingest.service import IngestService  # noqa: E402
from services.ingest.settings import IngestSettings  # noqa: E402

TOPIC_FILTER = "plant/+/+/+"
BUDGET = 20_000


def start(argv: list[str], port: int) -> subprocess.Popen:
    return start_listening(argv, port, argv[0])


def messages(n: int, run: str, per_message: int = 1) -> list[tuple[str, bytes]]:
    """`n` readings: one per message in the simulator's shape, or `per_message` per message as a batch
    `{"device", "ts", "readings": [{"metric", "value", "unit"}, ...]}` (what a gateway sends)."""
    machines = ["mixer", "depositor", "cooling-conveyor"]
    metrics = ["temperature", "torque", "speed"]
    out = []
    if per_message == 1:
        for i in range(n):
            machine, metric = machines[i % 3], metrics[(i // 3) % 3]
            body = {"device": f"line1-{machine}", "line": "line1", "machine": machine, "metric": metric,
                    "value": 40.0 + (i % 100) / 10, "unit": "NU", "ts": 1_790_000_000_000 + i, "seq": i + 1,
                    "run": run}
            out.append((f"plant/line1/{machine}/{metric}", json.dumps(body, separators=(",", ":")).encode()))
        return out
    for m in range(n // per_message):
        machine = machines[m % 3]
        body = {"device": f"line1-{machine}", "ts": 1_790_000_000_000 + m, "run": run, "readings": [
            {"metric": f"{metrics[k % 3]}{k // 3}", "value": 40.0 + (m % 100) / 10 + k, "unit": "NU"}
            for k in range(per_message)]}
        out.append((f"plant/line1/{machine}/batch", json.dumps(body, separators=(",", ":")).encode()))
    return out


def register_session(address: BrokerAddress, client_id: str) -> None:
    """Create the persistent session and its subscription, then go offline: the broker queues from now on."""
    client = make_client(address, client_id, clean_session=False, manual_ack=True)
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, *a: c.subscribe(TOPIC_FILTER, qos=1)
    client.connect(address.host, address.port)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("could not subscribe")
    client.disconnect()
    client.loop_stop()


def preload(address: BrokerAddress, batch: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.monotonic_ns()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(address.host, address.port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in batch]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def bench_bare(address: BrokerAddress, n_readings: int, per_message: int) -> tuple[float, float]:
    """Readings per second through the bare client (messages/s x readings per message), CPU s per reading."""
    client_id = f"bench-bare-{per_message}"
    register_session(address, client_id)
    batch = messages(n_readings, "bare", per_message)
    n = len(batch)
    preload(address, batch)
    client = make_client(address, client_id, clean_session=False, manual_ack=True)
    count = 0
    done = threading.Event()
    started = 0.0

    def on_message(c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal count
        json.loads(message.payload)  # the least a consumer must do with a reading
        c.ack(message.mid, message.qos)  # (stock paho ack: one PUBACK, as a client acking on receipt would)
        count += 1
        if count == n:
            done.set()

    client.on_message = on_message
    started, cpu = time.perf_counter(), time.process_time()
    client.connect(address.host, address.port)
    client.loop_start()
    if not done.wait(300):
        raise RuntimeError(f"bare client received {count} of {n}")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    client.disconnect()
    client.loop_stop()
    return n * per_message / elapsed, cpu / (n * per_message)


def bench_ingest(address: BrokerAddress, url: str, bootstrap: str, n_readings: int,
                 per_message: int) -> tuple[float, float, float]:
    """Readings per second acknowledged after Kafka delivery, mean ack lag per message, CPU s per reading."""
    prefix = f"bench{per_message}."
    settings = IngestSettings.from_env(environ={}, kafka_bootstrap=bootstrap, topic_prefix=prefix,
                                       log_level="WARNING")
    bootstrap_topics(admin_client(bootstrap), load_catalog(settings.schemas_dir), settings.topic_prefix)
    client_id = f"bench-ingest-{per_message}"
    register_session(address, client_id)
    # Warm the producer (metadata, idempotent producer id) before the clock starts.
    pipeline = IngestPipeline(settings)
    batch = messages(n_readings, "ingest", per_message)
    n = len(batch)
    preload(address, batch)
    adapter = MqttAdapter(pipeline, url, [TOPIC_FILTER], client_id)
    started, cpu = time.perf_counter(), time.process_time()
    adapter.start()
    deadline = time.monotonic() + 300
    while adapter.stats["acknowledged"] < n and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    acknowledged = adapter.stats["acknowledged"]
    lag = pipeline.metrics.ack_lag.labels("mqtt")
    lag_sum = lag._sum.get()
    adapter.stop()
    pipeline.close()
    if acknowledged < n:
        raise RuntimeError(f"ingest acknowledged {acknowledged} of {n}")
    produced = pipeline.metrics.produced.labels("mqtt", "raw.telemetry.v1")._value.get()
    if produced < n * per_message:
        raise RuntimeError(f"Kafka acknowledged {produced} of {n * per_message} readings")
    return n * per_message / elapsed, lag_sum / n, cpu / (n * per_message)


def bench_webhooks(bootstrap: str, n_uplinks: int, work: Path,
                   concurrency: int = 16) -> tuple[float, float, float, float]:
    """(uplinks/s answered, p99 answer latency in s, uplinks/s into Kafka, CPU s per uplink, client included)
    through the webhook spool."""
    import aiohttp

    from lineguard.lorawan import decode_environment, encode_environment
    from simulator.lorawan_webhooks import LoRaWANWebhookEmitter

    settings = IngestSettings.from_env(environ={}, kafka_bootstrap=bootstrap, topic_prefix="benchhook.",
                                       log_level="WARNING", chirpstack_secret="bench", http_port=0,
                                       webhook_spool_dir=work / "spool", sparkplug_enabled=False)
    bootstrap_topics(admin_client(bootstrap), load_catalog(settings.schemas_dir), settings.topic_prefix)
    emitter = LoRaWANWebhookEmitter()
    emitter.dev_eui = "a84041000181c061"
    bodies = []
    for i in range(n_uplinks):
        emitter.f_cnt = i
        payload = encode_environment(20.0 + i % 50 / 10, 45.0, 3600)
        radio = {"id": f"{i:08x}-6f1c-4000-8000-1f0e00000000", "uplink_id": i, "rssi": -70, "snr": 7.5,
                 "channel": 1, "time": "2026-11-29T12:00:00.000Z", "session_key_id": "AXBS"}
        bodies.append(json.dumps(emitter.chirpstack_body(payload, decode_environment(payload), radio)).encode())
    service = IngestService(settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(service.run()), daemon=True)
    thread.start()
    while service.port is None:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{service.port}/lorawan/chirpstack?event=up"
    latencies: list[float] = []

    async def post_all() -> None:
        queue = iter(bodies)
        async with aiohttp.ClientSession(headers={"X-Lineguard-Secret": "bench",
                                                  "Content-Type": "application/json"}) as session:
            async def worker() -> None:
                for body in queue:
                    began = time.perf_counter()
                    async with session.post(url, data=body) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"webhook answered {response.status}")
                    latencies.append(time.perf_counter() - began)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    produced = service.pipeline.metrics.produced.labels("chirpstack", "raw.telemetry.v1")
    before = produced._value.get()
    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run(post_all())
    answered = time.perf_counter() - started
    deadline = time.monotonic() + 300
    while produced._value.get() - before < n_uplinks * 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    delivered, cpu = time.perf_counter() - started, time.process_time() - cpu
    service.request_stop()
    thread.join(30)
    if produced._value.get() - before < n_uplinks * 4:
        raise RuntimeError("the spool did not drain into Kafka")
    latencies.sort()
    return n_uplinks / answered, latencies[int(len(latencies) * 0.99) - 1], n_uplinks / delivered, cpu / n_uplinks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=60000, help="readings per measurement")
    parser.add_argument("--batch", type=int, default=20, help="readings per message in the batched measurement")
    parser.add_argument("--uplinks", type=int, default=4000, help="webhook uplinks through the spool")
    parser.add_argument("--webhooks-only", action="store_true", help="measure only the webhook spool")
    args = parser.parse_args()
    sys.setswitchinterval(0.001)  # as services/ingest/__main__.py does
    if mosquitto_binary() is None:
        print("mosquitto is not installed")
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    mqtt_port, kafka_port = free_port(), free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 1000\nmax_queued_messages 0\nmax_queued_bytes 0\n")
    procs = [start([mosquitto_binary(), "-c", str(conf)], mqtt_port),
             start(tansu_command(kafka_port), kafka_port)]
    try:
        bootstrap = f"127.0.0.1:{kafka_port}"
        wait_for_broker(bootstrap, timeout=20)
        url = f"mqtt://127.0.0.1:{mqtt_port}"
        address = BrokerAddress.parse(url)
        results = []
        for per_message in () if args.webhooks_only else (1, args.batch):
            bare, bare_cpu = bench_bare(address, args.readings, per_message)
            ingest, mean_lag, ingest_cpu = bench_ingest(address, url, bootstrap, args.readings, per_message)
            results.append((per_message, bare, ingest, mean_lag, bare_cpu, ingest_cpu))
        hooks = bench_webhooks(bootstrap, args.uplinks, work)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
    load = os.getloadavg()[0]
    print(f"readings per measurement: {args.readings}; Mosquitto max_inflight_messages 1000; Tansu (memory); "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end")
    print(f"{'readings/message':>18} {'bare client':>14} {'ingest':>14} {'ratio':>7} {'mean ack lag':>13} "
          f"{'CPU/reading bare':>17} {'ingest':>9}  budget")
    for per_message, bare, ingest, mean_lag, bare_cpu, ingest_cpu in results:
        verdict = "met" if ingest >= BUDGET else "NOT met"
        print(f"{per_message:>18} {bare:>10,.0f} r/s {ingest:>10,.0f} r/s {ingest / bare:>7.2f} "
              f"{mean_lag * 1000:>10.1f} ms {bare_cpu * 1e6:>14.1f} µs {ingest_cpu * 1e6:>6.1f} µs  "
              f"{BUDGET:,} r/s {verdict}")
    print("ack lag: from receipt to PUBACK, averaged over the messages, while draining the whole backlog at once")
    print(f"webhook uplinks through the spool ({args.uplinks}, 4 readings each, 16 in flight): "
          f"{hooks[0]:,.0f} uplinks/s answered (on disk, p99 {hooks[1] * 1000:.1f} ms), "
          f"{hooks[2]:,.0f} uplinks/s into Kafka; CPU {hooks[3] * 1e6:,.0f} µs per uplink (client included)")
    print("CPU/reading: process CPU time (all threads) over the measurement, divided by the readings")
    if load > (os.cpu_count() or 1):
        print("note: the machine was busier than its CPU count; the rates above are lower than on an idle machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
