"""`lineguard` against real brokers: `up` brings the stack up and Ctrl-C leaves nothing; tail and produce."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loop_helpers import raw_reading

from lineguard.catalog import load_catalog
from lineguard.embedded import free_port

pytestmark = pytest.mark.integration
LINEGUARD = [sys.executable, "-m", "lineguard.cli"]


def cli(settings, *args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix}
    return subprocess.run([*LINEGUARD, *args], input=stdin, capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_topics_produce_and_tail(make_settings):
    settings = make_settings()
    created = cli(settings, "topics", "create")
    assert created.returncode == 0, created.stderr
    total = len(load_catalog().topics)
    assert f"{total} created, 0 already there" in created.stdout
    again = cli(settings, "topics", "create")
    assert f"0 created, {total} already there" in again.stdout
    listing = cli(settings, "topics", "list")
    assert "MISSING" not in listing.stdout and "raw.telemetry.v1" in listing.stdout

    lines = "\n".join(json.dumps(raw_reading(i)) for i in range(3)) + "\n"
    produced = cli(settings, "produce", "raw.telemetry.v1", stdin=lines)
    assert produced.returncode == 0, produced.stderr
    assert f"produced 3 record(s) to {settings.topic_prefix}raw.telemetry.v1" in produced.stderr

    tail = cli(settings, "tail", "raw.telemetry.v1", "--from-beginning", "--max", "3", "--meta")
    assert tail.returncode == 0, tail.stderr
    rows = [json.loads(line) for line in tail.stdout.splitlines()]
    assert sorted(r["value"]["id"] for r in rows) == ["r0", "r1", "r2"]
    assert {r["key"] for r in rows} == {"line1-mixer"}  # the catalog's key field


def test_produce_refuses_records_that_do_not_fit_with_the_field_path(make_settings):
    settings = make_settings()
    cli(settings, "topics", "create")
    bad = raw_reading(1)
    bad["source"]["address"] = 42
    stdin = json.dumps(raw_reading(0)) + "\n" + json.dumps(bad) + "\n{not json\n"
    result = cli(settings, "produce", "raw.telemetry.v1", stdin=stdin)
    assert result.returncode == 1
    assert "line 2: record does not fit schema raw.telemetry.v1: Source.address: expected string, got 42 (int)" \
        in result.stderr
    assert "line 3: not JSON" in result.stderr
    assert "nothing produced" in result.stderr
    tail = cli(settings, "tail", "raw.telemetry.v1", "--from-beginning", "--timeout", "2")
    assert tail.stdout == ""  # the good line was not produced either: all or nothing


def test_unknown_topic_is_refused_clearly(make_settings):
    settings = make_settings()
    result = cli(settings, "tail", "raw.telemetri.v1")
    assert result.returncode == 2
    assert "unknown topic 'raw.telemetri.v1'; known: raw.telemetry.v1" in result.stderr


def _pids_in_session(session_leader: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(pid) for pid, sid in (line.split() for line in out.splitlines()) if int(sid) == session_leader]


def test_up_is_ready_within_30_seconds_and_ctrl_c_leaves_no_process(tmp_path):
    kafka_port, mqtt_port = free_port(), free_port()
    proc = subprocess.Popen([*LINEGUARD, "up", "--kafka-port", str(kafka_port), "--mqtt-port", str(mqtt_port),
                             "--speed", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    started = time.monotonic()
    lines: list[str] = []
    children: set[int] = set()
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("lineguard | ready in"):
                break
            assert time.monotonic() - started < 45, "".join(lines)
        assert any(line.startswith("lineguard | ready in") for line in lines), "".join(lines)
        assert time.monotonic() - started < 30, "".join(lines)
        total = len(load_catalog().topics)
        assert any(f"topics: {total} created" in line for line in lines), "".join(lines)
        children = set(_pids_in_session(proc.pid)) | {
            int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                           text=True).stdout.split()}
        assert len(children) >= 2  # the supervisor and at least the broker
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "no process left behind" in rest
    time.sleep(0.5)
    alive = [pid for pid in children if os.path.exists(f"/proc/{pid}") and
             "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    assert alive == []


def test_a_killed_supervisor_takes_its_children_with_it():
    kafka_port = free_port()
    proc = subprocess.Popen([*LINEGUARD, "up", "--kafka-port", str(kafka_port), "--no-simulator"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("lineguard | ready in"):
                break
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                   text=True).stdout.split()]
        assert children, "the broker (at least) runs as a child"
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait()
    # Children get SIGTERM from the kernel and shut down gracefully (flush, commit): allow the 30 s grace period
    # a pod would get, not a few seconds.
    deadline = time.monotonic() + 45
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in children if os.path.exists(f"/proc/{pid}") and
                 "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    assert alive == []
