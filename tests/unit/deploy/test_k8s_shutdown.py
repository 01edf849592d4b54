"""Grace periods above each service's measured worst shutdown (deploy/k8s/README.md, "Shutdown budgets").

The README's table gives, per service, the worst SIGTERM -> exit that bench/bench_shutdown.py measured, the preStop
sleep, and the budget (measured worst + preStop + margin). Every Deployment of every build must give its pod at
least that budget as terminationGracePeriodSeconds, and the table must agree with the manifests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_k8s_manifests import BUILDS, K8S, SERVICES, build, by_kind

ROOT = Path(__file__).resolve().parents[3]
MARGIN_S = 10.0  # the least headroom above measured worst + preStop (a slower node, a busier broker)


def budget_table() -> dict[str, dict[str, float]]:
    text = (K8S / "README.md").read_text()
    match = re.search(r"^### Shutdown budgets\n(.*?)(?=^#)", text, re.S | re.M)
    assert match, "deploy/k8s/README.md has no section '### Shutdown budgets'"
    rows: dict[str, dict[str, float]] = {}
    for line in match.group(1).splitlines():
        if not line.startswith("| ") or line.startswith("| service "):
            continue
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        name, measured, pre_stop, budget, grace = cells[:5]
        rows[name] = {"measured": float(measured), "pre_stop": float(pre_stop), "budget": float(budget),
                      "grace": float(grace)}
    return rows


def pre_stop_seconds(container: dict) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if not command:
        return 0.0
    (seconds,) = re.findall(r"time\.sleep\(([\d.]+)\)", " ".join(command))
    return float(seconds)


def test_the_budget_table_follows_its_rule() -> None:
    table = budget_table()
    assert set(table) == set(SERVICES)
    for name, row in table.items():
        assert row["measured"] > 0, f"{name}: no measured figure"
        assert row["budget"] >= row["measured"] + row["pre_stop"] + MARGIN_S, name
        assert row["grace"] >= row["budget"], name
    assert (ROOT / "bench" / "bench_shutdown.py").exists(), "the table's figures come from bench/bench_shutdown.py"


@pytest.mark.parametrize("build_name", BUILDS)
def test_every_deployment_gives_its_pod_at_least_its_budget(build_name: str) -> None:
    table = budget_table()
    for name, deployment in by_kind(build(K8S / build_name), "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        grace = pod.get("terminationGracePeriodSeconds", 30)
        row = table[name]
        assert pre_stop_seconds(container) == row["pre_stop"], f"{name}: preStop differs from the table"
        assert grace == row["grace"], f"{name}: terminationGracePeriodSeconds {grace}, the table says {row['grace']}"
        assert grace >= row["budget"], f"{name}: grace {grace} s is below its budget {row['budget']} s"
