"""The simulator and the normalizer agree on time at any --speed (issue 18).

The simulator stamps its readings with its own clock, which runs --speed times real time; the normalizer rejects a
reading observed more than LINEGUARD_MAX_CLOCK_SKEW_S (1 h) in the future of its receipt. At --speed 30 the
simulated clock is an hour ahead after about two minutes, and every reading after that used to be dead-lettered
(and the advisor then reported "sent no readings" for every machine). The embedded profile sets
LINEGUARD_MAX_CLOCK_RATE, so a device's clock may run faster than real time from its first reading.

The live test runs simulator, ingest and normalizer as `lineguard up` does (separate processes, the embedded
profile's clock setting, real Mosquitto and Tansu) at --speed 30 for 12 simulated minutes (24 s), starting the
simulated clock 58 minutes ahead (where a run at --speed 30 is after two minutes), so within seconds every
reading is more than an hour ahead of its receipt: none may be dead-lettered for clock skew.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from polling import wait_for

from lineguard.embedded import free_port
from lineguard.kafka import read_topic
from lineguard.plant import default_plant_path, load_plant
from lineguard.settings import read_dotenv
from services.normalizer.mapping import InvalidTimestampError, Normalizer

ROOT = Path(__file__).resolve().parents[2]
PROFILE = read_dotenv(ROOT / "embedded.env")
PLANT = load_plant(default_plant_path())
HOUR_MS = 3_600_000


def raw(i: int, observed_ms: int, received_ms: int) -> dict:
    return {"id": f"r{i}", "device": "line1-mixer", "metric": "torque", "value": 48.0, "unit": "NU",
            "observed_at": observed_ms, "received_at": received_ms,
            "source": {"protocol": "mqtt", "device": "line1-mixer", "address": "sim", "position": str(i),
                       "received_by": "test"}, "attributes": {}}


def test_a_fast_device_clock_is_accepted_only_at_the_rate_the_profile_allows() -> None:
    rate = float(PROFILE["LINEGUARD_MAX_CLOCK_RATE"])
    assert rate >= 30
    t0 = 1_800_000_000_000
    fast = Normalizer(PLANT, max_clock_rate=rate)
    strict = Normalizer(PLANT)
    rejected = 0
    for i, wall_s in enumerate(range(0, 600, 5)):  # ten minutes of wall time at --speed 30: five hours simulated
        received = t0 + wall_s * 1000
        observed = t0 + 30 * wall_s * 1000
        fast.observation(raw(i, observed, received))  # never raises
        try:
            strict.observation(raw(i, observed, received))
        except InvalidTimestampError:
            rejected += 1
    assert rejected > 90  # real time only: everything past two minutes is refused
    # a clock running faster than the allowed rate is still refused, and so is a first reading days ahead
    with pytest.raises(InvalidTimestampError):
        fast.observation(raw(999, t0 + int(2 * rate * 600_000) + 2 * HOUR_MS, t0 + 600_000))
    with pytest.raises(InvalidTimestampError, match="clock skew"):
        Normalizer(PLANT, max_clock_rate=rate).observation(raw(1, t0 + int(rate * HOUR_MS) + HOUR_MS, t0))


@pytest.mark.integration
def test_simulator_at_speed_30_no_reading_is_dead_lettered_for_clock_skew(make_settings, create_topics,
                                                                          mosquitto_url, tmp_path) -> None:
    settings = make_settings()
    create_topics(settings)
    env = {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix, "LINEGUARD_MQTT_URL": mosquitto_url,
           "LINEGUARD_KAFKA_SESSION_TIMEOUT_MS": "6000", "LINEGUARD_LOG_LEVEL": "WARNING",
           "LINEGUARD_MAX_CLOCK_RATE": PROFILE["LINEGUARD_MAX_CLOCK_RATE"], "LINEGUARD_LAKE_ENABLED": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=58)
    commands = {
        "ingest": [sys.executable, "-m", "services.ingest"],
        "normalizer": [sys.executable, "-m", "services.normalizer"],
        "simulator": [sys.executable, "-m", "simulator.cli", "run", "--scenario", "normal_run", "--speed", "30",
                      "--start", start.isoformat(), "--duration", "720", "--no-sftp", "--no-sparkplug", "--api-port", str(free_port()),
                      "--truth", str(tmp_path / "truth.jsonl")],
    }
    procs = []
    try:
        for name, command in commands.items():
            port_env = {"LINEGUARD_HTTP_PORT": str(free_port()), "LINEGUARD_SERVICE_NAME": name}
            with open(tmp_path / f"{name}.log", "wb") as out:  # the child keeps its own descriptor
                procs.append(subprocess.Popen(command, cwd=ROOT, env={**env, **port_env}, stdout=out,
                                              stderr=subprocess.STDOUT))
        ahead: list[int] = []

        # 720 simulated seconds at --speed 30 take 24 s; the simulator then stops by itself
        assert procs[2].wait(120) == 0, (tmp_path / "simulator.log").read_text()[-3000:]

        def normalized_far_ahead() -> bool:
            for name, proc in list(zip(commands, procs, strict=True))[:2]:
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited: " + (tmp_path / f"{name}.log").read_text()[-3000:])
            # how far each observation is ahead of the wall clock that normalized it (the record's timestamp)
            ahead[:] = [r.value["observed_at"] - r.timestamp_ms
                        for r in read_topic(settings, "line.observations.v1", timeout_s=60)]
            # 300 readings more than an hour ahead of their receipt: the old guard refused every one of them
            return sum(1 for a in ahead if a > HOUR_MS) >= 300

        assert wait_for(normalized_far_ahead, timeout=90, interval=2.0), (
            f"{len(ahead)} observations, {sum(1 for a in ahead if a > HOUR_MS)} over an hour ahead; logs: "
            + (tmp_path / "normalizer.log").read_text()[-2000:])
        assert all(p.poll() is None for p in procs[:2]), "ingest or the normalizer exited early"
        dead = [dict(r.headers or []) for r in read_topic(settings, "raw.telemetry.v1.dlq", decode=False,
                                                          timeout_s=20)]
        skew = [h for h in dead if b"clock skew" in (h.get("__connect.errors.exception.message") or b"")]
        assert skew == [], f"{len(skew)} readings dead-lettered for clock skew"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
