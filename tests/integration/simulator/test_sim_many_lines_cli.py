"""`lineguard-sim run --lines N`: N lines in one process, each with its own scenario, ground truth and reports."""

from __future__ import annotations

import json

import pytest
from test_sim_cli import run_cli

from simulator.ground_truth import read_ground_truth

pytestmark = pytest.mark.integration


def test_three_lines_each_with_its_own_fault_truth_and_batch_reports(tmp_path):
    result = run_cli("run", "--lines", "3", "--line-scenario", "line2=oven_zone_overheat", "--speed", "0",
                     "--duration", "600", "--no-mqtt", "--no-sparkplug", "--api-port", "0", "--sftp-port", "-1",
                     "--sftp-dir", str(tmp_path / "sftp"), "--truth", str(tmp_path / "truth.jsonl"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    logs = [json.loads(line) for line in result.stdout.splitlines()]
    started = {e["line"]: e["scenario"] for e in logs if e["event"] == "simulation_started"}
    assert started == {"line1": "normal_run", "line2": "oven_zone_overheat", "line3": "normal_run"}
    assert {e["line"] for e in logs if e["event"] == "simulation_stopped"} == {"line1", "line2", "line3"}
    faults = {}
    for line, name in (("line1", "truth.jsonl"), ("line2", "truth.line2.jsonl"), ("line3", "truth.line3.jsonl")):
        truth = read_ground_truth(tmp_path / name)
        assert truth[0]["line"] == line and truth[-1]["kind"] == "run_ended"
        faults[line] = [r["fault"]["type"] for r in truth if r["kind"] == "fault_started"]
    assert faults == {"line1": [], "line2": ["oven_heat_offset"], "line3": []}
    reports = sorted(p.name.split("_")[1].split("-")[0] for p in (tmp_path / "sftp" / "reports").glob("*.csv"))
    assert reports == ["line1", "line1", "line2", "line2", "line3", "line3"]
