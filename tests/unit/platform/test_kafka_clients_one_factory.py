"""Every confluent-kafka client is built by lineguard.kafka.clients (security settings, MSK IAM): no other module
of the product constructs one."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PRODUCT = ("lineguard", "services", "simulator")
FACTORY = "lineguard/kafka/clients.py"
CLIENTS = {"Consumer", "Producer", "AdminClient", "SerializingProducer", "DeserializingConsumer"}
# Modules still on their own constructions, each with the reason and who moves it (empty when all are done).
ALLOWED: dict[str, str] = {}


def constructions(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: dict[str, str] = {}  # local name -> client class
    modules: set[str] = set()  # local names bound to confluent_kafka (or .admin)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "confluent_kafka":
            for alias in node.names:
                if alias.name in CLIENTS:
                    names[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "confluent_kafka":
                    modules.add((alias.asname or alias.name).split(".")[0])
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in names:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {names[func.id]}(...)")
        elif isinstance(func, ast.Attribute) and func.attr in CLIENTS:
            base = func.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {func.attr}(...)")
    return found


def test_no_module_outside_the_factory_constructs_a_confluent_kafka_client():
    stray = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel == FACTORY or rel in ALLOWED:
                continue
            stray.extend(constructions(path))
    assert stray == [], "build Kafka clients with lineguard.kafka.clients (new_consumer, new_producer, " \
                        "new_admin, read_topic) instead:\n" + "\n".join(stray)


def test_the_check_finds_a_construction(tmp_path):
    sample = tmp_path / "stray.py"
    sample.write_text("import confluent_kafka as ck\nfrom confluent_kafka.admin import AdminClient as A\n"
                      "a = A({})\nc = ck.Consumer({})\n")
    assert [line.split(": ")[1] for line in constructions(sample, tmp_path)] == ["AdminClient(...)", "Consumer(...)"]
