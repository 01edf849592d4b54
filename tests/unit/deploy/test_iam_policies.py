"""Least privilege on AWS: each service's IAM policy (deploy/k8s/components/msk/iam/) covers every AWS call its code
makes, and nothing on MSK beyond the topics the catalog gives it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from lineguard.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[3]
GENERATOR = ROOT / "deploy" / "k8s" / "gen_iam_policies.py"
IAM = ROOT / "deploy" / "k8s" / "components" / "msk" / "iam"
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))
# botocore operation -> IAM action where they differ (https://docs.aws.amazon.com/service-authorization/).
IAM_ACTION = {("s3", "HeadBucket"): "s3:ListBucket", ("s3", "ListObjectsV2"): "s3:ListBucket",
              ("s3", "HeadObject"): "s3:GetObject", ("bedrock-runtime", "Converse"): "bedrock:InvokeModel",
              ("bedrock-runtime", "ConverseStream"): "bedrock:InvokeModelWithResponseStream",
              ("bedrock-runtime", "InvokeModel"): "bedrock:InvokeModel",
              ("bedrock-runtime", "InvokeModelWithResponseStream"): "bedrock:InvokeModelWithResponseStream"}
IAM_PREFIX = {"bedrock-runtime": "bedrock"}
# Method names shared with non-AWS objects in the same code (Kafka's AdminClient.list_topics, re.search, a
# retriever's search): a call by these names is not taken as the AWS operation of the same name.
FALSE_FRIENDS = {"list_topics", "search"}
# Calls a shared module can make that a service never reaches, with the reason: the policy stays without them.
NOT_REACHED = {
    ("advisor", "s3:PutObject"): "lineguard/model_registry.py writes in register/promote/rollback, which only "
                                 "lineguard-train runs; the advisor's RegistryFollower only reads the registry",
    ("advisor", "s3:ListBucket"): "model_registry.audit_entries() lists the audit trail for lineguard-train",
}


def service_modules(service: str) -> set[Path]:
    """The service's own modules and every lineguard module they import (transitively)."""
    files = set((ROOT / "services" / service).rglob("*.py"))
    todo = list(files)
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("lineguard") or name.startswith(f"services.{service}"):
                    path = ROOT / (name.replace(".", "/") + ".py")
                    if path.is_file() and path not in files:
                        files.add(path)
                        todo.append(path)
    return files


def aws_calls(service: str) -> set[str]:
    """IAM actions for every boto3 operation called anywhere in the service's code, per client it creates."""
    clients, calls = set(), set()
    for path in service_modules(service):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                calls.add(node.func.attr)
                if node.func.attr in ("client", "get_paginator") and node.args and \
                        isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    (clients if node.func.attr == "client" else calls).add(node.args[0].value)
    session = botocore.session.get_session()
    actions = set()
    for client in clients:
        operations = {xform_name(op): op for op in session.get_service_model(client).operation_names}
        for call in calls - FALSE_FRIENDS:
            if call in operations:
                operation = operations[call]
                actions.add(IAM_ACTION.get((client, operation),
                                           f"{IAM_PREFIX.get(client, client)}:{operation}"))
    return actions


def granted(policy: dict) -> set[str]:
    return {action for statement in policy["Statement"] if statement["Effect"] == "Allow"
            for action in statement["Action"]}


def test_the_committed_policies_are_current() -> None:
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_the_policy_covers_every_aws_call_of_the_service(service: str) -> None:
    policy = json.loads((IAM / f"{service}.json").read_text())
    missing = {a for a in aws_calls(service) - granted(policy) if (service, a) not in NOT_REACHED}
    assert not missing, f"{service} calls {sorted(missing)} but its IAM policy does not allow it"
    for statement in policy["Statement"]:
        for action in statement["Action"]:
            assert "*" not in action, f"{service}: wildcard action {action}"


def test_the_scan_finds_the_calls_we_know_of() -> None:
    """Guards the scanner itself: the lake writes to S3, the advisor calls Bedrock, the notifier publishes to SNS."""
    assert {"s3:PutObject"} <= aws_calls("normalizer")
    assert {"bedrock:InvokeModel"} <= aws_calls("advisor")
    assert {"sns:Publish"} <= aws_calls("notifier")
    assert aws_calls("actuator") == set()


@pytest.mark.parametrize("service", SERVICES)
def test_msk_rights_are_exactly_the_catalogs(service: str) -> None:
    policy = json.loads((IAM / f"{service}.json").read_text())
    topics: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        for resource in statement["Resource"]:
            if ":topic/" in resource and not resource.endswith("*"):
                topics.setdefault(resource.rsplit("/", 1)[1], set()).update(
                    a for a in statement["Action"] if a.endswith("Data"))
    expected: dict[str, set[str]] = {}
    catalog = load_catalog()
    for spec in catalog.topics.values():
        if spec.is_dlq:
            continue
        if service in spec.consumers:
            expected.setdefault(spec.name, set()).add("kafka-cluster:ReadData")
            if spec.name + ".dlq" in catalog:
                expected.setdefault(spec.name + ".dlq", set()).add("kafka-cluster:WriteData")
        if service in spec.producers:
            expected.setdefault(spec.name, set()).add("kafka-cluster:WriteData")
    assert topics == expected
