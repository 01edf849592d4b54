"""`lineguard-sim`: run the simulated cookie line with a fault scenario, speaking the line's real protocols.

    lineguard-sim run --scenario oven_zone_overheat --speed 10
    lineguard-sim scenarios

Every flag has an environment variable (shown in --help); flags win. Logs are JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lineguard.logs import event, setup_logging
from lineguard.plant import PlantModelError, default_plant_path, load_plant, load_plant_lines

log = logging.getLogger("simulator.cli")
DEV_TOKEN = "lineguard-dev-token"
DEV_SFTP_PASSWORD = "lineguard-dev"


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(name, default)


def _host_port(value: str, default_port: int) -> tuple[str, int]:
    """HOST:PORT, HOST, or an mqtt:// URL."""
    if "://" in value:
        parts = urlsplit(value)
        return parts.hostname or "127.0.0.1", parts.port or default_port
    host, _, port = value.rpartition(":") if ":" in value else (value, "", str(default_port))
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ValueError(f"--mqtt: expected HOST:PORT or mqtt://HOST:PORT, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineguard-sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the line", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = run.add_argument_group("scenario and clock")
    g.add_argument("--scenario", default=_env("LINEGUARD_SIM_SCENARIO", "normal_run"),
                   help="scenario name (examples/cookie-line/scenarios) or a YAML path [LINEGUARD_SIM_SCENARIO]")
    g.add_argument("--speed", type=float, default=float(_env("LINEGUARD_SIM_SPEED", "1")),
                   help="simulated seconds per real second; 0 = as fast as possible [LINEGUARD_SIM_SPEED]")
    g.add_argument("--duration", type=float, default=float(_env("LINEGUARD_SIM_DURATION_S", "0")),
                   help="stop after this many simulated seconds; 0 = run until stopped [LINEGUARD_SIM_DURATION_S]")
    g.add_argument("--seed", type=int, default=int(_env("LINEGUARD_SIM_SEED", "0")), help="[LINEGUARD_SIM_SEED]")
    g.add_argument("--start", default=_env("LINEGUARD_SIM_START"),
                   help="simulated start instant, ISO 8601 with zone; default now [LINEGUARD_SIM_START]")
    g.add_argument("--plant", type=Path, default=Path(_env("LINEGUARD_PLANT_FILE", str(default_plant_path()))),
                   help="plant model YAML [LINEGUARD_PLANT_FILE]")
    g.add_argument("--line", default=_env("LINEGUARD_SIM_LINE"), help="line id; default the first line")
    g.add_argument("--lines", type=int, default=int(_env("LINEGUARD_SIM_LINES", "0")),
                   help="run N lines line1..lineN, generated from the plant model's first line (each its own "
                        "devices, control API on the reference port + index - 1, seed + index - 1); 0 = one "
                        "line [LINEGUARD_SIM_LINES]")
    g.add_argument("--line-scenario", action="append", default=[], metavar="LINE=SCENARIO",
                   help="with --lines: the scenario of one line (repeatable); --scenario applies to line1, "
                        "the other lines run normal_run")
    g.add_argument("--truth", type=Path, default=Path(_env("LINEGUARD_SIM_TRUTH", "var/sim/ground-truth.jsonl")),
                   help="ground truth JSON-lines log (appended) [LINEGUARD_SIM_TRUTH]")
    g.add_argument("--batch-period", type=float, default=float(_env("LINEGUARD_SIM_BATCH_PERIOD_S", "300")),
                   help="packaging batch report period, simulated seconds [LINEGUARD_SIM_BATCH_PERIOD_S]")

    g = run.add_argument_group("MQTT (JSON readings and alarms, Sparkplug B oven)")
    g.add_argument("--mqtt", default=_env("LINEGUARD_SIM_MQTT", _env("LINEGUARD_MQTT_URL", "127.0.0.1:1883")),
                   help="broker HOST:PORT or mqtt://HOST:PORT [LINEGUARD_SIM_MQTT, else LINEGUARD_MQTT_URL]")
    g.add_argument("--mqtt-username", default=_env("LINEGUARD_SIM_MQTT_USERNAME"))
    g.add_argument("--mqtt-password", default=_env("LINEGUARD_SIM_MQTT_PASSWORD"),
                   help="[LINEGUARD_SIM_MQTT_PASSWORD]")
    g.add_argument("--mqtt-interval", type=float, default=float(_env("LINEGUARD_SIM_MQTT_INTERVAL_S", "2")),
                   help="JSON reading period, simulated seconds")
    g.add_argument("--no-mqtt", action="store_true", help="no JSON readings")
    g.add_argument("--no-sparkplug", action="store_true", help="no Sparkplug B oven")

    g = run.add_argument_group("LoRaWAN webhooks (environment sensor)")
    g.add_argument("--chirpstack-url", default=_env("LINEGUARD_SIM_CHIRPSTACK_URL"),
                   help="ChirpStack v4 HTTP integration target; ?event=up is added [LINEGUARD_SIM_CHIRPSTACK_URL]")
    g.add_argument("--tts-url", default=_env("LINEGUARD_SIM_TTS_URL"),
                   help="The Things Stack v3 webhook uplink target [LINEGUARD_SIM_TTS_URL]")
    g.add_argument("--chirpstack-secret", default=_env("LINEGUARD_SIM_CHIRPSTACK_SECRET",
                                                       _env("LINEGUARD_CHIRPSTACK_SECRET")),
                   help="sent as X-Lineguard-Secret to ChirpStack's target [LINEGUARD_SIM_CHIRPSTACK_SECRET, else "
                        "LINEGUARD_CHIRPSTACK_SECRET]")
    g.add_argument("--tts-secret", default=_env("LINEGUARD_SIM_TTS_SECRET", _env("LINEGUARD_TTS_SECRET")),
                   help="sent as X-Lineguard-Secret to The Things Stack's target [LINEGUARD_SIM_TTS_SECRET, else "
                        "LINEGUARD_TTS_SECRET]")
    g.add_argument("--lorawan-interval", type=float, default=float(_env("LINEGUARD_SIM_LORAWAN_INTERVAL_S", "60")),
                   help="uplink period, simulated seconds")

    g = run.add_argument_group("SFTP (packaging batch reports)")
    g.add_argument("--sftp-dir", type=Path, default=Path(_env("LINEGUARD_SIM_SFTP_DIR", "var/sim/sftp")),
                   help="served root; reports land in <dir>/reports [LINEGUARD_SIM_SFTP_DIR]")
    g.add_argument("--sftp-host", default=_env("LINEGUARD_SIM_SFTP_HOST", "127.0.0.1"))
    g.add_argument("--sftp-port", type=int, default=int(_env("LINEGUARD_SIM_SFTP_PORT", "2222")),
                   help="0 = any free port, -1 = write files but run no server [LINEGUARD_SIM_SFTP_PORT]")
    g.add_argument("--sftp-user", default=_env("LINEGUARD_SIM_SFTP_USER", "plc"))
    g.add_argument("--sftp-authorized-keys", type=Path, default=_env("LINEGUARD_SIM_SFTP_AUTHORIZED_KEYS"),
                   help="OpenSSH authorized_keys for key login [LINEGUARD_SIM_SFTP_AUTHORIZED_KEYS]")
    g.add_argument("--sftp-host-key", type=Path, default=_env("LINEGUARD_SIM_SFTP_HOST_KEY"),
                   help="host key file, created when missing; default a fresh key per run")
    g.add_argument("--no-sftp", action="store_true", help="no batch reports at all")

    g = run.add_argument_group("control API and camera")
    g.add_argument("--api-host", default=_env("LINEGUARD_SIM_API_HOST", "127.0.0.1"))
    g.add_argument("--api-port", type=int, default=_env("LINEGUARD_SIM_API_PORT"),
                   help="default: the port of the plant model's controller api (8090) [LINEGUARD_SIM_API_PORT]")
    g.add_argument("--camera-url", default=_env("LINEGUARD_SIM_CAMERA_URL"),
                   help="vision intake URL; one image per detected cookie [LINEGUARD_SIM_CAMERA_URL]")
    g.add_argument("--camera-size", type=int, default=int(_env("LINEGUARD_SIM_CAMERA_SIZE", "256")))
    g.add_argument("--log-level", default=_env("LINEGUARD_LOG_LEVEL", "INFO"))
    sub.add_parser("scenarios", help="list the shipped scenarios with their expected root cause")
    return parser


def _line_scenarios(args: argparse.Namespace, line_ids: list[str]) -> dict[str, str]:
    """Which scenario each line runs: --scenario on line1 (or --line), normal_run elsewhere, --line-scenario wins."""
    chosen = {line: "normal_run" for line in line_ids}
    chosen[args.line or line_ids[0]] = args.scenario
    for item in args.line_scenario:
        line, sep, name = item.partition("=")
        if not sep or line not in chosen:
            raise ValueError(f"--line-scenario: expected LINE=SCENARIO with LINE one of line1..line{len(line_ids)}, "
                             f"got {item!r}")
        chosen[line] = name
    return chosen


def camera_station(line: Any) -> str | None:
    """The machine of `line` that a camera watches (the plant model's `inspects: true`; generated lines copy the
    reference line's), or None for a line without one."""
    return next((machine.id for machine in line.machines.values() if machine.inspects), None)


async def _start_line(args: argparse.Namespace, plant: Any, line: Any, scenario_name: str, index: int,
                      token: str, camera_tasks: set[Any] | None = None) -> tuple[Any, Any, list[Any], Any]:
    """One line's simulation, control API and emitters: (runner, API runner, closers, ground truth log)."""
    from simulator.clock import SimClock
    from simulator.control_api import start_control_api
    from simulator.emitters import CookieHooks, Runner, camera_hook
    from simulator.ground_truth import GroundTruthLog
    from simulator.lorawan_webhooks import LoRaWANWebhookEmitter
    from simulator.model import CookieLine
    from simulator.mqtt_emitters import MqttJsonEmitter, SparkplugEmitter
    from simulator.scenarios import load_scenario
    from simulator.sftp import SftpEmitter

    first = index == 1
    scenario = load_scenario(scenario_name, line)
    start = datetime.fromisoformat(args.start) if args.start else None
    clock = SimClock(start, speed=args.speed)
    truth_path = args.truth if first else args.truth.with_name(f"{args.truth.stem}.{line.id}{args.truth.suffix}")
    truth = GroundTruthLog(truth_path)
    sim = CookieLine(plant, line.id, seed=args.seed + index - 1, clock=clock, scenario=scenario, ground_truth=truth,
                     batch_period_s=args.batch_period)

    api_port = args.api_port + index - 1 if args.api_port is not None else None
    if api_port is None:
        api_port = urlsplit(line.controller_api).port if line.controller_api else None
    api_runner, bound_api = await start_control_api(sim, token, args.api_host,
                                                    int(api_port) if api_port is not None else 8090 + index - 1)

    emitters: list[Any] = []
    mqtt_host, mqtt_port = _host_port(args.mqtt, 1883)
    if not args.no_mqtt:
        emitters.append(MqttJsonEmitter(mqtt_host, mqtt_port, args.mqtt_interval, username=args.mqtt_username,
                                        password=args.mqtt_password))
    if not args.no_sparkplug:
        emitters.append(SparkplugEmitter(mqtt_host, mqtt_port, username=args.mqtt_username,
                                         password=args.mqtt_password))
    if args.chirpstack_url or args.tts_url:
        emitters.append(LoRaWANWebhookEmitter(
            args.chirpstack_url, args.tts_url, args.lorawan_interval,
            device_name="hall-env-1" if first else f"hall-env-{line.id}",
            chirpstack_headers={"X-Lineguard-Secret": args.chirpstack_secret} if args.chirpstack_secret else None,
            tts_headers={"X-Lineguard-Secret": args.tts_secret} if args.tts_secret else None))
    if not args.no_sftp:
        # One SFTP server (line1's) serves every line's reports: the file names carry the line's batch ids.
        password = os.environ.get("LINEGUARD_SIM_SFTP_PASSWORD") or DEV_SFTP_PASSWORD
        port = None if args.sftp_port < 0 or not first else args.sftp_port
        emitters.append(SftpEmitter(args.sftp_dir, args.sftp_host, port, {args.sftp_user: password},
                                    args.sftp_authorized_keys, args.sftp_host_key))
    closers: list[Any] = []
    station = camera_station(line)
    if args.camera_url and station is not None:  # every line whose plant model has a camera
        # the camera's bearer token comes from the environment only (a secret; not on the command line)
        made = camera_hook(args.camera_url, sim, args.camera_size, os.environ.get("LINEGUARD_SIM_CAMERA_TOKEN"),
                           station=station)
        if made:
            hook, camera_closer = made
            emitters.append(CookieHooks([hook], in_flight=camera_tasks))  # one bound for every line's camera
            closers.append(camera_closer)

    event(log, "simulation_started", scenario=scenario.name, speed=args.speed, seed=sim.seed, line=line.id,
          start=clock.iso(0.0), control_api=f"http://{args.api_host}:{bound_api}", mqtt=args.mqtt,
          emitters=[e.name for e in emitters], ground_truth=str(truth_path))
    runner = Runner(sim, emitters)
    return runner, api_runner, closers, truth


async def run_simulation(args: argparse.Namespace) -> int:
    if args.lines:
        plant = load_plant_lines(args.plant, args.lines)
        lines = list(plant.lines.values())
    else:
        plant = load_plant(args.plant)
        lines = [plant.lines[args.line] if args.line else next(iter(plant.lines.values()))]
    scenarios = _line_scenarios(args, [line.id for line in lines])

    token = os.environ.get("LINEGUARD_CONTROL_API_TOKEN", "")
    if not token:
        token = DEV_TOKEN
        event(log, "control_api_dev_token", logging.WARNING,
              hint="LINEGUARD_CONTROL_API_TOKEN is not set; using the documented development token")

    started: list[tuple[Any, Any, list[Any], Any]] = []
    camera_tasks: set[Any] = set()  # the images of every line in flight to the vision intake, bounded together
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop_event.set)
    try:
        for index, line in enumerate(lines, start=1):
            started.append(await _start_line(args, plant, line, scenarios[line.id], index, token, camera_tasks))
            runner = started[-1][0]
            runner.stop_event = stop_event  # one stop for every line
            await runner.start()
        await asyncio.gather(*(runner.run(args.duration or None) for runner, *_ in started))
    finally:
        for runner, api_runner, closers, truth in reversed(started):
            sim = runner.sim
            await runner.stop()
            for closer in closers:
                await closer.close()
            await api_runner.cleanup()
            truth.write("run_ended", sim.now_s, sim.clock.iso(), counters=dict(sim.counters))
            truth.close()
            event(log, "simulation_stopped", line=sim.line.id, sim_time=sim.clock.iso(), sim_seconds=round(sim.now_s),
                  counters=sim.counters)
    return 0


def list_scenarios() -> int:
    from simulator.scenarios import available_scenarios, load_scenario

    plant = load_plant(default_plant_path())
    line = next(iter(plant.lines.values()))
    for name in available_scenarios():
        scenario = load_scenario(name, line)
        change = scenario.expected.setpoint_change
        print(json.dumps({
            "name": name, "fault": scenario.fault.as_dict() if scenario.fault else None,
            "root_cause": {"machine": scenario.expected.root_cause_machine,
                           "category": scenario.expected.root_cause_category},
            "setpoint_change": change.__dict__ if change else None,
            "command": scenario.expected.command.__dict__ if scenario.expected.command else None,
        }))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "scenarios":
        return list_scenarios()
    setup_logging("lineguard-sim", args.log_level)
    from simulator.scenarios import ScenarioError

    try:
        return asyncio.run(run_simulation(args))
    except (ScenarioError, PlantModelError, ValueError, OSError) as exc:
        event(log, "simulation_failed", logging.ERROR, error=str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
