"""Every shipped overlay starts: each container's settings, in its own image's environment, build its service.

For base and each overlay the manifests are rendered (tests/support/kustomize_lite.py), and for every Deployment
container the test collects the environment the pod would get: `env` (values, ConfigMap and field references,
`$(VAR)` expansion), `envFrom` ConfigMaps, and the image's own `ENV` lines underneath. The container's image is
rebuilt the way its Dockerfile builds it, without docker: the files it COPYs into an /app folder, a virtual
environment of its own, and `pip install -e ".[<the Dockerfile's extras>]"` there. Then the container's command runs
with `--check-config` (lineguard.check_config): settings parsed, Kafka clients, serde, registry client, boto3
clients and the HTTP app built, one `config_checked` line, exit 0, nothing reached over the network.

The test asserts exit 0 and that the summary says what the overlay asked for: SASL_SSL with OAUTHBEARER and the
MSK IAM signer where the msk component is in, a schema-registry client where the registry URL is set, the TLS
listener's CA file where strimzi-tls sets one. An image that lacks an extra its overlay switches on fails here.

What differs from a cluster, on purpose:
- paths: each volume mount is a folder under the test's temporary root, and every path in the env under a mount
  (or under /app, /venv) is rewritten to it; ConfigMap volumes hold the rendered ConfigMap's files;
- Secrets are not in the repository: an optional `envFrom` Secret is absent (as when nobody created it) unless
  OPERATOR_SECRETS below supplies what the service's README says to create; a file of a Secret volume named in
  the env is a placeholder of its kind (a self-signed certificate and key for TLS files, a users file);
- pip uses its cache (the Dockerfiles pass --no-cache-dir) and skips byte-compiling: same packages, less time;
- each image's venv is kept between sessions under ~/.cache/lineguard/overlay-venvs, keyed by what decides its
  packages (pyproject.toml, the extras, the Python): installing all seven costs about 6 CPU-minutes, so a session
  installs only those whose key is new (a fresh CI machine: all, in parallel). The image's /app is copied afresh
  every session. LINEGUARD_OVERLAY_FRESH_VENVS=1 reinstalls them all.

Needs the network to PyPI (as `make test` does).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dockerfiles import Image, parse_dockerfile
from kustomize_lite import apply_kustomization, build

# The first test builds the venvs (session fixtures): minutes with a warm pip cache, more on a cold one.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "k8s"
# A combination documented but not shipped as a folder: the msk overlay with a schema registry (see the comment
# at the top of overlays/msk/kustomization.yaml), built as a kustomization in memory.
COMBINATIONS = {"overlays/msk+components/schema-registry": {"resources": ["msk"],
                                                            "components": ["../components/schema-registry"]}}
OVERLAYS = ("base", "overlays/production", "overlays/msk", *COMBINATIONS)
# What each shipped overlay switches on (the assertions below derive their expectations from the rendered env;
# this table keeps them from being vacuous: an overlay that silently stopped asking for TLS fails here).
OVERLAY_ASKS = {"base": set(), "overlays/production": {"tls", "registry"}, "overlays/msk": {"msk"},
                "overlays/msk+components/schema-registry": {"msk", "registry"}}
# The console builds its Kafka follower when its app starts (aiohttp cleanup context), not in `build`.
NO_KAFKA_AT_BUILD = {"console"}
# Secrets an operator creates because the service's README says it cannot start without them (never in git).
OPERATOR_SECRETS: dict[str, dict[str, str]] = {
    # services/notifier/README.md: the key that signs the answer links.
    "lineguard-notifier-secrets": {"LINEGUARD_NOTIFIER_LINK_KEY": "placeholder-link-key-0123456789abcdef0123456789"},
}
NAMESPACE = "lineguard"
BASE_IMAGE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"}  # python:3.11-slim's
# The venvs are kept between sessions, keyed by what decides their packages (venv_key): installing seven of
# them costs about 6 CPU-minutes. LINEGUARD_OVERLAY_FRESH_VENVS=1 installs them again regardless.
VENV_CACHE = Path(os.environ.get("LINEGUARD_OVERLAY_VENV_CACHE", Path.home() / ".cache" / "lineguard" / "overlay-venvs"))
FRESH = os.environ.get("LINEGUARD_OVERLAY_FRESH_VENVS", "") not in ("", "0")
INSTALL_TIMEOUT_S = 900  # a cold pip cache downloads every wheel; warm, each venv takes well under a minute
CHECK_TIMEOUT_S = 120


# --------------------------------------------------------------------------------------------------------------
# Images: what each Dockerfile installs and copies
# --------------------------------------------------------------------------------------------------------------

def copy_into(app: Path, image: Image) -> None:
    """The build stage's COPY lines, into `app` (the image's WORKDIR), as docker does them."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sources, destination in image.copies:
        paths = [p for source in sources for p in sorted(REPO.glob(source))]
        target = app / destination
        into_dir = destination.endswith("/") or len(sources) > 1
        assert paths or all("*" in s for s in sources), f"{image.service}: COPY {sources} matches nothing"
        for path in paths:
            if path.is_dir():
                shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
            else:
                dest = target / path.name if into_dir else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)


