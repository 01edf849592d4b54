"""Benchmark: SIGTERM -> exit of every service under load, the figures behind terminationGracePeriodSeconds.

    .venv/bin/python bench/bench_shutdown.py [--rounds 3] [--speed 10] [--lines 3] [--warmup 40] [--backlog 20]
                                             [--model slow-bedrock|slow-http|local|analysis] [--model-delay 50]
                                             [--services ingest vision normalizer advisor actuator notifier console]

Starts what `lineguard up` starts (Tansu, topics, Mosquitto, every service, the simulator running `--lines` lines
at `--speed` times real time, so every loop always has a batch in hand), lets it run `--warmup` seconds, then,
round after round, sends each service's process SIGTERM (what the kubelet sends, after preStop) and times it until
the process has exited; the service is started again and given `--settle` seconds before the next one. From round
2 on each service is first stopped for `--backlog` seconds while the line keeps producing, started again, and
SIGTERMed as soon as it is ready: in the middle of working off that backlog.

The advisor is stopped while the model is answering a window and more windows are queued; every window asks the
model (LINEGUARD_MODEL_ON_NORMAL). `--model slow-bedrock` (the production provider: boto3 on a worker thread,
which a shutdown cannot cancel, only wait for): the Bedrock runtime endpoint is a local server
(AWS_ENDPOINT_URL_BEDROCK_RUNTIME) that answers after `--model-delay` s (keep it under the alias' 60 s read
timeout); `slow-http`: the same server as an OpenAI-compatible endpoint (aiohttp, cancelled at shutdown);
`local`: the embedded SmolLM2 in process (CPU-heavy); `analysis`: no model. Prints one line per stop and a table
of the worst per service; `--json` writes them.

Every port is moved by `--port-offset` (default: the first free block from 12000 up), so it runs beside a
`lineguard up` or a test using the embedded ports; the simulator's SFTP drop is off (its port is fixed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lineguard.catalog import admin_client, bootstrap_topics, load_catalog, wait_for_broker  # noqa: E402
from lineguard.embedded import (  # noqa: E402
    SERVICE_PORTS,
    SIMULATOR_PORT,
    Child,
    Supervisor,
    free_port,
    mosquitto_command,
    port_open,
    tansu_command,
)
from lineguard.settings import read_dotenv  # noqa: E402

SERVICES = list(SERVICE_PORTS)


class SlowModel:
    """An OpenAI-compatible chat completions endpoint that answers after `delay_s` (a slow hosted model)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.started = 0
        self.answered = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    outer.in_flight += 1
                    outer.started += 1
                try:
                    time.sleep(outer.delay_s)
                    body = json.dumps({"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}],
                                       "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the advisor gave up on this answer (cancelled at shutdown)
                finally:
                    with lock:
                        outer.in_flight -= 1
                        outer.answered += 1

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def up(child: Child, port: int, timeout: float = 240.0) -> None:
    """Wait until the service is ready; stop at once when its process exits instead."""
    def started() -> bool:
        if child.proc is not None and child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with code {child.proc.returncode} while starting")
        return ready(port)

    wait(started, timeout, f"{child.name} not ready within {timeout:.0f} s")


def stop_and_time(child: Child, limit_s: float) -> tuple[float, int | None]:
    """SIGTERM the service's process (as the kubelet does) and time it until it has exited."""
    assert child.proc is not None
    started = time.monotonic()
    os.kill(child.proc.pid, signal.SIGTERM)
    try:
        code = child.proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait(10)
        code = None  # killed: it would have outlived a grace period of limit_s
    return time.monotonic() - started, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speed", type=float, default=10.0, help="the simulator's clock, times real time")
    parser.add_argument("--lines", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=40.0)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds a restarted service runs under load")
    parser.add_argument("--backlog", type=float, default=20.0,
                        help="from round 2: seconds a service is down before it is started and stopped mid-backlog")
    parser.add_argument("--model", choices=("slow-bedrock", "slow-http", "local", "analysis"), default="slow-bedrock")
    parser.add_argument("--model-delay", type=float, default=50.0)
    parser.add_argument("--limit", type=float, default=180.0, help="SIGKILL a service still running after this")
    parser.add_argument("--services", nargs="+", default=SERVICES, choices=SERVICES)
    parser.add_argument("--skip", nargs="*", default=[], choices=SERVICES,
                        help="services not started at all (one that cannot start in this checkout)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--quiet", action="store_true", help="do not echo the services' log lines")
    parser.add_argument("--port-offset", type=int, help="added to every embedded port (default: a free block)")
    args = parser.parse_args()

    embedded_ports = [*SERVICE_PORTS.values(), *(SIMULATOR_PORT + i for i in range(max(1, args.lines)))]
    offset = args.port_offset
    if offset is None:
        offset = next(o for o in range(12000, 40000, 500)
                      if not any(port_open("127.0.0.1", p + o) for p in embedded_ports))
    ports = {name: port + offset for name, port in SERVICE_PORTS.items()}

    def moved(text: str) -> str:
        for port in embedded_ports:
            text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{port + offset}")
        return text
    out = open(os.devnull, "w") if args.quiet else sys.stdout  # noqa: SIM115 - lives as long as the run
    sup = Supervisor(out)
    workdir = Path(tempfile.mkdtemp(prefix="lineguard-shutdown-"))
    model = SlowModel(args.model_delay) if args.model.startswith("slow-") else None
    results: list[dict] = []
    try:
        kafka_port, mqtt_port = free_port(), free_port()
        bootstrap = f"127.0.0.1:{kafka_port}"
        sup.wait_ready(sup.start(Child("tansu", tansu_command(kafka_port), ready_port=kafka_port)), 30)
        wait_for_broker(bootstrap, timeout=30)
        bootstrap_topics(admin_client(bootstrap), load_catalog(), "")
        command = mosquitto_command(mqtt_port, workdir)
        if command is not None:
            sup.wait_ready(sup.start(Child("mosquitto", command, ready_port=mqtt_port)), 30)
        env = {k: moved(v) for k, v in read_dotenv(ROOT / "embedded.env").items()
               if k not in ("LINEGUARD_SFTP_SOURCES_FILE",)}
        env.update({"LINEGUARD_KAFKA_BOOTSTRAP": bootstrap, "LINEGUARD_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
                    "LINEGUARD_LOG_LEVEL": "WARNING"})
        # the console's calls to the others (their defaults are the embedded ports)
        env.update({f"LINEGUARD_{name.upper()}_URL": f"http://127.0.0.1:{ports[name]}"
                    for name in ("normalizer", "advisor", "actuator", "notifier")})
        from lineguard.plant import default_plant_path, write_plant_lines

        plant = workdir / "plant.yaml"
        if args.lines:
            write_plant_lines(default_plant_path(), args.lines, plant)
        else:
            plant.write_text(default_plant_path().read_text())
        plant.write_text(moved(plant.read_text()))  # the line controllers' API (the simulator serves it)
        env["LINEGUARD_PLANT_FILE"] = str(plant)
        advisor_env = dict(env)
        if args.model == "slow-http":
            advisor_env.update({
                "LINEGUARD_MODEL_ALIAS": "slow", "LINEGUARD_MODEL_ON_NORMAL": "true",
                "LINEGUARD_MODEL_ALIASES": json.dumps({"slow": {
                    "provider": "openai", "model_id": "slow", "endpoint": f"http://127.0.0.1:{model.port}",
                    "timeout_s": 120, "max_attempts": 1}})})
        elif args.model == "slow-bedrock":
            advisor_env.update({
                "LINEGUARD_MODEL_ALIAS": "slow", "LINEGUARD_MODEL_ON_NORMAL": "true",
                "LINEGUARD_MODEL_ALIASES": json.dumps({"slow": {
                    "provider": "bedrock", "model_id": "slow", "region": "us-east-1", "timeout_s": 60}}),
                "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": f"http://127.0.0.1:{model.port}",
                "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"})
        elif args.model == "local":
            advisor_env.update({"LINEGUARD_MODEL_ON_NORMAL": "true"})
        else:
            advisor_env.update({"LINEGUARD_MODEL_ALIAS": "analysis-only"})

        def start(name: str) -> Child:
            child_env = {**(advisor_env if name == "advisor" else env), "LINEGUARD_SERVICE_NAME": name,
                         "LINEGUARD_HTTP_PORT": str(ports[name])}
            return sup.start(Child(name, [sys.executable, "-m", f"services.{name}"], child_env))

        running = [name for name in SERVICES if name not in args.skip]
        children = {name: start(name) for name in running}
        sim = [sys.executable, "-m", "simulator.cli", "run", "--scenario", "normal_run", "--speed", str(args.speed),
               "--no-sftp", "--plant", str(plant)]
        sup.start(Child("simulator", sim + (["--lines", str(args.lines)] if args.lines else []),
                        {**env, "LINEGUARD_SERVICE_NAME": "simulator"}, ready_port=SIMULATOR_PORT + offset))
        for name in running:
            up(children[name], ports[name])
        print(f"# ports +{offset}; all ready; warming up {args.warmup:.0f} s (speed {args.speed:g}, {args.lines} lines, "
              f"model {args.model})", flush=True)
        time.sleep(args.warmup)
        for round_no in range(1, args.rounds + 1):
            for name in [n for n in args.services if n in running]:
                note = ""
                if round_no > 1 and args.backlog > 0:
                    stop_and_time(children[name], args.limit)
                    sup.children.remove(children[name])
                    time.sleep(args.backlog)  # the line goes on producing: a backlog waits for the restart
                    children[name] = start(name)
                    up(children[name], ports[name])
                    time.sleep(0.5)
                    note = f"mid-backlog ({args.backlog:g} s down)"
                if name == "advisor" and model is not None:
                    # Mid-evaluation, at its start (the worst moment): a request to the model has just begun
                    # (and usually other windows wait behind it).
                    asked = model.started
                    wait(lambda a=asked: model.started > a, 300, "the advisor never asked the model")
                    time.sleep(1.0)
                    note += f" model answering ({model.in_flight} in flight, {model.answered} answered so far)"
                child = children[name]
                seconds, code = stop_and_time(child, args.limit)
                sup.children.remove(child)
                results.append({"service": name, "round": round_no, "seconds": round(seconds, 2), "exit": code,
                                "note": note})
                print(f"{name:<11} round {round_no}: SIGTERM -> exit {seconds:6.2f} s, exit code {code} {note}",
                      flush=True)
                children[name] = start(name)
                up(children[name], ports[name])
                time.sleep(args.settle)
    finally:
        sup.stop_all()
        if model is not None:
            model.close()
        shutil.rmtree(workdir, ignore_errors=True)
    worst: dict[str, float] = {}
    for r in results:
        worst[r["service"]] = max(worst.get(r["service"], 0.0), r["seconds"])
    print("\n| service | stops | worst SIGTERM -> exit (s) | exit codes |\n|---|---|---|---|")
    for name in args.services:
        mine = [r for r in results if r["service"] == name]
        print(f"| {name} | {len(mine)} | {worst.get(name, 0):.1f} | {sorted({str(r['exit']) for r in mine})} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "worst": worst, "cores": os.cpu_count()}, indent=2))
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
