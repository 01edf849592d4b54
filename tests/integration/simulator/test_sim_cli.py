"""`lineguard-sim run` end to end as a process: a finite run, its logs, its ground truth and its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.ground_truth import read_ground_truth

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "LINEGUARD_CONTROL_API_TOKEN": "t"})


def test_finite_run_writes_json_logs_ground_truth_and_batch_files(tmp_path):
    result = run_cli("run", "--scenario", "oven_zone_overheat", "--speed", "0", "--duration", "900", "--seed", "3",
                     "--no-mqtt", "--no-sparkplug", "--api-port", "0", "--sftp-port", "-1",
                     "--sftp-dir", str(tmp_path / "sftp"), "--truth", str(tmp_path / "truth.jsonl"),
                     "--start", "2026-01-05T06:00:00+00:00")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    logs = [json.loads(line) for line in result.stdout.splitlines()]  # every line is JSON
    events = [entry["event"] for entry in logs]
    assert events[0] == "simulation_started" and events[-1] == "simulation_stopped"
    assert "fault_started" in events and events.count("progress") == 15
    last = [e for e in logs if e["event"] == "progress"][-1]
    assert last["defect_rates"]["burnt"] > 0.5 and last["active_faults"] == ["oven_heat_offset"]
    truth = read_ground_truth(tmp_path / "truth.jsonl")
    assert truth[0]["kind"] == "run_started" and truth[0]["scenario"] == "oven_zone_overheat"
    assert truth[0]["start"] == "2026-01-05T06:00:00.000Z" and truth[-1]["kind"] == "run_ended"
    assert [r["fault"]["type"] for r in truth if r["kind"] == "fault_started"] == ["oven_heat_offset"]
    assert len(list((tmp_path / "sftp" / "reports").glob("packaging_*.csv"))) == 3


def test_unknown_scenario_fails_with_a_clear_message(tmp_path):
    result = run_cli("run", "--scenario", "meteor_strike", "--no-mqtt", "--no-sparkplug", "--no-sftp",
                     "--truth", str(tmp_path / "t.jsonl"))
    assert result.returncode == 2
    failure = json.loads(result.stdout.strip().splitlines()[-1])
    assert failure["event"] == "simulation_failed" and "known scenarios" in failure["error"]
    assert "oven_zone_overheat" in failure["error"]


def test_scenarios_command_lists_expected_actions():
    result = run_cli("scenarios")
    listed = {entry["name"]: entry for entry in map(json.loads, result.stdout.splitlines())}
    assert listed["oven_zone_overheat"]["setpoint_change"] == {
        "machine": "oven", "parameter": "zone2_setpoint", "direction": "decrease", "value": 150.0}
