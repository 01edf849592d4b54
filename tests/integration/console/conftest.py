"""The console's browser tests: a real line behind a real console, driven in headless Debian chromium.

`line` (module scope) starts, each as its own process on free ports: the simulator (control API, MQTT and
Sparkplug B, camera), ingest, vision, the normalizer, the advisor (analysis-only model, chat token), the actuator
and notifier when they exist, and the console, all on the session's Tansu and Mosquitto under a topic prefix of
their own. `browser` is Debian's chromium through Playwright (`executable_path`; Playwright's own browser
download is never used), with a fake microphone that plays a question spoken by espeak-ng.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from speech import espeak_wav

from lineguard.catalog import admin_client, bootstrap_topics, load_catalog
from lineguard.embedded import Child, Supervisor, free_port
from lineguard.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
# The README's screenshots are refreshed on purpose (`make screenshots` sets this to docs/); an ordinary test run
# writes them under var/ so it never leaves the working tree changed.
DOCS = Path(os.environ.get("LINEGUARD_SCREENSHOTS_DIR") or ROOT / "var" / "screenshots")
DOCS.mkdir(parents=True, exist_ok=True)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CONTROL_TOKEN = "console-test-control"
CHAT_TOKEN = "console-test-chat"
DELEGATE_TOKEN = "console-test-delegate"
FEED_TOKEN = "console-test-feed"
NORMALIZER_TOKEN = "console-test-ngsi"
CAMERA_TOKEN = "console-test-camera"
LORAWAN_SECRET = "console-test-lorawan"
OPTIONAL = ("vision", "actuator", "notifier")  # the line works without them; tests that need one skip
VOICE_QUESTION = "why did the cooling conveyor stop"
# Headless chromium quiet and self-contained: no sandbox (root in CI), no background traffic, a fake microphone.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-default-apps", "--disable-sync", "--no-first-run",
                 "--disable-domain-reliability", "--disable-breakpad", "--metrics-recording-only",
                 "--disable-features=Translate,OptimizationHints,MediaRouter,InterestFeedContentSuggestions",
                 "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream"]


def have_service(name: str) -> bool:
    return (ROOT / "services" / name / "__main__.py").is_file()


@dataclass
class Line:
    settings: Settings
    console_url: str
    control_url: str
    ports: dict[str, int]
    supervisor: Supervisor
    children: dict[str, Child] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def need(self, name: str) -> None:
        if name not in self.children or name in self.unavailable:
            pytest.skip(f"the {name} is not available here: {self.unavailable.get(name, 'not built yet')}")

    def control(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(f"{self.control_url}{path}", method=method,
                                         data=json.dumps(body or {}).encode() if method != "GET" else None,
                                         headers={"Authorization": f"Bearer {CONTROL_TOKEN}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self, name: str) -> None:
        child = self.children[name]
        if child.proc and child.proc.poll() is None:
            child.proc.terminate()
            child.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def line(kafka_bootstrap: str, mosquitto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    work = tmp_path_factory.mktemp("console-line")
    prefix = f"c{uuid.uuid4().hex[:8]}."
    settings = Settings.from_env(environ={}, kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix,
                                 service_name="console-test")
    bootstrap_topics(admin_client(kafka_bootstrap), load_catalog(None), prefix)
    names = ["simulator", "ingest", "vision", "normalizer", "advisor", "actuator", "notifier", "console"]
    ports = {name: free_port() for name in names}
    common = {"LINEGUARD_KAFKA_BOOTSTRAP": kafka_bootstrap, "LINEGUARD_TOPIC_PREFIX": prefix,
              "LINEGUARD_MQTT_URL": mosquitto_url, "LINEGUARD_LOG_LEVEL": "WARNING",
              "LINEGUARD_KAFKA_SESSION_TIMEOUT_MS": "6000", "LINEGUARD_CONTROL_API_TOKEN": CONTROL_TOKEN,
              "LINEGUARD_ENV_FILE": ""}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    own = {
        "simulator": {"LINEGUARD_SIM_CAMERA_TOKEN": CAMERA_TOKEN},
        "ingest": {"LINEGUARD_MQTT_CLIENT_ID": f"ingest-{prefix}", "LINEGUARD_SPARKPLUG_HOST_ID": f"ingest-{prefix}",
                   "LINEGUARD_CHIRPSTACK_SECRET": LORAWAN_SECRET},
        "vision": {"LINEGUARD_VISION_IMAGE_DIR": str(work / "images"), "LINEGUARD_VISION_TOKENS": CAMERA_TOKEN},
        "normalizer": {"LINEGUARD_GROUP_ID": f"{prefix}normalizer", "LINEGUARD_LAKE_DIR": str(work / "lake"),
                       "LINEGUARD_NORMALIZER_API_TOKEN": NORMALIZER_TOKEN, "LINEGUARD_MAX_CLOCK_RATE": "100"},
        "advisor": {"LINEGUARD_GROUP_ID": f"{prefix}advisor", "LINEGUARD_MODEL_ALIAS": "analysis-only",
                    "LINEGUARD_CHAT_TOKENS": CHAT_TOKEN},
        "actuator": {"LINEGUARD_GROUP_ID": f"{prefix}actuator", "LINEGUARD_CONTROL_API_URL": url["simulator"],
                     "LINEGUARD_ACTUATOR_DELEGATE_TOKENS": f"console:{DELEGATE_TOKEN}",
                     "LINEGUARD_ACTUATOR_OPERATOR_TOKENS": ""},
        "notifier": {"LINEGUARD_GROUP_ID": f"{prefix}notifier", "LINEGUARD_NOTIFIER_FEED_TOKEN": FEED_TOKEN,
                     "LINEGUARD_NOTIFIER_LINK_KEY": "console-test-link-key", "LINEGUARD_NOTIFIER_SNS_ENABLED": "false",
                     "LINEGUARD_NOTIFIER_PUBLIC_URL": url["notifier"], "LINEGUARD_NOTIFIER_ACTUATOR_URL": url["actuator"],
                     "LINEGUARD_NOTIFIER_ACTUATOR_TOKEN": DELEGATE_TOKEN, "LINEGUARD_NOTIFIER_WEBHOOK_URLS": ""},
        "console": {"LINEGUARD_NORMALIZER_URL": url["normalizer"], "LINEGUARD_CONSOLE_NORMALIZER_TOKEN": NORMALIZER_TOKEN, "LINEGUARD_ADVISOR_URL": url["advisor"],
                    "LINEGUARD_ADVISOR_TOKEN": CHAT_TOKEN, "LINEGUARD_ACTUATOR_URL": url["actuator"],
                    "LINEGUARD_CONSOLE_ACTUATOR_TOKEN": DELEGATE_TOKEN, "LINEGUARD_NOTIFIER_URL": url["notifier"],
                    "LINEGUARD_CONSOLE_FEED_TOKEN": FEED_TOKEN,
                    "LINEGUARD_BACKEND_PROBE_S": "0.5"},
    }
    log = open(work / "line.log", "w")  # noqa: SIM115 - closed at teardown
    supervisor = Supervisor(out=log, color=False)
    children: dict[str, Child] = {}
    try:
        for name in names:
            env = {**common, **own[name], "LINEGUARD_SERVICE_NAME": name}
            if name == "simulator":
                argv = [sys.executable, "-m", "simulator.cli", "run", "--scenario", "normal_run", "--speed", "1",
                        "--mqtt", mosquitto_url, "--mqtt-interval", "1", "--api-port", str(ports[name]),
                        "--no-sftp", "--truth", str(work / "truth.jsonl"),
                        "--camera-url", f"{url['vision']}/v1/images", "--camera-size", "128",
                        "--chirpstack-url", f"{url['ingest']}/lorawan/chirpstack", "--chirpstack-secret", LORAWAN_SECRET,
                        "--lorawan-interval", "5"]
                children[name] = supervisor.start(Child(name, argv, env, ready_port=ports[name]))
                continue
            if not have_service(name):
                continue
            env["LINEGUARD_HTTP_PORT"] = str(ports[name])
            children[name] = supervisor.start(Child(name, [sys.executable, "-m", f"services.{name}"], env,
                                                    ready_url=f"{url[name]}/readyz"))
        unavailable: dict[str, str] = {}
        for name, child in children.items():
            try:
                supervisor.wait_ready(child, 90)
            except (RuntimeError, TimeoutError) as exc:
                if name not in OPTIONAL:
                    raise
                unavailable[name] = str(exc)
    except BaseException:
        supervisor.stop_all(grace=5)
        log.close()
        print((work / "line.log").read_text()[-6000:])
        raise
    yield Line(settings, url["console"], url["simulator"], ports, supervisor, children, unavailable)
    supervisor.stop_all(grace=5)  # graceful shutdown is each service's own test; here it only costs time
    log.close()


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The spoken question for the fake microphone: espeak-ng, resampled to 48 kHz mono, silence after it."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng missing: make system-deps installs it")
    from services.console.voice import decode_to_pcm16k, pcm16k_to_wav

    pcm = decode_to_pcm16k(espeak_wav(VOICE_QUESTION)) + b"\0\0" * 16000 * 2  # 2 s of silence: the page hears the end of speech
    path = tmp_path_factory.mktemp("voice") / "question.wav"
    path.write_bytes(pcm16k_to_wav(pcm))
    return path


@pytest.fixture(scope="module")
def browser(question_wav: Path) -> Iterator[object]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("Debian chromium missing: make system-deps installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={question_wav}%noloop"])
        yield browser
        browser.close()
