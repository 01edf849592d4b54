"""The actuator is one replica on purpose (the single writer to the line controller: services/actuator/README.md):
`lineguard up --workers N` starts one, the Kubernetes Deployment has one replica and never two during a rollout,
and no autoscaler targets it, in every build that deploys it."""

from __future__ import annotations

from pathlib import Path

import pytest
from kustomize_lite import build

from lineguard.embedded import SCALABLE_SERVICES, service_children

K8S = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
BUILDS = ("base", "overlays/production", "overlays/msk")


def test_lineguard_up_starts_one_actuator_whatever_the_workers() -> None:
    assert "actuator" not in SCALABLE_SERVICES
    assert [c.name for c in service_children("actuator", {}, workers=4)] == ["actuator"]
    assert len(service_children("advisor", {}, workers=4)) == 4  # the option itself works


@pytest.mark.parametrize("name", BUILDS)
def test_kubernetes_runs_one_actuator_and_never_scales_it(name: str) -> None:
    resources = build(K8S / name)
    (deployment,) = [r for r in resources if r.get("kind") == "Deployment" and r["metadata"]["name"] == "actuator"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # a rolling update would run two writers
    scalers = [r for r in resources if r.get("kind") in ("ScaledObject", "HorizontalPodAutoscaler")]
    targets = {r["spec"]["scaleTargetRef"]["name"] for r in scalers}
    assert "actuator" not in targets
    if name == "overlays/production":
        assert {"normalizer", "advisor"} <= targets  # the scaler exists there; it just leaves the actuator alone
