"""Every custom resource the overlays render validates against its CRD's openAPIV3Schema, offline.

The schemas are vendored under tests/fixtures/crds/ (SOURCES.md: repository, path, commit): Strimzi KafkaTopic and
KafkaUser (kafka.strimzi.io/v1), KEDA ScaledObject and TriggerAuthentication (keda.sh/v1alpha1), Prometheus
Operator ServiceMonitor and PodMonitor (monitoring.coreos.com/v1). Validation is strict, as `kubectl apply
--validate=strict` and `kubeconform -strict` are: a field the schema does not declare is an error (the API server
would silently prune it), unless the schema keeps unknown fields (x-kubernetes-preserve-unknown-fields).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from kustomize_lite import build

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
CRDS = ROOT / "tests" / "fixtures" / "crds"
BUILDS = ("base", "overlays/production", "overlays/msk")
BUILT_IN_GROUPS = {"", "apps", "policy", "networking.k8s.io", "batch", "autoscaling", "rbac.authorization.k8s.io"}


def strict(schema: dict) -> dict:
    """The schema with unknown fields forbidden wherever it lists the fields and does not keep unknown ones."""
    schema = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def load_crds() -> dict[tuple[str, str], dict]:
    crds = {}
    for path in sorted(CRDS.glob("*.json")):
        crd = json.loads(path.read_text())
        crds[(f"{crd['group']}/{crd['version']}", crd["kind"])] = crd
    return crds


def group_of(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def validate(resource: dict, crd: dict) -> list[str]:
    schema = strict(crd["openAPIV3Schema"])
    # metadata is the API server's (ObjectMeta), not the CRD's: the CRD schema says only `type: object`
    schema.get("properties", {}).pop("metadata", None)
    validator = jsonschema.Draft7Validator(schema)
    body = {k: v for k, v in resource.items() if k != "metadata"}
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))]


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], dict]:
    return load_crds()


def test_the_vendored_crds_are_the_versions_the_manifests_use(crds: dict) -> None:
    assert set(crds) == {("kafka.strimzi.io/v1", "KafkaTopic"), ("kafka.strimzi.io/v1", "KafkaUser"),
                         ("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication"),
                         ("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}
    for (api_version, kind), crd in crds.items():
        assert crd["version"] in crd["served_versions"], f"{kind}: {api_version} is not served"
        jsonschema.Draft7Validator.check_schema(crd["openAPIV3Schema"])
    # Strimzi 1.0 serves v1 only: v1beta2 KafkaTopics would be refused
    assert crds[("kafka.strimzi.io/v1", "KafkaTopic")]["served_versions"] == ["v1"]
    sources = (CRDS / "SOURCES.md").read_text()
    for crd in crds.values():
        assert f"{crd['group']}_{crd['kind']}_{crd['version']}.json" in sources


@pytest.mark.parametrize("build_name", BUILDS)
def test_every_custom_resource_validates_against_its_crd(crds: dict, build_name: str) -> None:
    problems: list[str] = []
    checked = 0
    for resource in build(K8S / build_name):
        if group_of(resource["apiVersion"]) in BUILT_IN_GROUPS:
            continue
        key = (resource["apiVersion"], resource["kind"])
        name = f"{resource['kind']}/{resource['metadata']['name']}"
        if key not in crds:
            problems.append(f"{name}: no vendored CRD schema for {key} (add it to tests/fixtures/crds)")
            continue
        problems += [f"{name}: {p}" for p in validate(resource, crds[key])]
        checked += 1
    assert problems == []
    if build_name != "base":
        assert checked >= 10, "the overlay renders custom resources: some must have been checked"


def test_the_validation_catches_what_the_api_server_would_refuse_or_prune(crds: dict) -> None:
    built = build(K8S / "overlays/production")
    topic = next(r for r in built if r["kind"] == "KafkaTopic")
    monitor = next(r for r in built if r["kind"] == "ServiceMonitor")
    scaled = next(r for r in built if r["kind"] == "ScaledObject")
    assert validate(topic, crds[("kafka.strimzi.io/v1", "KafkaTopic")]) == []
    misspelt = copy.deepcopy(topic)
    misspelt["spec"]["partition"] = misspelt["spec"].pop("partitions")
    assert any("partition" in p for p in validate(misspelt, crds[("kafka.strimzi.io/v1", "KafkaTopic")]))
    wrong_type = copy.deepcopy(topic)
    wrong_type["spec"]["replicas"] = "three"
    assert validate(wrong_type, crds[("kafka.strimzi.io/v1", "KafkaTopic")])
    endpoint = copy.deepcopy(monitor)
    endpoint["spec"]["endpoints"][0]["intervall"] = "15s"
    assert validate(endpoint, crds[("monitoring.coreos.com/v1", "ServiceMonitor")])
    no_target = copy.deepcopy(scaled)
    del no_target["spec"]["scaleTargetRef"]
    assert validate(no_target, crds[("keda.sh/v1alpha1", "ScaledObject")])