@dataclass(frozen=True)
class Built:
    image: Image
    app: Path
    venv: Path
    seconds: float
    reused: bool
    lock: Any  # held for the session: another session waits instead of rewriting this image's /app


def venv_key(image: Image) -> str:
    """What decides the installed packages: pyproject.toml, the extras, editable or not, the Python."""
    digest = hashlib.sha256()
    for part in ((REPO / "pyproject.toml").read_bytes(), ",".join(image.extras).encode(),
                 str(image.editable).encode(), sys.version.encode()):
        digest.update(part + b"\0")
    return f"{image.service}-{digest.hexdigest()[:16]}"


def prune_stale(cache: Path, image: Image, key: str) -> None:
    """This image's venvs for an older pyproject.toml (a few hundred MB each), unless a session holds them."""
    for lock_path in cache.glob(f"{image.service}-*.lock"):
        if lock_path.stem == key:
            continue
        with open(lock_path, "w") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(cache / lock_path.stem, ignore_errors=True)
            lock_path.unlink(missing_ok=True)


def install(image: Image, cache: Path) -> Built:
    """The image's /app (copied afresh every session) and its venv (installed when its key is new)."""
    started = time.monotonic()
    key = venv_key(image)
    root = cache / key
    root.mkdir(parents=True, exist_ok=True)
    lock = open(cache / f"{key}.lock", "w")  # noqa: SIM115 - closed at the session's end
    fcntl.flock(lock, fcntl.LOCK_EX)
    app, venv, done = root / "app", root / "venv", root / "installed"
    shutil.rmtree(app, ignore_errors=True)
    app.mkdir()
    copy_into(app, image)
    reused = done.is_file() and not FRESH
    if not reused:
        prune_stale(cache, image, key)
        done.unlink(missing_ok=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        spec = ".[" + ",".join(image.extras) + "]"
        command = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                   *(["-e"] if image.editable else []), spec]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
        result = subprocess.run(command, cwd=app, env=env, capture_output=True, text=True,
                                timeout=INSTALL_TIMEOUT_S)
        assert result.returncode == 0, f"{image.service}: {' '.join(command)} failed:\n{result.stderr[-3000:]}"
        done.write_text(" ".join(command) + "\n")
    return Built(image, app, venv, time.monotonic() - started, reused, lock)


SERVICES = tuple(sorted(p.parent.name for p in (REPO / "services").glob("*/Dockerfile")))


@pytest.fixture(scope="session")
def images() -> Iterator[dict[str, Built]]:
    """One venv per image (each image's extras set is its own), installed in parallel when new."""
    wanted = {name for overlay in OVERLAYS for name in containers(overlay)}
    parsed = {name: parse_dockerfile(name) for name in sorted(wanted)}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {name: pool.submit(install, image, VENV_CACHE) for name, image in parsed.items()}
        built = {name: future.result() for name, future in futures.items()}
    print(f"\nvenvs: {time.monotonic() - started:.0f} s for {len(built)} images ("
          + ", ".join(f"{n} {b.seconds:.0f} s{' (reused)' if b.reused else ''}" for n, b in built.items()) + ")")
    try:
        yield built
    finally:
        for b in built.values():
            b.lock.close()


# --------------------------------------------------------------------------------------------------------------
# Pods: the environment and files a container gets
# --------------------------------------------------------------------------------------------------------------

def rendered(overlay: str) -> list[dict]:
    if overlay in COMBINATIONS:
        return apply_kustomization(K8S / "overlays", copy.deepcopy(COMBINATIONS[overlay]), [])
    return build(K8S / overlay)


def containers(overlay: str) -> dict[str, tuple[dict, dict]]:
    """Deployment name -> (pod spec, its one container)."""
    out = {}
    for resource in rendered(overlay):
        if resource.get("kind") == "Deployment":
            pod = resource["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            out[resource["metadata"]["name"]] = (pod, container)
    return out


def config_maps(resources: list[dict]) -> dict[str, dict[str, str]]:
    return {r["metadata"]["name"]: r.get("data", {}) for r in resources if r.get("kind") == "ConfigMap"}


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate and its key: what librdkafka needs to accept a CA file and a client pair."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=lineguard-check", "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    return {"cert": (folder / "cert.pem").read_text(), "key": (folder / "key.pem").read_text()}


def placeholder(name: str, tls: dict[str, str]) -> str:
    """The content of a Secret file the repository does not hold, by its kind."""
    if name.endswith((".crt", ".pem")):
        return tls["cert"]
    if name.endswith(".key"):
        return tls["key"]
    if name == "users.yaml":  # services/console/README.md: the operators' users file
        from services.console.auth import hash_password

        return f"users:\n  operator:\n    name: Placeholder\n    password: {hash_password('placeholder')}\n"
    return "placeholder\n"


@dataclass
class Pod:
    service: str
    command: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]  # mountPath -> where it is in the test


