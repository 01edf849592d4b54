"""`lineguard up --workers 2 --lines 3` end to end: the scaling path Kubernetes replicas take, on one machine.

Two processes each of the normalizer and the advisor (one consumer group per service), a plant of three lines
generated from the reference line, the simulator running all three (each with its own camera) on a fast clock.
It must show: recommendations for every line; both advisor workers owning line partitions (their own /readyz and
/metrics); line3's camera images judged by vision and joined by the normalizer on line.inspections.v1; and a
clean stop (exit 0, every process it started gone, none killed for outliving its grace period).
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from lineguard_up import LineguardUp
from metrics_text import by_partition, scrape, total
from polling import wait_for

from lineguard.embedded import SERVICE_PORTS, SIMULATOR_PORT, WORKER_PORT_STEP, free_port, port_open
from lineguard.kafka import read_topic
from lineguard.partitioning import partition_for
from lineguard.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
LINES = ("line1", "line2", "line3")
SPEED = 30
ADVISORS = [SERVICE_PORTS["advisor"] + WORKER_PORT_STEP * i for i in range(2)]
NORMALIZERS = [SERVICE_PORTS["normalizer"] + WORKER_PORT_STEP * i for i in range(2)]


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children in their own sessions included), from /proc."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def owned(port: int) -> set[int]:
    samples = scrape(port, missing_ok=True).get("lineguard_advisor_partitions_owned", {})
    return {p for p, v in by_partition(samples).items() if v}


def test_up_with_two_workers_and_three_lines(tmp_path: Path) -> None:
    ports = [*SERVICE_PORTS.values(), *ADVISORS, *NORMALIZERS, *(SIMULATOR_PORT + i for i in range(len(LINES)))]
    busy = [p for p in ports if port_open("127.0.0.1", p)]
    assert not busy, f"ports {busy} are in use: is another `lineguard up` running?"
    kafka_port, mqtt_port = free_port(), free_port()
    up = LineguardUp(["--kafka-port", str(kafka_port), "--mqtt-port", str(mqtt_port), "--workers", "2",
                      "--lines", str(len(LINES)), "--speed", str(SPEED), "--ready-timeout", "150"],
                     tmp_path / "up.log",
                     # the analysis proposes at once (the local model's text is not what this is about);
                     # 2-minute windows close every 4 s at this speed
                     {"LINEGUARD_LOG_LEVEL": "WARNING", "LINEGUARD_MODEL_ALIAS": "analysis-only",
                      "LINEGUARD_WINDOW_S": "120"})
    proc, log_path = up.proc, up.log_path
    started = time.monotonic()
    children: set[int] = set()
    settings = Settings.from_env(environ={"LINEGUARD_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}"})
    try:
        assert up.wait_ready(180), up.tail()
        ready_s = time.monotonic() - started
        children = descendants(proc.pid)
        # Both advisor workers are up, each with line partitions of its own, all of them covered.
        assert all(ready(port) for port in ADVISORS + NORMALIZERS)
        assert wait_for(lambda: all(owned(p) for p in ADVISORS) and not owned(ADVISORS[0]) & owned(ADVISORS[1])
                        and owned(ADVISORS[0]) | owned(ADVISORS[1]) == {0, 1, 2}, 30, 0.5), \
            [owned(p) for p in ADVISORS]

        seen: dict[str, set[str]] = {}

        def lines_on(topic: str) -> set[str]:
            seen[topic] = {r.value["line_id"] for r in read_topic(settings, topic, timeout_s=30)}
            return seen[topic]

        assert wait_for(lambda: set(LINES) <= lines_on("recommendations.v1"), 120, 2.0), \
            (seen, log_path.read_text()[-3000:])
        recommended_s = time.monotonic() - started
        # line3's camera: its images were judged by vision and joined to line3's asset graph by a normalizer
        assert wait_for(lambda: "line3" in lines_on("line.inspections.v1"), 60, 2.0), seen
        # Each advisor worker folded records exactly when it owns a partition one of the lines hashes to (3 lines
        # over 3 partitions need not cover them all: line1 and line3 share one); both normalizers had devices.
        busy = {partition_for(line, 3) for line in LINES}
        for port in ADVISORS:
            folded = total(scrape(port), "lineguard_advisor_records_folded_total")
            assert (folded > 0) == bool(owned(port) & busy), (port, owned(port), busy, folded)
        assert all(total(scrape(p), "lineguard_normalizer_records_in_total") > 0 for p in NORMALIZERS)
        print(f"\nready in {ready_s:.0f} s, recommendations for {len(LINES)} lines at {recommended_s:.0f} s, "
              f"{len(children)} processes")
    finally:
        code = up.stop(90, kill_also=lambda: descendants(proc.pid))
    text = log_path.read_text()
    assert code == 0, text[-4000:]
    assert "did not stop within" not in text, text[-4000:]  # none needed SIGKILL
    assert children and not [pid for pid in children if alive(pid)], "processes left behind"
    assert "stopped; no process left behind" in text
