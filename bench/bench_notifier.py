"""Benchmark: a critical alarm raised at the line -> its notification on the operator console's live feed.

    .venv/bin/python bench/bench_notifier.py [--alarms 40] [--interval 0.25]

The embedded stack's alarm path, each part its own process as `lineguard up` starts it: Tansu, Mosquitto, ingest,
the normalizer and the notifier (the Faust worker). The alarms are published the way the simulator's MQTT emitter
publishes them (`plant/<line>/<machine>/alarms`, QoS 1, its JSON), each a new critical condition; a client holds
the console feed (`GET /v1/feed`, Server-Sent Events) open and takes the time each notification arrives.
Latency = feed event received - MQTT publish acknowledged (one clock, this process). Budget: p95 under 1 s.
The advisor, vision, actuator and console are not started: their work does not lie on this path, and the local
language model would take the 2 cores from it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from lineguard import topics  # noqa: E402
from lineguard.catalog import admin_client, bootstrap_topics, load_catalog, wait_for_broker  # noqa: E402
from lineguard.embedded import (  # noqa: E402
    Child,
    Supervisor,
    free_port,
    mosquitto_command,
    tansu_command,
)
from lineguard.kafka import Producer  # noqa: E402
from lineguard.settings import Settings, read_dotenv  # noqa: E402

FEED_TOKEN = "bench-feed"
RULES = """
defaults: {line_cap: 1000, line_cap_window_s: 60, dedup_window_s: 1, startup_grace_s: 0, recipient_cap: 100000}
channels: {console: {type: console}}
groups: {ops: {channels: [console]}}
rules: [{name: critical, match: {severities: [critical]}, notify: [ops]}, {name: rest, notify: [ops], digest: true}]
"""


class Quiet:
    """Supervisor output: keep only error lines of the children."""

    def write(self, text: str) -> None:
        if '"level":"error"' in text or '"level":"critical"' in text or "Traceback" in text:
            sys.stderr.write(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


async def read_feed(url: str, received: dict[str, float], stop: asyncio.Event, connected: threading.Event) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            url, headers={"Authorization": f"Bearer {FEED_TOKEN}"}, timeout=aiohttp.ClientTimeout(total=None)) as resp:
        assert resp.status == 200, resp.status
        connected.set()
        event = None
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "notification":
                title = json.loads(line[5:])["title"]
                for word in title.split():
                    if word.startswith("bench_overtemp_"):
                        received.setdefault(word.rstrip(":"), time.perf_counter())
            if stop.is_set():
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alarms", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between two alarms")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-notifier-"))
    rules = work / "rules.yaml"
    rules.write_text(RULES)
    kafka_port, mqtt_port, notifier_port = free_port(), free_port(), free_port()
    bootstrap = f"127.0.0.1:{kafka_port}"
    sup = Supervisor(Quiet(), color=False)
    try:
        sup.wait_ready(sup.start(Child("tansu", tansu_command(kafka_port), ready_port=kafka_port)), 30)
        wait_for_broker(bootstrap, timeout=30)
        bootstrap_topics(admin_client(bootstrap), load_catalog())
        command = mosquitto_command(mqtt_port, work)
        if command is None:
            print("mosquitto is not installed (make system-deps)")
            return 1
        sup.wait_ready(sup.start(Child("mosquitto", command, ready_port=mqtt_port)), 30)
        profile = {k: v for k, v in read_dotenv(ROOT / "embedded.env").items() if k not in os.environ}
        common = {**profile, "LINEGUARD_KAFKA_BOOTSTRAP": bootstrap, "LINEGUARD_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
                  "LINEGUARD_LOG_LEVEL": "WARNING", "LINEGUARD_TOPIC_PREFIX": ""}
        ports = {"ingest": free_port(), "normalizer": free_port(), "notifier": notifier_port}
        extra = {"notifier": {"LINEGUARD_NOTIFIER_RULES_FILE": str(rules), "LINEGUARD_NOTIFIER_FEED_TOKEN": FEED_TOKEN,
                              "LINEGUARD_NOTIFIER_PUBLIC_URL": f"http://127.0.0.1:{notifier_port}",
                              "LINEGUARD_NOTIFIER_WEBHOOK_URLS": ""},
                 "ingest": {"LINEGUARD_SFTP_SOURCES_FILE": ""}}
        children = []
        started = time.monotonic()
        for name, port in ports.items():
            env = {**common, "LINEGUARD_HTTP_PORT": str(port), "LINEGUARD_SERVICE_NAME": name, **extra.get(name, {})}
            children.append(sup.start(Child(name, [sys.executable, "-m", f"services.{name}"], env,
                                            ready_url=f"http://127.0.0.1:{port}/readyz")))
        for child in children:
            sup.wait_ready(child, 90)
        print(f"stack ready in {time.monotonic() - started:.1f} s: tansu, mosquitto, ingest, normalizer, notifier")
        return measure(args, bootstrap, mqtt_port, notifier_port)
    finally:
        sup.stop_all()


def measure(args: argparse.Namespace, bootstrap: str, mqtt_port: int, notifier_port: int) -> int:
    received: dict[str, float] = {}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    connected = threading.Event()
    feed = threading.Thread(target=lambda: loop.run_until_complete(
        read_feed(f"http://127.0.0.1:{notifier_port}/v1/feed", received, stop, connected)), daemon=True)
    feed.start()
    assert connected.wait(10), "the console feed did not answer"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-notifier")
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    run = int(time.time())
    sent: dict[str, float] = {}
    warmup = 3
    for i in range(-warmup, args.alarms):
        name = f"bench_overtemp_{run}_{i + warmup}"
        body = {"device": "line1-oven", "line": "line1", "machine": "oven", "alarm_id": f"line1-oven:{name}",
                "alarm": name, "state": "raise", "severity": "critical", "value": 262.0, "limit": 240.0,
                "message": f"{name}: zone 1 at 262 C",
                "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        info = client.publish("plant/line1/oven/alarms", json.dumps(body), qos=1)
        info.wait_for_publish(5)
        if i >= 0:
            sent[name] = time.perf_counter()
        time.sleep(args.interval)
    client.loop_stop()
    missing = report("critical alarm at the line (MQTT) -> console feed", sent, received, args, budget=True)
    # Side by side: the notifier's own share, alarms produced straight to line.alarms.v1.
    producer = Producer(Settings.from_env(environ={}, kafka_bootstrap=bootstrap, service_name="bench"))
    direct: dict[str, float] = {}
    for i in range(args.alarms):
        name = f"bench_overtemp_{run}_direct{i}"
        now = int(time.time() * 1000)
        producer.produce(topics.LINE_ALARMS, "line1", {
            "alarm_id": f"line1-oven:{name}", "line_id": "line1", "entity_id": "urn:ngsi-ld:Machine:line1-oven",
            "alarm_type": name, "severity": "critical", "state": "active", "raised_at": now, "cleared_at": None,
            "duration_ms": None, "raise_count": 1, "message": f"{name}: zone 1 at 262 C", "updated_at": now,
            "raw_id": name})
        producer.flush(5)
        direct[name] = time.perf_counter()
        time.sleep(args.interval)
    missing += report("line.alarms.v1 -> console feed (the notifier alone)", direct, received, args, budget=False)
    loop.call_soon_threadsafe(stop.set)
    return 0 if missing == 0 else 1


def report(what: str, sent: dict[str, float], received: dict[str, float], args: argparse.Namespace,
           budget: bool) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(n in received for n in sent):
        time.sleep(0.05)
    latencies = [received[n] - t for n, t in sent.items() if n in received]
    missing = len(sent) - len(latencies)
    if not latencies:
        print(f"{what}: no notification reached the console feed")
        return len(sent)
    p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
    verdict = f"   (budget: p95 < 1000 ms: {'met' if p95 < 1.0 else 'NOT met'})" if budget else ""
    print(f"{what}: {len(latencies)} alarms ({missing} missing), one every {args.interval} s")
    print(f"  p50 {p50 * 1000:.0f} ms   p95 {p95 * 1000:.0f} ms   max {max(latencies) * 1000:.0f} ms   "
          f"min {min(latencies) * 1000:.0f} ms{verdict}")
    return missing


if __name__ == "__main__":
    raise SystemExit(main())
