"""The network-policies and autoscaling components, as the production overlays render them.

The NetworkPolicies are evaluated here the way a CNI applies them (a pod is isolated in a direction once any
policy selects it for that direction; then a connection needs a rule that matches the peer and the port on the
sending pod's egress and on the receiving pod's ingress), so the tests state who may talk to whom.
"""

from __future__ import annotations

import ipaddress

import pytest
from test_k8s_manifests import K8S, SERVICES, build, by_kind

from lineguard.catalog import load_catalog

NAMESPACE = "lineguard"
OVERLAYS = ("overlays/production", "overlays/msk")
HTTP = 8080
METRICS = 9090


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict]:
    return build(K8S / request.param)


def matches_selector(selector: dict, labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        present = expression["key"] in labels
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


class Peer:
    """A pod (namespace and labels) or an address outside the cluster."""

    def __init__(self, namespace: str | None = None, labels: dict[str, str] | None = None,
                 ip: str | None = None) -> None:
        self.namespace, self.labels, self.ip = namespace, labels or {}, ip

    def matches(self, rule_peer: dict) -> bool:
        if "ipBlock" in rule_peer:
            if self.ip is None:
                return False
            block = rule_peer["ipBlock"]
            address = ipaddress.ip_address(self.ip)
            return address in ipaddress.ip_network(block["cidr"]) and not any(
                address in ipaddress.ip_network(e) for e in block.get("except", []))
        if self.namespace is None:
            return False
        if "namespaceSelector" in rule_peer:
            ns_labels = {"kubernetes.io/metadata.name": self.namespace}
            if not matches_selector(rule_peer["namespaceSelector"], ns_labels):
                return False
        elif self.namespace != NAMESPACE:
            return False
        return matches_selector(rule_peer.get("podSelector", {}), self.labels)


def port_matches(ports: list[dict] | None, port: int, named: dict[str, int]) -> bool:
    if not ports:
        return True
    for entry in ports:
        value = entry.get("port")
        if value is None or value == port or (isinstance(value, str) and named.get(value) == port):
            return True
    return False


def allowed(policies: list[dict], pod: dict[str, str], direction: str, peer: Peer, port: int) -> bool:
    kind = "Ingress" if direction == "ingress" else "Egress"
    selecting = [p for p in policies if kind in p["spec"].get("policyTypes", ["Ingress"])
                 and matches_selector(p["spec"]["podSelector"], pod)]
    if not selecting:
        return True
    side = "from" if direction == "ingress" else "to"
    for policy in selecting:
        for rule in policy["spec"].get(direction, []):
            peers = rule.get(side)
            if (not peers or any(peer.matches(p) for p in peers)) and port_matches(
                    rule.get("ports"), port, {"http": HTTP, "metrics": METRICS}):
                return True
    return False


def labels_of(rendered: list[dict]) -> dict[str, dict[str, str]]:
    return {name: d["spec"]["template"]["metadata"]["labels"] for name, d in by_kind(rendered, "Deployment").items()}


def can_call(rendered: list[dict], source: str, target: str, port: int = HTTP) -> bool:
    policies = list(by_kind(rendered, "NetworkPolicy").values())
    labels = labels_of(rendered)
    return allowed(policies, labels[source], "egress", Peer(NAMESPACE, labels[target]), port) and \
        allowed(policies, labels[target], "ingress", Peer(NAMESPACE, labels[source]), port)


def can_reach_outside(rendered: list[dict], source: str, ip: str, port: int) -> bool:
    policies = list(by_kind(rendered, "NetworkPolicy").values())
    return allowed(policies, labels_of(rendered)[source], "egress", Peer(ip=ip), port)


def reachable_from(rendered: list[dict], target: str, peer: Peer, port: int = HTTP) -> bool:
    policies = list(by_kind(rendered, "NetworkPolicy").values())
    return allowed(policies, labels_of(rendered)[target], "ingress", peer, port)


def test_everything_is_denied_unless_a_policy_allows_it(rendered: list[dict]) -> None:
    policies = by_kind(rendered, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    for policy in policies.values():
        assert policy["apiVersion"] == "networking.k8s.io/v1"
        assert policy["metadata"]["namespace"] == NAMESPACE


def test_only_the_console_and_the_notifier_call_other_services(rendered: list[dict]) -> None:
    expected = {("console", "normalizer"), ("console", "advisor"), ("console", "actuator"),
                ("console", "notifier"), ("notifier", "actuator")}
    for source in SERVICES:
        for target in SERVICES:
            if source != target:
                assert can_call(rendered, source, target) == ((source, target) in expected), (source, target)


def test_only_the_actuator_reaches_the_control_api(rendered: list[dict]) -> None:
    controller = "10.200.4.20"  # in the plant network placeholder
    for service in SERVICES:
        for port in (443, 8090):
            assert can_reach_outside(rendered, service, controller, port) == (service == "actuator"), (service, port)


def test_every_service_reaches_kafka_and_dns_and_is_scraped(rendered: list[dict]) -> None:
    policies = list(by_kind(rendered, "NetworkPolicy").values())
    labels = labels_of(rendered)
    broker = Peer(NAMESPACE, {"strimzi.io/cluster": "lineguard", "strimzi.io/kind": "Kafka"})
    dns = Peer("kube-system", {"k8s-app": "kube-dns"})
    prometheus = Peer("monitoring", {"app.kubernetes.io/name": "prometheus"})
    for service in SERVICES:
        assert allowed(policies, labels[service], "egress", broker, 9092), service
        assert can_reach_outside(rendered, service, "10.100.3.7", 9098), f"{service}: MSK IAM"
        assert allowed(policies, labels[service], "egress", dns, 53), service
        assert allowed(policies, labels[service], "ingress", prometheus, METRICS), service
        # Prometheus reaches /metrics alone: the API port stays closed to the monitoring namespace.
        assert not allowed(policies, labels[service], "ingress", prometheus, HTTP), service
        # ... and only Prometheus reaches the metrics port: not the other services, not the ingress controller.
        assert not reachable_from(rendered, service, Peer("ingress-nginx", {"app": "ingress-nginx"}), METRICS)
        for other in SERVICES:
            if other != service:
                assert not can_call(rendered, other, service, METRICS), (other, service)
        assert not allowed(policies, labels[service], "egress", Peer("default", {"app": "x"}), 5432), service


def test_only_the_console_is_reached_by_operators_and_only_ingest_by_plant_devices(rendered: list[dict]) -> None:
    ingress_controller = Peer("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    for service in SERVICES:
        from_ingress = reachable_from(rendered, service, ingress_controller)
        assert from_ingress == (service in ("console", "notifier", "ingest", "vision")), service
        assert reachable_from(rendered, service, Peer(ip="10.200.9.9")) == (service in ("ingest", "vision"))
    for service in ("ingest", "normalizer", "advisor", "actuator", "vision"):
        assert not reachable_from(rendered, service, Peer("other", {"app": "intruder"})), service
    assert can_reach_outside(rendered, "ingest", "10.200.1.1", 1883)
    assert not can_reach_outside(rendered, "advisor", "10.200.1.1", 1883)


def test_lag_scalers_stop_at_the_partition_count(rendered: list[dict]) -> None:
    catalog = load_catalog()
    scaled = by_kind(rendered, "ScaledObject")
    deployments = by_kind(rendered, "Deployment")
    for name in ("normalizer", "advisor"):
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name and name in deployments
        inputs = [t for t in catalog.topics.values() if name in t.consumers and not t.is_dlq]
        assert inputs, name
        assert spec["maxReplicaCount"] == max(t.partitions for t in inputs), name
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == name
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        env_names = {e["name"] for e in container.get("env", [])}
        settings = by_kind(rendered, "ConfigMap")["lineguard-settings"]["data"]
        assert trigger["metadata"]["bootstrapServersFromEnv"] in env_names | set(settings)
    assert scaled["vision"]["spec"]["triggers"][0]["type"] == "cpu"
    for name in ("ingest", "actuator", "notifier", "console"):
        assert name not in scaled, f"{name} runs one replica"


def test_every_service_with_replicas_has_a_budget_and_spreads(rendered: list[dict]) -> None:
    budgets = by_kind(rendered, "PodDisruptionBudget")
    scaled = by_kind(rendered, "ScaledObject")
    for name, deployment in by_kind(rendered, "Deployment").items():
        most = max(deployment["spec"].get("replicas", 1), scaled.get(name, {}).get("spec", {}).get(
            "maxReplicaCount", 1))
        if most <= 1:
            continue
        assert name in budgets, f"{name} can run {most} replicas but has no PodDisruptionBudget"
        assert budgets[name]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        constraints = deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        keys = {c["topologyKey"] for c in constraints}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name


# --------------------------------------------------------------------------------------------------------------
# strimzi-tls: mutual TLS and least-privilege ACLs per service (production overlay)
# --------------------------------------------------------------------------------------------------------------

def test_every_service_has_a_kafka_user_with_exactly_the_catalogs_rights() -> None:
    rendered = build(K8S / "overlays/production")
    users = by_kind(rendered, "KafkaUser")
    catalog = load_catalog()
    for name in SERVICES:
        user = users[name]
        assert user["apiVersion"] == "kafka.strimzi.io/v1"
        assert user["spec"]["authentication"] == {"type": "tls"}
        granted: dict[str, set[str]] = {}
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            assert resource.get("name") != "*", f"{name}: a wildcard ACL"
            if resource["type"] == "topic" and resource["patternType"] == "literal":
                granted[resource["name"]] = set(acl["operations"])
            elif resource["type"] == "group":
                assert resource["name"] == name and resource["patternType"] == "prefix"
                assert set(acl["operations"]) == {"Read", "Describe"}
        expected: dict[str, set[str]] = {}
        for spec in catalog.topics.values():
            if spec.is_dlq:
                continue
            if name in spec.consumers:
                expected.setdefault(spec.name, set()).update({"Read", "Describe"})
                if spec.name + ".dlq" in catalog:
                    expected.setdefault(spec.name + ".dlq", set()).update({"Write", "Describe"})
            if name in spec.producers:
                expected.setdefault(spec.name, set()).update({"Write", "Describe"})
        assert granted == expected, name


def test_every_production_pod_talks_mutual_tls_with_its_own_certificate() -> None:
    rendered = build(K8S / "overlays/production")
    settings = by_kind(rendered, "ConfigMap")["lineguard-settings"]["data"]
    assert settings["LINEGUARD_KAFKA_BOOTSTRAP"].endswith(":9093"), "the TLS listener, never plaintext 9092"
    for name, deployment in by_kind(rendered, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        security = dict(item.split("=", 1) for item in env["LINEGUARD_KAFKA_SECURITY"].split(","))
        assert security["security.protocol"] == "SSL", name
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["kafka-user"]["secret"]["secretName"] == name, f"{name}: its own KafkaUser's certificate"
        assert volumes["kafka-ca"]["secret"]["secretName"] == "lineguard-cluster-ca-cert"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        for key in ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location"):
            folder = security[key].rsplit("/", 1)[0]
            assert folder in mounts, f"{name}: {key} is not on a mounted volume"