def prepare_pod(overlay: str, service: str, image: Built, root: Path, tls: dict[str, str]) -> Pod:
    resources = rendered(overlay)
    maps = config_maps(resources)
    pod_spec, container = containers(overlay)[service]
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    mounts: dict[str, Path] = {"/app": image.app, "/venv": image.venv}
    for mount in container.get("volumeMounts", []):
        mounts[mount["mountPath"]] = root / mount["mountPath"].lstrip("/")

    # One pass, longest mount first: a rewritten path (under this machine's /tmp) is never rewritten again.
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
                         + r")(?=/|$|[,:;\s])")

    def rewrite(value: str) -> str:
        return pattern.sub(lambda m: str(mounts[m.group(1)]), value)

    # The image's ENV, then envFrom, then env (later wins, as in a pod).
    env: dict[str, str] = {}
    for name, value in image.image.env:
        env[name] = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: {**BASE_IMAGE_ENV, **env}.get(m.group(1) or m.group(2), ""),
                           value)
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
        elif "secretRef" in source:
            name = source["secretRef"]["name"]
            if name in OPERATOR_SECRETS:
                env.update(OPERATOR_SECRETS[name])
            else:
                assert source["secretRef"].get("optional"), f"{service}: Secret {name} is required and not supplied"
        else:
            raise AssertionError(f"{service}: envFrom {source} not handled")
    for item in container.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
        else:
            ref = item["valueFrom"]
            if "fieldRef" in ref:
                value = {"metadata.name": f"{service}-check-0", "metadata.namespace": NAMESPACE,
                         "status.podIP": "10.0.0.10", "spec.nodeName": "node-check"}[ref["fieldRef"]["fieldPath"]]
            elif "configMapKeyRef" in ref:
                value = maps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
            elif "secretKeyRef" in ref:
                value = OPERATOR_SECRETS.get(ref["secretKeyRef"]["name"], {}).get(
                    ref["secretKeyRef"]["key"], f"placeholder-{ref['secretKeyRef']['key'].lower()}")
            else:
                raise AssertionError(f"{service}: env {item['name']} valueFrom {ref} not handled")
        env[item["name"]] = value
    env = {name: rewrite(value) for name, value in env.items()}

    # The files: ConfigMap volumes as rendered, emptyDirs empty, Secret files named in the env as placeholders.
    referenced = {Path(p) for v in env.values() for p in re.findall(r"(/[\w./-]+)", v)}
    for mount in container.get("volumeMounts", []):
        where = mounts[mount["mountPath"]]
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            where.mkdir(parents=True, exist_ok=True)
        elif "configMap" in volume:
            data = maps[volume["configMap"]["name"]]
            if "subPath" in mount:
                where.parent.mkdir(parents=True, exist_ok=True)
                where.write_text(data[mount["subPath"]])
            else:
                items = {i["key"]: i["path"] for i in volume["configMap"].get("items", [])} or {k: k for k in data}
                for key, path in items.items():
                    (where / path).parent.mkdir(parents=True, exist_ok=True)
                    (where / path).write_text(data[key])
        elif "secret" in volume:
            files = [where] if "subPath" in mount else [
                *(where / i["path"] for i in volume["secret"].get("items", [])),
                *(p for p in referenced if where in p.parents)]
            for path in files:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(placeholder(path.name, tls))
        else:
            raise AssertionError(f"{service}: volume {volume} not handled")
    # The image's own folders (RUN mkdir in the Dockerfile) and HOME: writable places the env names.
    for name, value in env.items():
        if name == "HOME" or (value.startswith(str(image.app / "var")) and not Path(value).suffix):
            Path(value).mkdir(parents=True, exist_ok=True)
        elif value.startswith(str(image.app / "var")):
            Path(value).parent.mkdir(parents=True, exist_ok=True)
    command = [*container.get("command", []), *container.get("args", [])]
    assert command, f"{service}: the container relies on the image's CMD; this test runs the pod's command"
    return Pod(service, command, env, mounts)


# --------------------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    pod: Pod
    returncode: int
    summary: dict | None
    output: str
    seconds: float


