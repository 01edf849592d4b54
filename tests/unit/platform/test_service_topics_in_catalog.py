"""Every topic a service names (a `lineguard.topics` constant or a catalog name in its code) is in the catalog
with that service among its producers or consumers: the catalog stays the map of who writes and reads what."""

from __future__ import annotations

import ast
from pathlib import Path

from lineguard import topics
from lineguard.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[3]
CONSTANTS = {name: value for name, value in vars(topics).items() if name.isupper() and isinstance(value, str)}


def topics_named_in(folder: Path, names: set[str]) -> dict[str, str]:
    """topic -> where it is named first (file:line), for the product code of one service (training jobs and
    tests excluded: they read topics as tools, not as the service)."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        if "training" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            topic = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                topic = node.value
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id == "topics" and node.attr in CONSTANTS:
                topic = CONSTANTS[node.attr]
            if topic is not None:
                found.setdefault(topic, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_each_services_topics_list_it_as_producer_or_consumer():
    catalog = load_catalog()
    names = {spec.name for spec in catalog.topics.values()}
    problems = []
    for folder in sorted(p for p in (ROOT / "services").iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        service = folder.name
        for topic, where in topics_named_in(folder, names).items():
            spec = catalog[topic]
            if topic.endswith(".dlq"):
                continue  # every consumer may dead-letter
            if service not in {*spec.producers, *spec.consumers}:
                problems.append(f"{where}: {service} uses {topic}, but the catalog lists producers "
                                f"{spec.producers} and consumers {spec.consumers}")
    assert problems == [], "\n".join(problems)
