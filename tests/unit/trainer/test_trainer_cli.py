"""`lineguard-train` end to end on the command line: docs from S3 (moto), history from a lake export, the registry."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from services.trainer.cli import main

DOCS = Path(__file__).resolve().parents[3] / "examples" / "cookie-line" / "docs"


def last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_prepare_from_s3_with_a_lake_export(tmp_path: Path, capsys, monkeypatch) -> None:
    from moto import mock_aws

    lake = tmp_path / "export"
    lake.mkdir()
    rec = {
        "id": "rec-1",
        "line_id": "line1",
        "trigger": "scheduled",
        "severity": "major",
        "category": "environment",
        "title": "Hall humidity is high",
        "summary": "The hall humidity is above its range and bubbles rise.",
        "root_cause": {
            "entity_id": "urn:ngsi-ld:Machine:line1-environment",
            "description": "Humid hall air.",
        },
        "evidence": [{"description": "humidity 68 % RH"}],
        "proposed_actions": [],
        "steps": ["Lower the mixer water ratio by two points and restore the hall humidity control."],
        "references": [{"doc_id": "SOP-ENV-004", "section": "3. CORRECTIVE ACTION: LOWER THE WATER RATIO"}],
    }
    (lake / "recommendations.jsonl").write_text(json.dumps(rec) + "\n{torn")
    (lake / "feedback.jsonl").write_text(
        json.dumps(
            {"feedback_id": "f", "recommendation_id": "rec-1", "kind": "vote", "vote": 1, "operator": "o"}
        )
        + "\n"
    )
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="plant-docs")
        for path in DOCS.iterdir():
            s3.upload_file(str(path), "plant-docs", f"line1/docs/{path.name}")
        s3.put_object(Bucket="plant-docs", Key="line1/docs/broken.pdf", Body=b"%PDF-1.7 garbage")
        code = main(
            [
                "prepare",
                "--docs",
                "s3://plant-docs/line1/docs/",
                "--out",
                str(tmp_path / "ds"),
                "--history",
                str(lake),
            ]
        )
    summary = last_json(capsys)
    assert code == 0 and summary["skipped"] == 1 and summary["train"] + summary["test"] == 34
    card = json.loads((tmp_path / "ds" / "data_card.json").read_text())
    assert card["kept_by_source"] == {"history": 1, "sop": 33}
    assert card["files_skipped"][0]["path"].endswith("broken.pdf")


def test_registry_commands(tmp_path: Path, capsys) -> None:
    registry = str(tmp_path / "registry.json")
    assert (
        main(
            [
                "register",
                "--registry",
                registry,
                "--version",
                "v1",
                "--provider",
                "analysis",
                "--model-id",
                "deterministic-analysis",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["promote", "--registry", registry]) == 1  # never evaluated
    assert "no evaluation" in last_json(capsys)["reasons"][0]
    assert main(["prepare", "--docs", str(DOCS), "--out", str(tmp_path / "ds")]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--registry",
                registry,
                "--dataset",
                str(tmp_path / "ds"),
                "--model",
                "registry:v1",
                "--record-metrics",
            ]
        )
        == 0
    )
    metrics = last_json(capsys)
    assert metrics["examples"] >= 4 and metrics["valid_share"] == 0.0  # the analysis alone writes no examples
    assert Path(metrics["report"]).read_text().startswith("# Evaluation on the test split")
    assert main(["promote", "--registry", registry]) == 0  # no production yet and no safety violation
    assert main(["rollback", "--registry", registry]) == 2  # nothing before it
    assert "nothing to roll back" in capsys.readouterr().err
    assert main(["registry", "--registry", registry]) == 0
    assert json.loads(capsys.readouterr().out)["aliases"]["production"] == "v1"
    # the scenario suite's figures, measured by the advisor's suite, join the comparison
    (tmp_path / "suite.json").write_text(json.dumps({"valid_share": 1.0, "safety_violations": 1}))
    assert (
        main(
            [
                "register",
                "--registry",
                registry,
                "--version",
                "v2",
                "--provider",
                "analysis",
                "--model-id",
                "deterministic-analysis",
            ]
        )
        == 0
    )
    assert (
        main(["metrics", "--registry", registry, "--version", "v2", "--file", str(tmp_path / "suite.json")])
        == 0
    )
    assert (
        main(
            [
                "metrics",
                "--registry",
                registry,
                "--version",
                "v2",
                "--split",
                "test",
                "--file",
                str(tmp_path / "suite.json"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["promote", "--registry", registry]) == 1
    assert any("safety violation(s) on the scenarios split" in r for r in last_json(capsys)["reasons"])
