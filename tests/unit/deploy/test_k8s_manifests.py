"""The Kubernetes manifests in deploy/k8s, checked without kubectl or kustomize.

A small kustomize-like resolver (tests/support/kustomize_lite.py) builds the base and every overlay (resources, components, configMapGenerator
with create/merge/replace, strategic-merge patches with or without a target, images, replicas, namespace) and the
tests check what a cluster would receive. The resolver refuses any kustomization field or patch form it does not
implement, so a new construct fails here loudly instead of being skipped.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kustomize_lite import (
    CLUSTER_SCOPED,
    KustomizeError,
    build,
    load_documents,
    read_kustomization,
    resource_id,
    split_image,
)

from lineguard.catalog import load_catalog
from lineguard.plant import default_plant_path, load_plant

REPO_ROOT = Path(__file__).resolve().parents[3]
K8S = REPO_ROOT / "deploy" / "k8s"
GENERATOR = K8S / "gen_strimzi_topics.py"
SERVICES = ("ingest", "vision", "normalizer", "advisor", "actuator", "notifier", "console")
BUILDS = ("base", "overlays/production", "overlays/msk")
NAMESPACE = "lineguard"


# --------------------------------------------------------------------------------------------------------------
# What every Deployment must have
# --------------------------------------------------------------------------------------------------------------

def env_value(container: dict, name: str) -> str | None:
    for item in container.get("env", []):
        if item["name"] == name:
            return item.get("value")
    return None


def deployment_problems(deployment: dict) -> list[str]:
    """Everything wrong with one Deployment, as readable lines (empty = fine)."""
    name = deployment["metadata"]["name"]
    problems: list[str] = []
    pod = deployment["spec"]["template"]["spec"]
    if pod.get("terminationGracePeriodSeconds", 30) < 30:
        problems.append(f"{name}: terminationGracePeriodSeconds below 30 (batch + flush)")
    pod_security = pod.get("securityContext", {})
    if pod_security.get("runAsNonRoot") is not True:
        problems.append(f"{name}: pod securityContext.runAsNonRoot is not true")
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    containers = pod.get("containers", [])
    if not containers:
        problems.append(f"{name}: no containers")
    for container in containers:
        where = f"{name}/{container['name']}"
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        if "http" not in ports:
            problems.append(f"{where}: no container port named http")
        elif env_value(container, "LINEGUARD_HTTP_PORT") != str(ports["http"]):
            problems.append(f"{where}: env LINEGUARD_HTTP_PORT={env_value(container, 'LINEGUARD_HTTP_PORT')!r} "
                            f"does not match the http container port {ports['http']}")
        # /metrics alone on its own port, so NetworkPolicy can open it to Prometheus without opening the API
        if "metrics" not in ports:
            problems.append(f"{where}: no container port named metrics")
        elif env_value(container, "LINEGUARD_METRICS_PORT") != str(ports["metrics"]) or \
                ports["metrics"] == ports.get("http"):
            problems.append(f"{where}: env LINEGUARD_METRICS_PORT={env_value(container, 'LINEGUARD_METRICS_PORT')!r}"
                            f" is not the metrics container port {ports['metrics']} (apart from http)")
        for probe_name, path in (("startupProbe", None), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            probe = container.get(probe_name)
            if not probe or "httpGet" not in probe:
                problems.append(f"{where}: no HTTP {probe_name}")
                continue
            if probe["httpGet"].get("port") not in ("http", ports.get("http")):
                problems.append(f"{where}: {probe_name} is not on the http port")
            if path and probe["httpGet"].get("path") != path:
                problems.append(f"{where}: {probe_name} path is {probe['httpGet'].get('path')!r}, not {path}")
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            for key in ("cpu", "memory"):
                if key not in resources.get(section, {}):
                    problems.append(f"{where}: resources.{section}.{key} missing")
        security = container.get("securityContext", {})
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if security.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities do not drop ALL")
        if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: not runAsNonRoot")
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        tmp = mounts.get("/tmp")
        if not tmp or "emptyDir" not in volumes.get(tmp["name"], {}):
            problems.append(f"{where}: no writable emptyDir at /tmp")
        # Kubernetes expands $(VAR) only for variables defined earlier in the list.
        defined: set[str] = set()
        for item in container.get("env", []):
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", item.get("value", "")):
                if ref not in defined:
                    problems.append(f"{where}: env {item['name']} uses $({ref}) before it is defined")
            defined.add(item["name"])
    return problems


def by_kind(resources: list[dict], kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r.get("kind") == kind}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return {name: build(K8S / name) for name in BUILDS}


# --------------------------------------------------------------------------------------------------------------
# Files and references
# --------------------------------------------------------------------------------------------------------------

def all_yaml_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def test_every_yaml_file_parses() -> None:
    files = all_yaml_files()
    assert len(files) >= 15, files
    for path in files:
        docs = load_documents(path)  # raises on a syntax error
        assert docs, f"{path}: no documents"
        if path.name not in ("kustomization.yaml", "plant.yaml", "playbooks.yaml"):
            for doc in docs:
                assert doc.get("apiVersion") and doc.get("kind"), f"{path}: a document without apiVersion/kind"
                assert doc.get("metadata", {}).get("name"), f"{path}: a {doc['kind']} without a name"


def test_every_kustomization_reference_exists() -> None:
    kustomizations = sorted(K8S.rglob("kustomization.yaml"))
    assert {p.parent.relative_to(K8S).as_posix() for p in kustomizations} >= {
        "base", "overlays/production", "overlays/msk", "components/strimzi-topics", "components/msk",
        "components/schema-registry", "components/monitoring"}
    for path in kustomizations:
        folder = path.parent
        doc = read_kustomization(folder)
        for entry in doc.get("resources", []):
            assert (folder / entry).exists(), f"{path}: resource {entry} does not exist"
            if (folder / entry).is_dir():
                assert read_kustomization(folder / entry).get("kind", "Kustomization") == "Kustomization"
        for entry in doc.get("components", []):
            assert (folder / entry).is_dir(), f"{path}: component {entry} does not exist"
            assert read_kustomization(folder / entry)["kind"] == "Component", f"{path}: {entry} is no Component"
        for entry in doc.get("patches", []):
            if "path" in entry:
                assert (folder / entry["path"]).is_file(), f"{path}: patch {entry['path']} does not exist"
        for generator in doc.get("configMapGenerator", []):
            for entry in generator.get("files", []):
                assert (folder / entry.rpartition("=")[2]).is_file(), f"{path}: {entry} does not exist"
        if folder.parent.name == "components":
            assert doc["kind"] == "Component", f"{path}: components/ holds kind: Component only"


def test_every_manifest_file_is_used_by_a_kustomization() -> None:
    """A manifest no kustomization lists is never deployed: only the secrets example may be left out (on purpose)."""
    listed: set[Path] = set()
    for path in K8S.rglob("kustomization.yaml"):
        doc = read_kustomization(path.parent)
        listed.update((path.parent / e).resolve() for e in doc.get("resources", []))
        listed.update((path.parent / e["path"]).resolve() for e in doc.get("patches", []) if "path" in e)
        for generator in doc.get("configMapGenerator", []):
            listed.update((path.parent / e.rpartition("=")[2]).resolve() for e in generator.get("files", []))
    unused = {p.relative_to(K8S).as_posix() for p in all_yaml_files()
              if p.name != "kustomization.yaml" and p.resolve() not in listed}
    assert unused == {"base/secrets.example.yaml"}


# --------------------------------------------------------------------------------------------------------------
# The built output
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build_name", BUILDS)
def test_every_deployment_is_production_ready(built: dict[str, list[dict]], build_name: str) -> None:
    deployments = by_kind(built[build_name], "Deployment")
    assert set(deployments) == set(SERVICES)
    problems = [p for d in deployments.values() for p in deployment_problems(d)]
    assert problems == []


@pytest.mark.parametrize("build_name", BUILDS)
def test_services_accounts_and_references_resolve(built: dict[str, list[dict]], build_name: str) -> None:
    resources = built[build_name]
    services = by_kind(resources, "Service")
    accounts = by_kind(resources, "ServiceAccount")
    config_maps = by_kind(resources, "ConfigMap")
    for name, deployment in by_kind(resources, "Deployment").items():
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels), name
        assert template["spec"]["serviceAccountName"] in accounts, name
        service = services[name]
        assert selects(service["spec"]["selector"], labels), f"Service {name} does not select its pods"
        assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", "http"),
                                                                                    ("metrics", "metrics")]
        (container,) = template["spec"]["containers"]
        assert container["image"].startswith(f"ghcr.io/lineguard/{name}:")
        assert container["command"] == ["python", "-m", f"services.{name}"]
        assert env_value(container, "LINEGUARD_SERVICE_NAME") == name
        instance = next(e for e in container["env"] if e["name"] == "LINEGUARD_INSTANCE_ID")
        assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        # ConfigMaps must exist in the build; Secrets are created with kubectl, so their references are optional.
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in config_maps, name
            else:
                assert source["secretRef"].get("optional") is True, f"{name}: {source} is not optional"
        for volume in template["spec"]["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, f"{name}: volume {volume['name']}"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        plant = mounts["/etc/lineguard/plant.yaml"]
        plant_volume = next(v for v in template["spec"]["volumes"] if v["name"] == plant["name"])
        assert plant_volume["configMap"]["name"] == "lineguard-plant"
        assert plant["subPath"] in config_maps["lineguard-plant"]["data"]
    for resource in resources:
        if resource["kind"] not in CLUSTER_SCOPED:
            assert resource["metadata"].get("namespace") == NAMESPACE, resource_id(resource)


@pytest.mark.parametrize("build_name", BUILDS)
def test_shared_settings(built: dict[str, list[dict]], build_name: str) -> None:
    settings = by_kind(built[build_name], "ConfigMap")["lineguard-settings"]["data"]
    assert settings["LINEGUARD_PLANT_FILE"] == "/etc/lineguard/plant.yaml"
    assert settings["LINEGUARD_LOG_LEVEL"] in ("DEBUG", "INFO", "WARNING", "ERROR")
    assert settings["LINEGUARD_KAFKA_BOOTSTRAP"]
    assert not any(k in settings for k in ("LINEGUARD_KAFKA_SECURITY", "LINEGUARD_SCHEMA_REGISTRY_AUTH")), \
        "secrets belong in the Secret, not the ConfigMap"
    # Every setting the ConfigMap sets is one the runtime knows (a typo would be silently ignored otherwise).
    from lineguard.settings import Settings

    known = {row[0] for row in Settings.describe()} | {"OTEL_EXPORTER_OTLP_ENDPOINT", "AWS_REGION"}
    assert set(settings) <= known, set(settings) - known


def test_the_advisor_has_a_disruption_budget_and_a_long_startup(built: dict[str, list[dict]]) -> None:
    resources = built["overlays/production"]
    budget = by_kind(resources, "PodDisruptionBudget")["advisor"]
    advisor = by_kind(resources, "Deployment")["advisor"]
    assert selects(budget["spec"]["selector"]["matchLabels"], advisor["spec"]["template"]["metadata"]["labels"])
    assert budget["spec"]["maxUnavailable"] == 1
    assert advisor["spec"]["replicas"] >= 2, "a PDB with maxUnavailable 1 on one replica protects nothing"
    (container,) = advisor["spec"]["template"]["spec"]["containers"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "table recovery needs minutes"


def test_ingest_keeps_one_mqtt_session(built: dict[str, list[dict]]) -> None:
    for build_name in BUILDS:
        ingest = by_kind(built[build_name], "Deployment")["ingest"]
        (container,) = ingest["spec"]["template"]["spec"]["containers"]
        # One fixed client id is only safe with one replica that hands the session over (Recreate).
        assert ingest["spec"].get("replicas", 1) == 1, build_name
        assert ingest["spec"]["strategy"]["type"] == "Recreate", build_name
        assert env_value(container, "LINEGUARD_MQTT_CLIENT_ID")


def test_production_overlay(built: dict[str, list[dict]]) -> None:
    resources = built["overlays/production"]
    deployments = by_kind(resources, "Deployment")
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        _, tag, digest = split_image(container["image"])
        assert digest or (tag and tag != "latest"), f"{name}: production images are pinned"
    settings = by_kind(resources, "ConfigMap")["lineguard-settings"]["data"]
    assert settings["LINEGUARD_SCHEMA_REGISTRY_URL"].startswith(("http://", "https://"))
    (normalizer,) = deployments["normalizer"]["spec"]["template"]["spec"]["containers"]
    assert (env_value(normalizer, "LINEGUARD_LAKE_URL") or "").startswith("s3://")
    # The patch merged into the env list; it did not replace it.
    assert env_value(normalizer, "LINEGUARD_HTTP_PORT") == "8080"
    assert deployments["normalizer"]["spec"]["replicas"] <= load_catalog()["raw.telemetry.v1"].partitions


def test_production_topics_equal_the_catalog(built: dict[str, list[dict]]) -> None:
    topics = list(by_kind(built["overlays/production"], "KafkaTopic").values())
    catalog = load_catalog()
    assert sorted(t["spec"]["topicName"] for t in topics) == sorted(catalog.names())
    for topic in topics:
        spec = catalog[topic["spec"]["topicName"]]
        assert topic["apiVersion"] == "kafka.strimzi.io/v1"  # Strimzi 1.0 serves v1 only
        assert topic["metadata"]["labels"]["strimzi.io/cluster"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", topic["metadata"]["name"])
        assert topic["spec"]["partitions"] == spec.partitions
        assert topic["spec"]["replicas"] == 3
        config = topic["spec"]["config"]
        assert config["min.insync.replicas"] == 2
        assert config["cleanup.policy"] == spec.cleanup_policy
        assert config["retention.ms"] == spec.retention_ms
    assert by_kind(built["overlays/msk"], "KafkaTopic") == {}, "MSK has no Strimzi topic operator"


@pytest.mark.parametrize("build_name", ["overlays/production", "overlays/msk"])
def test_one_service_monitor_per_service(built: dict[str, list[dict]], build_name: str) -> None:
    resources = built[build_name]
    monitors = by_kind(resources, "ServiceMonitor")
    services = by_kind(resources, "Service")
    assert set(monitors) == set(SERVICES)
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        matched = [s for s in services.values()
                   if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert [s["metadata"]["name"] for s in matched] == [name]
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
            assert endpoint["port"] == "metrics", f"{name}: scrape the metrics port, never the API port"


def test_msk_overlay(built: dict[str, list[dict]]) -> None:
    resources = built["overlays/msk"]
    settings = by_kind(resources, "ConfigMap")["lineguard-settings"]["data"]
    brokers = settings["LINEGUARD_KAFKA_BOOTSTRAP"].split(",")
    assert brokers and all(b.rsplit(":", 1)[1] == "9098" for b in brokers), "MSK IAM listens on 9098"
    assert "LINEGUARD_SCHEMA_REGISTRY_URL" not in settings
    accounts = by_kind(resources, "ServiceAccount")
    assert set(accounts) == set(SERVICES)
    for name, account in accounts.items():
        role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert role.startswith("arn:aws:iam::") and role.endswith(f"-{name}"), f"{name}: a role of its own"
        assert account["metadata"]["labels"]["app.kubernetes.io/name"] == name, "the patch kept the labels"
    # The base is untouched by the overlays: it still points at the in-cluster Strimzi bootstrap.
    base_settings = by_kind(built["base"], "ConfigMap")["lineguard-settings"]["data"]
    assert base_settings["LINEGUARD_KAFKA_BOOTSTRAP"].endswith(":9092")


def test_playbooks_config_map_is_the_example_playbooks() -> None:
    """The advisor reads playbooks.yaml next to the plant model: the pod gets it beside /etc/lineguard/plant.yaml."""
    assert (K8S / "base" / "playbooks.yaml").read_text() == \
        (default_plant_path().parent / "playbooks.yaml").read_text(), \
        "deploy/k8s/base/playbooks.yaml differs from examples/cookie-line/playbooks.yaml: cp the example over it"
    advisor = yaml.safe_load_all((K8S / "base" / "advisor.yaml").read_text())
    mounts = [m["mountPath"] for d in advisor if d and d["kind"] == "Deployment"
              for m in d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]]
    assert "/etc/lineguard/playbooks.yaml" in mounts


def test_plant_config_map_is_the_example_plant() -> None:
    copy_path = K8S / "base" / "plant.yaml"
    assert copy_path.read_text() == default_plant_path().read_text(), \
        "deploy/k8s/base/plant.yaml differs from examples/cookie-line/plant.yaml: cp the example over it"
    assert load_plant(copy_path).lines


def test_secrets_example_holds_placeholders_only(built: dict[str, list[dict]]) -> None:
    secrets = load_documents(K8S / "base" / "secrets.example.yaml")
    names = {s["metadata"]["name"] for s in secrets}
    referenced = {source["secretRef"]["name"]
                  for deployment in by_kind(built["base"], "Deployment").values()
                  for source in deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
                  if "secretRef" in source}
    assert "lineguard-secrets" in names and names <= referenced
    for secret in secrets:
        assert secret["kind"] == "Secret" and "data" not in secret
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value, f"{secret['metadata']['name']}.{key} looks like a real value"
    for resources in built.values():
        assert by_kind(resources, "Secret") == {}, "no Secret is ever applied by kustomize"


def test_readme_site_overlay_example_builds(tmp_path: Path) -> None:
    """The README's own-site overlay, built on a copy of deploy/k8s: settings merge, plant replaced, digest set."""
    readme = (K8S / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert example, "the README lost its overlay example"
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    site = tree / "overlays" / "plant1"
    site.mkdir()
    (site / "kustomization.yaml").write_text(example.group(1))
    (site / "plant.yaml").write_text("# my plant\n")
    resources = build(site)
    settings = by_kind(resources, "ConfigMap")["lineguard-settings"]["data"]
    assert settings["LINEGUARD_KAFKA_BOOTSTRAP"] == "my-cluster-kafka-bootstrap.kafka:9093"
    assert settings["LINEGUARD_LOG_LEVEL"] == "INFO", "merge keeps what it does not name"
    assert by_kind(resources, "ConfigMap")["lineguard-plant"]["data"] == {"plant.yaml": "# my plant\n"}
    (advisor,) = by_kind(resources, "Deployment")["advisor"]["spec"]["template"]["spec"]["containers"]
    assert advisor["image"] == "ghcr.io/lineguard/advisor@sha256:..."
    assert [p for d in by_kind(resources, "Deployment").values() for p in deployment_problems(d)] == []


# --------------------------------------------------------------------------------------------------------------
# The checks and the resolver catch what they should
# --------------------------------------------------------------------------------------------------------------

def test_deployment_checks_catch_broken_manifests(built: dict[str, list[dict]]) -> None:
    good = by_kind(built["base"], "Deployment")["normalizer"]
    assert deployment_problems(good) == []
    breakages = {
        "no HTTP readinessProbe": lambda c, p: c.pop("readinessProbe"),
        "LINEGUARD_HTTP_PORT": lambda c, p: next(e for e in c["env"] if e["name"] == "LINEGUARD_HTTP_PORT")
        .update(value="8083"),
        "LINEGUARD_METRICS_PORT": lambda c, p: next(e for e in c["env"] if e["name"] == "LINEGUARD_METRICS_PORT")
        .update(value="8080"),
        "no container port named metrics": lambda c, p: c.update(ports=[q for q in c["ports"] if q["name"] == "http"]),
        "limits.memory missing": lambda c, p: c["resources"]["limits"].pop("memory"),
        "readOnlyRootFilesystem": lambda c, p: c["securityContext"].update(readOnlyRootFilesystem=False),
        "terminationGracePeriodSeconds": lambda c, p: p.update(terminationGracePeriodSeconds=5),
        "/tmp": lambda c, p: c["volumeMounts"].pop(0),
        "livenessProbe path": lambda c, p: c["livenessProbe"]["httpGet"].update(path="/readyz"),
    }
    for expected, break_it in breakages.items():
        broken = copy.deepcopy(good)
        pod = broken["spec"]["template"]["spec"]
        break_it(pod["containers"][0], pod)
        problems = deployment_problems(broken)
        assert any(expected in p for p in problems), (expected, problems)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  template:
    spec:
      containers:
        - name: app
          image: example/app:1
          env: [{name: A, value: "1"}, {name: B, value: "2"}]
"""


def test_resolver_applies_patches_generators_and_images(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "base/kustomization.yaml": "resources: [app.yaml]\nconfigMapGenerator:\n"
                                   "  - {name: settings, literals: [X=1, Y=2]}\n",
        "base/app.yaml": DEPLOYMENT,
        "comp/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"
                                   "configMapGenerator:\n  - {name: settings, behavior: merge, literals: [Y=3]}\n",
        "over/kustomization.yaml": "resources: [../base]\ncomponents: [../comp]\nnamespace: ns\n"
                                   "patches: [{path: p.yaml}]\nimages: [{name: example/app, newTag: '2'}]\n"
                                   "replicas: [{name: app, count: 4}]\n",
        "over/p.yaml": "kind: Deployment\nmetadata: {name: app}\nspec:\n  template:\n    spec:\n"
                       "      containers: [{name: app, env: [{name: B, value: patched}, {name: C, value: new}]}]\n",
    })
    resources = build(tmp_path / "over")
    deployment = by_kind(resources, "Deployment")["app"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "patched"},
                                {"name": "C", "value": "new"}]
    assert container["image"] == "example/app:2"
    assert deployment["spec"]["replicas"] == 4
    assert deployment["metadata"]["namespace"] == "ns"
    assert by_kind(resources, "ConfigMap")["settings"]["data"] == {"X": "1", "Y": "3"}


@pytest.mark.parametrize("files, message", [
    ({"k/kustomization.yaml": "resources: [missing.yaml]\n"}, "does not exist"),
    ({"k/kustomization.yaml": "resources: [app.yaml]\npatches:\n  - patch: |\n      kind: Deployment\n"
                              "      metadata: {name: other}\n", "k/app.yaml": DEPLOYMENT}, "matches no resource"),
    ({"k/kustomization.yaml": "resources: [app.yaml]\ncommonLabels: {a: b}\n", "k/app.yaml": DEPLOYMENT},
     "does not implement"),
    ({"k/kustomization.yaml": "components: [../c]\n", "c/kustomization.yaml": "resources: []\n"},
     "is not kind: Component"),
    ({"k/kustomization.yaml": "configMapGenerator: [{name: s, behavior: merge, literals: [A=1]}]\n"},
     "needs exactly one"),
])
def test_resolver_rejects_what_kustomize_would(tmp_path: Path, files: dict[str, str], message: str) -> None:
    write_tree(tmp_path, files)
    with pytest.raises(KustomizeError, match=message):
        build(tmp_path / "k")


# --------------------------------------------------------------------------------------------------------------
# The Strimzi topics generator
# --------------------------------------------------------------------------------------------------------------

def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    """The generator as a user runs it: a separate process, from the repository root."""
    return subprocess.run([sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def generator_main():
    """The generator's main() in this process (much faster than a process per call)."""
    spec = importlib.util.spec_from_file_location("gen_strimzi_topics_under_test", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_committed_strimzi_topics_are_up_to_date() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr + "\nrun: .venv/bin/python deploy/k8s/gen_strimzi_topics.py"


def test_generator_check_fails_on_a_stale_file(tmp_path: Path, generator_main, capsys) -> None:
    output = tmp_path / "topics.yaml"
    assert generator_main(["--output", str(output)]) == 0
    assert generator_main(["--check", "--output", str(output)]) == 0
    output.write_text(output.read_text().replace("partitions: 6", "partitions: 12"))
    capsys.readouterr()
    assert generator_main(["--check", "--output", str(output)]) == 1
    stderr = capsys.readouterr().err
    assert "stale" in stderr and "-  partitions: 12" in stderr and "+  partitions: 6" in stderr
    assert generator_main(["--check", "--output", str(tmp_path / "missing.yaml")]) == 1
    # The real command line agrees (exit status of the process).
    assert run_generator("--check", "--output", str(output)).returncode == 1


def test_generator_options_and_bad_input(tmp_path: Path, generator_main, capsys) -> None:
    output = tmp_path / "topics.yaml"
    assert generator_main(["--output", str(output), "--prefix", "plant1.", "--cluster", "kafka-a"]) == 0
    topics = load_documents(output)
    assert {t["spec"]["topicName"] for t in topics} == {"plant1." + n for n in load_catalog().names()}
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics} == {"kafka-a"}
    assert "plant1-raw-telemetry-v1-dlq" in {t["metadata"]["name"] for t in topics}
    capsys.readouterr()
    assert generator_main(["--output", str(output), "--replicas", "1", "--min-insync-replicas", "2"]) == 2
    assert "min.insync.replicas" in capsys.readouterr().err
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "topics.yaml").write_text("topics: [{name: x, cleanup_policy: sometimes}]\n")
    assert generator_main(["--output", str(output), "--schemas-dir", str(tmp_path / "schemas")]) == 2
    assert "cleanup_policy" in capsys.readouterr().err
