"""The topic contract for plant systems: docs/asyncapi.yaml is current, valid AsyncAPI 3.0, lists every topic."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lineguard.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[3]
GENERATOR = ROOT / "deploy" / "asyncapi" / "gen_asyncapi.py"
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"
VALIDATOR = ROOT / "deploy" / "asyncapi" / "validate.mjs"


def test_the_committed_document_is_current() -> None:
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_every_catalog_topic_is_a_channel_with_its_avro_schema() -> None:
    doc = yaml.safe_load(DOCUMENT.read_text())
    addresses = {channel["address"] for channel in doc["channels"].values()}
    catalog = load_catalog()
    assert addresses == set(catalog.names())
    for spec in catalog.topics.values():
        message = doc["components"]["messages"][spec.name.replace(".", "-")]
        if spec.schema:
            schema = json.loads((ROOT / "schemas" / spec.schema).read_text())
            assert message["payload"]["schema"] == schema
            assert message["payload"]["schemaFormat"].startswith("application/vnd.apache.avro")
        binding = doc["channels"][spec.name.replace(".", "-")]["bindings"]["kafka"]
        assert binding["partitions"] == spec.partitions
        assert binding["topicConfiguration"]["retention.ms"] == spec.retention_ms


def test_every_example_fits_its_schema() -> None:
    import fastavro

    doc = yaml.safe_load(DOCUMENT.read_text())
    for name, message in doc["components"]["messages"].items():
        payload = message["payload"]
        if "schemaFormat" not in payload:
            continue
        schema = fastavro.parse_schema(payload["schema"])
        for example in message["examples"]:
            assert fastavro.validate(example["payload"], schema, raise_errors=False), name


def test_the_asyncapi_parser_accepts_it() -> None:
    assert shutil.which("node"), "node is missing: `make test` installs it (Debian nodejs)"
    if not (VALIDATOR.parent / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail("deploy/asyncapi/node_modules is missing: `make test` installs it (npm ci)")
    result = subprocess.run(["node", str(VALIDATOR), str(DOCUMENT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["valid"] and report["version"] == "3.0.0"
    assert set(report["channels"]) == set(load_catalog().names())
