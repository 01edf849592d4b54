"""SFTP poller against a real asyncssh SFTP server (the simulator's), into real Kafka."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polling
import pytest
import yaml
from ingest_helpers import PASSWORD, RunningService, SftpServer, TopicReader

from services.ingest.pipeline import DEAD_LETTERS, READINGS, IngestPipeline
from services.ingest.service import IngestService
from services.ingest.sftp_poller import SftpPoller, load_sources
from simulator.sftp import CSV_COLUMNS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def sftp_server(tmp_path: Path):
    server = SftpServer(tmp_path / "plc")
    (server.root / "reports").mkdir(parents=True)
    yield server
    server.close()


def sources_file(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": [{
        "name": "packaging", "host": "127.0.0.1", "port": port, "username": "lineguard",
        "password_env": "LINEGUARD_SFTP_PASSWORD", "directory": "/reports", "done_directory": "/done",
        "device": "line1-packaging", "timestamp": {"column": "ended_at", "format": "iso", "timezone": "Europe/Berlin"},
        "metrics": [{"column": "packs", "type": "int", "unit": "C62"},
                    {"column": "rejects", "type": "int", "unit": "C62"},
                    {"column": "mean_pack_weight_g", "metric": "mean_pack_weight", "type": "float", "unit": "g"}],
        "attributes": ["batch_id"]}]}))
    return path


def write_report(directory: Path, batch: int, rows: list[str] | None = None) -> Path:
    lines = [",".join(CSV_COLUMNS)]
    lines += rows if rows is not None else [
        f"line1-B{batch:05d},2026-11-29T12:{batch % 60:02d}:00.000Z,2026-11-29T12:{batch % 60:02d}:59.000Z,"
        f"{30 + batch % 5},{batch % 3},252.{batch % 100:02d}"]
    path = directory / f"packaging_line1-B{batch:05d}.csv"
    temporary = directory / f".{path.name}.part"
    temporary.write_text("\r\n".join(lines) + "\r\n")
    os.replace(temporary, path)
    return path


def wait_for(predicate, timeout: float = 30.0) -> bool:
    return polling.wait_for(predicate, timeout)


def done_files(server: SftpServer) -> list[str]:
    done = server.root / "done"
    return sorted(p.name for p in done.iterdir()) if done.exists() else []


def test_every_row_arrives_once_files_move_to_done_and_bad_rows_are_dead_lettered(
        ingest_settings, sftp_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LINEGUARD_SFTP_PASSWORD", PASSWORD)
    reports = sftp_server.root / "reports"
    for batch in range(1, 6):
        write_report(reports, batch)
    write_report(reports, 6, ["line1-B00006,2026-11-29T12:06:00Z,2026-11-29T12:06:59Z,31,1,251.5",
                              "line1-B00007,2026-11-29T12:07:00Z,not a time,31,1,251.5",
                              "line1-B00008,2026-11-29T12:08:00Z,2026-11-29T12:08:59Z,many,1,251.5",
                              "short,row"])
    (reports / ".packaging_line1-B00099.csv.part").write_text("batch_id\r\n")  # still being written
    (reports / "notes.txt").write_text("not a report")
    ledger = tmp_path / "ledger.jsonl"
    settings = ingest_settings(sftp_sources_file=sources_file(tmp_path, sftp_server.port), sftp_ledger=ledger,
                               sftp_poll_interval_s=0.2, sftp_quiet_period_s=0.3)
    running = RunningService(IngestService(settings))
    try:
        assert wait_for(lambda: len(done_files(sftp_server)) == 6)
    finally:
        running.stop()
    assert sorted(p.name for p in reports.iterdir()) == [".packaging_line1-B00099.csv.part", "notes.txt"]
    readings = TopicReader(settings, READINGS).read_until(18)
    assert len(readings) == 18 and len({r.value["id"] for r in readings}) == 18
    first = next(r.value for r in readings if r.value["attributes"]["batch_id"] == "line1-B00001")
    assert first["device"] == "line1-packaging" and first["source"]["protocol"] == "sftp"
    assert first["source"]["address"] == "/reports/packaging_line1-B00001.csv"
    assert first["source"]["position"] == "1"
    assert first["observed_at"] == 1795953719000  # 12:01:59Z
    weights = {r.value["value"] for r in readings if r.value["metric"] == "mean_pack_weight"}
    assert 251.5 in weights
    letters = TopicReader(settings, DEAD_LETTERS, decode=False).read_until(3)
    reasons = sorted(d.headers["__connect.errors.exception.message"] for d in letters)
    assert len(reasons) == 3
    assert "row 2: ended_at" in reasons[0] and "row 3: packs" in reasons[1] and "row 4: row" in reasons[2]
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert len(entries) == 6 and all(len(e["sha256"]) == 64 for e in entries)


def test_growing_files_wait_and_a_kafka_outage_leaves_files_in_place(
        ingest_settings, pausable_kafka, sftp_server, tmp_path):
    settings = ingest_settings(kafka_bootstrap=pausable_kafka.bootstrap)
    pipeline = IngestPipeline(settings, **{"message.timeout.ms": 1500, "request.timeout.ms": 1000})
    poller = SftpPoller(pipeline, load_sources(sources_file(tmp_path, sftp_server.port)), tmp_path / "ledger.jsonl",
                        delivery_timeout_s=2.0, environ={"LINEGUARD_SFTP_PASSWORD": PASSWORD}, quiet_period_s=0)
    reports = sftp_server.root / "reports"
    source = poller.sources[0]

    async def scenario() -> None:
        growing = write_report(reports, 1)
        assert await poller.poll(source) == 0  # first sight: wait one interval
        with growing.open("a") as handle:  # the PLC is still writing
            handle.write("line1-B00002,2026-11-29T12:02:00Z,2026-11-29T12:02:59Z,30,0,250.0\r\n")
        assert await poller.poll(source) == 0
        pausable_kafka.pause()
        try:
            assert await poller.poll(source) == 0  # stable now, but Kafka cannot take it
            assert growing.exists() and [e["state"] for e in poller.ledger.entries] == ["producing"]
        finally:
            pausable_kafka.resume()
        for _ in range(10):
            if await poller.poll(source) == 1:
                break
            await asyncio.sleep(0.5)
        assert not growing.exists() and [e["state"] for e in poller.ledger.entries] == ["done"]
        await poller._drop_connection(source)

    try:
        asyncio.run(scenario())
    finally:
        pipeline.close()
    readings = TopicReader(settings, READINGS).read_until(6)
    assert len({r.value["id"] for r in readings}) == 6  # both rows, 3 metrics each, none lost


def test_sigkill_and_restart_ingest_no_file_twice(ingest_settings, sftp_server, tmp_path):
    reports = sftp_server.root / "reports"
    files = 40
    for batch in range(1, files + 1):
        write_report(reports, batch)
    ledger = tmp_path / "ledger.jsonl"
    settings = ingest_settings()
    env = {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix, "LINEGUARD_HTTP_PORT": "0",
           "LINEGUARD_SFTP_SOURCES_FILE": str(sources_file(tmp_path, sftp_server.port)),
           "LINEGUARD_SFTP_LEDGER": str(ledger), "LINEGUARD_SFTP_POLL_INTERVAL_S": "0.1",
           "LINEGUARD_SFTP_QUIET_PERIOD_S": "0.2",
           "LINEGUARD_SFTP_PASSWORD": PASSWORD, "LINEGUARD_SPARKPLUG_ENABLED": "false", "LINEGUARD_LOG_LEVEL": "WARNING"}
    env.pop("LINEGUARD_MQTT_URL", None)
    first = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(done_files(sftp_server)) >= 8, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = len(done_files(sftp_server))
        assert killed_at < files, "ingest finished before it could be killed"
        second = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: len(done_files(sftp_server)) == files, timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0
    finally:
        if first.poll() is None:
            first.kill()
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert sorted(e["name"] for e in entries) == sorted(done_files(sftp_server))  # each file once in the ledger
    readings = TopicReader(settings, READINGS).read_until(files * 3, settle=1.0)
    ids = [r.value["id"] for r in readings]
    assert len(set(ids)) == files * 3
    assert len(ids) == files * 3, f"{len(ids) - len(set(ids))} records produced twice"


class Killed(BaseException):
    """Stands for SIGKILL at the worst moment: after Kafka acknowledged the records, before the ledger said so."""


def test_a_crash_after_delivery_and_before_the_ledger_write_produces_nothing_twice(
        ingest_settings, sftp_server, tmp_path, monkeypatch):
    settings = ingest_settings()
    reports = sftp_server.root / "reports"
    write_report(reports, 1, [f"line1-B{i:05d},2026-11-29T12:00:00Z,2026-11-29T12:0{i % 10}:59Z,30,{i},250.0"
                              for i in range(20)])
    sources = load_sources(sources_file(tmp_path, sftp_server.port))
    environ = {"LINEGUARD_SFTP_PASSWORD": PASSWORD}
    ledger_path = tmp_path / "ledger.jsonl"

    async def run_until_killed() -> None:
        pipeline = IngestPipeline(settings)
        poller = SftpPoller(pipeline, sources, ledger_path, environ=environ, quiet_period_s=0)
        original = poller.ledger.put

        def put(entry: dict) -> None:
            if entry["state"] == "done":
                raise Killed
            original(entry)

        monkeypatch.setattr(poller.ledger, "put", put)
        try:
            await poller.poll(sources[0])
            with pytest.raises(Killed):
                await poller.poll(sources[0])
        finally:
            pipeline.close()
            await poller._drop_connection(sources[0])

    async def restart() -> None:
        pipeline = IngestPipeline(settings)
        poller = SftpPoller(pipeline, sources, ledger_path, environ=environ, quiet_period_s=0)
        try:
            assert await poller.poll(sources[0]) == 0  # seen, waits one interval
            assert await poller.poll(sources[0]) == 1
        finally:
            pipeline.close()
            await poller._drop_connection(sources[0])

    asyncio.run(run_until_killed())
    assert (reports / "packaging_line1-B00001.csv").exists()
    assert json.loads(ledger_path.read_text())["state"] == "producing"
    asyncio.run(restart())
    assert not (reports / "packaging_line1-B00001.csv").exists()
    assert json.loads(ledger_path.read_text())["state"] == "done"
    readings = TopicReader(settings, READINGS).read_until(60, settle=1.0)
    assert len(readings) == 60 and len({r.value["id"] for r in readings}) == 60