def run_check(pod: Pod, image: Built) -> Outcome:
    env = {**BASE_IMAGE_ENV, **pod.env}  # nothing from this process: PATH is the image's, the venv first
    started = time.monotonic()
    result = subprocess.run([*pod.command, "--check-config"], cwd=image.app, env=env, capture_output=True,
                            text=True, timeout=CHECK_TIMEOUT_S)
    summary = None
    for line in result.stdout.splitlines():
        if line.startswith("{") and '"config_checked"' in line:
            summary = json.loads(line)
    return Outcome(pod, result.returncode, summary, (result.stdout + result.stderr)[-4000:],
                   time.monotonic() - started)


@pytest.fixture(scope="session")
def outcomes(images: dict[str, Built], tls_files: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Outcome]:
    root = tmp_path_factory.mktemp("pods")
    pods = {(overlay, service): prepare_pod(overlay, service, images[service],
                                            root / re.sub(r"[^\w.-]+", "-", overlay) / service, tls_files)
            for overlay in OVERLAYS for service in containers(overlay)}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {key: pool.submit(run_check, pod, images[key[1]]) for key, pod in pods.items()}
        done = {key: future.result() for key, future in futures.items()}
    print(f"\nchecks: {time.monotonic() - started:.0f} s for {len(done)} containers")
    return done


def asks(env: dict[str, str]) -> set[str]:
    found = set()
    if env.get("LINEGUARD_KAFKA_MSK_IAM_REGION"):
        found.add("msk")
    if env.get("LINEGUARD_SCHEMA_REGISTRY_URL"):
        found.add("registry")
    if "ssl.ca.location=" in env.get("LINEGUARD_KAFKA_SECURITY", ""):
        found.add("tls")
    return found


def security(env: dict[str, str]) -> dict[str, str]:
    """LINEGUARD_KAFKA_SECURITY's librdkafka pairs (the values these overlays set hold no commas)."""
    raw = env.get("LINEGUARD_KAFKA_SECURITY", "")
    return dict(pair.split("=", 1) for pair in raw.split(",") if pair)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_of_the_overlay_starts_with_what_it_asks_for(
        overlay: str, outcomes: dict[tuple[str, str], Outcome]) -> None:
    mine = {service: o for (name, service), o in outcomes.items() if name == overlay}
    assert set(mine) == set(containers(overlay)) and len(mine) >= 7, sorted(mine)
    failures = {s: f"exit {o.returncode}:\n{o.output}" for s, o in mine.items() if o.returncode != 0 or not o.summary}
    assert not failures, "\n\n".join(f"--- {s}: {text}" for s, text in failures.items())
    assert set.union(*(asks(o.pod.env) for o in mine.values())) == OVERLAY_ASKS[overlay]
    for service, outcome in mine.items():
        summary, env = outcome.summary, outcome.pod.env
        assert summary is not None and summary["service"] == service
        assert summary["routes"] > 0, f"{service}: no HTTP routes built"
        wanted = asks(env)
        kafka = summary["kafka"]
        if service in NO_KAFKA_AT_BUILD:
            assert not kafka["clients"], f"{service} builds Kafka clients now: drop it from NO_KAFKA_AT_BUILD"
            continue
        where = f"{overlay} {service}: {json.dumps(summary)}"
        assert kafka["clients"], where
        assert kafka["bootstrap"] == env["LINEGUARD_KAFKA_BOOTSTRAP"], where
        if "msk" in wanted:
            assert (kafka["security_protocol"], kafka["sasl_mechanism"], kafka["msk_iam"]) == (
                "SASL_SSL", "OAUTHBEARER", True), where
        else:
            assert kafka.get("msk_iam") is None, where
            assert kafka["security_protocol"] == security(env).get("security.protocol", "PLAINTEXT"), where
        if "tls" in wanted:
            ca = security(env)["ssl.ca.location"]
            assert kafka["ssl_ca_location"] == ca and Path(ca).is_file() and ca.startswith(str(outcome.pod.mounts[
                "/etc/kafka/ca"])), where
        assert summary["schema_registry"] is ("registry" in wanted), where
        assert summary["wire_format"] == (["confluent"] if "registry" in wanted else ["single-object"]), where


def test_the_dockerfile_reader_sees_what_each_image_installs() -> None:
    """The reader behind the venvs: extras and COPY lines as the Dockerfiles spell them (fast, no install)."""
    advisor = parse_dockerfile("advisor")
    assert set(advisor.extras) >= {"advisor", "registry", "aws"} and advisor.editable
    assert ("PYTHONUNBUFFERED", "1") in advisor.env and advisor.workdir == "/app"
    for service in SERVICES:
        image = parse_dockerfile(service)
        assert image.copies and (("lineguard/",), "lineguard/") in image.copies, service
