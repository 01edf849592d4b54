"""`lineguard-train prepare`: extract, generate, validate, history, split, publish."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lineguard.plant import default_plant_path, load_plant
from services.advisor.models import ModelAlias, ScriptedProvider
from services.trainer.dataset import check_bedrock_record
from services.trainer.extract import extract_folder
from services.trainer.generate import make_generator, scripted_answer
from services.trainer.history import history_examples
from services.trainer.pipeline import Prepare, PrepareOptions
from services.trainer.validate import check_example

DOCS = Path(__file__).resolve().parents[3] / "examples" / "cookie-line" / "docs"
PLANT = load_plant(default_plant_path())


def prepare(docs: Path, out: Path, provider=None, history=None):
    provider = provider or make_generator("scripted")
    return Prepare(PrepareOptions(docs, out, history=history), PLANT, lambda: provider).run()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_bedrock_conversation(record: dict) -> None:
    """The format as AWS documents it (bedrock-conversation-2024), checked independently of the trainer's code."""
    assert record["schemaVersion"] == "bedrock-conversation-2024"
    assert set(record) == {"schemaVersion", "system", "messages"}
    assert [set(b) for b in record["system"]] == [{"text"}]
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["user", "assistant"]
    for message in record["messages"]:
        assert set(message) == {"role", "content"}
        assert message["content"] and all(
            set(b) == {"text"} and b["text"].strip() for b in message["content"]
        )


def test_prepare_publishes_bedrock_and_sagemaker_jsonl_without_leakage(tmp_path: Path) -> None:
    result = prepare(DOCS, tmp_path / "ds")
    train, test = lines(tmp_path / "ds" / "train.jsonl"), lines(tmp_path / "ds" / "test.jsonl")
    assert len(train) >= 20 and len(test) >= 4
    for record in train + test:
        assert_bedrock_conversation(record)
        assert check_bedrock_record(record) == []
        answer = json.loads(record["messages"][1]["content"][0]["text"])
        assert answer["category"] and answer["references"] and answer["steps"]
    for record in lines(tmp_path / "ds" / "sagemaker" / "train.jsonl"):
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]

    def cited(records: list[dict]) -> set[str]:
        return {
            ref for r in records for ref in json.loads(r["messages"][1]["content"][0]["text"])["references"]
        }

    assert cited(train) and cited(test) and not cited(train) & cited(test)  # no source section on both sides
    card = result.card
    assert card["train"]["examples"] == len(train) and card["test"]["examples"] == len(test)
    # stratified: every category with two sections or more is in the test split
    assert set(card["test"]["by_category"]) >= {
        "environment",
        "equipment_fault",
        "process_deviation",
        "sensor_fault",
    }
    assert "| train |" in (tmp_path / "ds" / "data_card.md").read_text()
    pdf = [
        e
        for e in lines(tmp_path / "ds" / "examples" / "train.jsonl")
        + lines(tmp_path / "ds" / "examples" / "test.jsonl")
        if e["doc_id"] == "MAN-CONV-006"
    ]
    assert pdf and all(e["page"] == 1 for e in pdf)  # the PDF's page travels with its sections


def test_prepare_reports_and_skips_bad_files(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    (docs / "BROKEN-1.pdf").write_bytes(b"%PDF-1.4\n1 0 obj <</Type /Catalog" + bytes(range(256)) * 4)
    (docs / "EMPTY-2.csv").write_text("")
    (docs / "BLOB-3.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    result = prepare(docs, tmp_path / "ds")
    skipped = {Path(s["path"]).name: s["reason"] for s in result.card["files_skipped"]}
    assert set(skipped) == {"BROKEN-1.pdf", "EMPTY-2.csv", "BLOB-3.txt", "image.png"}
    assert skipped["EMPTY-2.csv"] == "empty file"
    assert "binary" in skipped["BLOB-3.txt"] and "unsupported" in skipped["image.png"]
    assert result.card["sections_extracted"] == 34  # every good document still made it
    assert "BROKEN-1.pdf" in (tmp_path / "ds" / "data_card.md").read_text()


def test_prepare_is_idempotent_and_resumes(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    provider = ScriptedProvider(scripted_answer)
    first = prepare(docs, tmp_path / "ds", provider)
    calls = len(provider.requests)
    assert calls == 34 and first.ran[0] == "extract"
    again = prepare(docs, tmp_path / "ds", provider)
    assert again.ran == [] and len(provider.requests) == calls and again.card == first.card
    # one document changes: only its sections go back to the model
    sop = docs / "SOP-MIX-003.md"
    sop.write_text(sop.read_text().replace("Lock out and tag out", "Always lock out and tag out"))
    third = prepare(docs, tmp_path / "ds", provider)
    assert len(provider.requests) == calls + 1 and "extract" in third.ran
    # the plant's limits change: every example is validated again, nothing goes back to the model
    import dataclasses

    plant = load_plant(default_plant_path())
    oven = plant.machine("line1", "oven")
    oven.setpoints["zone2_setpoint"] = dataclasses.replace(oven.setpoints["zone2_setpoint"], max_step=5.0)
    fourth = Prepare(PrepareOptions(docs, tmp_path / "ds"), plant, lambda: provider).run()
    assert "validate" in fourth.ran and "generate" not in fourth.ran and len(provider.requests) == calls + 1


def test_generation_failures_are_reported_and_retried_next_run(tmp_path: Path) -> None:
    failing = {"on": True}

    def flaky(request):
        if failing["on"] and "Section: SOP-ENV-004" in request.prompt:
            return "I cannot do that"
        return scripted_answer(request)

    provider = ScriptedProvider(flaky)
    first = prepare(DOCS, tmp_path / "ds", provider)
    errors = first.card["generation_errors"]
    assert errors and all(e["section"].startswith("SOP-ENV-004") for e in errors)
    failing["on"] = False
    before = len(provider.requests)
    second = prepare(DOCS, tmp_path / "ds", provider)
    # only the sections that failed go back to the model; the others come from the per-section cache
    assert len(provider.requests) - before == len(errors)
    assert (
        second.card["generation_errors"] == []
        and second.card["train"]["examples"] > first.card["train"]["examples"] - 1
    )
    assert prepare(DOCS, tmp_path / "ds", provider).ran == []


SECTIONS = {s.key: s for s in extract_folder(DOCS)[0]}


def example(**answer_changes) -> dict:
    answer = {
        "title": "Oven zone over temperature: lower the setpoint",
        "summary": "Zone two reads well above its setpoint and burnt cookies rise.",
        "category": "process_deviation",
        "severity": "major",
        "root_cause": "The real zone temperature is above the recipe temperature by the measured offset.",
        "steps": ["Change the setpoint in steps of at most 15 C and wait two minutes between steps."],
        "proposed_actions": [],
        "references": ["SOP-OVEN-001#3. Corrective action: lower the zone setpoint"],
    }
    answer.update(answer_changes)
    return {
        "id": "x",
        "source": "sop",
        "group": "SOP-OVEN-001#3. Corrective action: lower the zone setpoint",
        "question": "Zone 2 reads 230 C against 190 C, what now?",
        "answer": answer,
    }


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"references": ["SOP-OVEN-009#1. Invented"]}, "does not exist"),
        ({"category": "magic"}, "unknown category"),
        ({"severity": "apocalyptic"}, "unknown severity"),
        (
            {"steps": ["Open the oven door and spray the burners with water to cool them quickly."]},
            "unsupported",
        ),
        ({"steps": ["Set urn:ngsi-ld:Machine:line1-oven zone2 now please."]}, "not prose"),
        (
            {
                "proposed_actions": [
                    {
                        "machine_entity_id": "urn:ngsi-ld:Machine:line1-oven",
                        "parameter": "zone2_setpoint",
                        "value": 400,
                        "reason": "hotter",
                    }
                ]
            },
            "unsafe",
        ),
        (
            {
                "proposed_actions": [
                    {
                        "machine_entity_id": "urn:ngsi-ld:Machine:line1-oven",
                        "parameter": "zone2_setpoint",
                        "value": 180,
                        "reason": "lower it",
                    }
                ]
            },
            None,
        ),
        (
            {
                "proposed_actions": [
                    {
                        "machine_entity_id": "urn:ngsi-ld:Machine:line1-press",
                        "parameter": "force",
                        "value": 1,
                        "reason": "press",
                    }
                ]
            },
            "unsafe",
        ),
    ],
)
def test_validation_drops_what_the_source_does_not_support(changes: dict, reason: str | None) -> None:
    errors = check_example(example(**changes), SECTIONS, PLANT)
    if reason is None:
        assert errors == []
    else:
        assert any(reason in e for e in errors), errors


def test_hallucinated_examples_are_dropped_and_counted(tmp_path: Path) -> None:
    def liar(request):
        answer = scripted_answer(request)
        for item in answer["examples"]:
            if "Section: SOP-OVEN-002" in request.prompt:
                item["answer"]["references"] = ["SOP-OVEN-002#9. Not a section"]
            if "Section: SOP-MIX-003" in request.prompt:
                item["answer"]["proposed_actions"] = [
                    {
                        "machine_entity_id": "urn:ngsi-ld:Machine:line1-mixer",
                        "parameter": "speed",
                        "value": 9999,
                        "reason": "faster",
                    }
                ]
        return answer

    card = prepare(DOCS, tmp_path / "ds", ScriptedProvider(liar)).card
    assert card["dropped_by_reason"]["cites"] == 5 and card["dropped_by_reason"]["unsafe"] == 5
    published = (tmp_path / "ds" / "train.jsonl").read_text() + (tmp_path / "ds" / "test.jsonl").read_text()
    assert "Not a section" not in published and "9999" not in published


def rec(rec_id: str, **changes) -> dict:
    record = {
        "id": rec_id,
        "line_id": "line1",
        "trigger": "scheduled",
        "severity": "major",
        "category": "process_deviation",
        "title": "Oven zone 2 runs hot",
        "summary": "Zone two reads forty degrees above its setpoint and burnt cookies rise.",
        "root_cause": {"entity_id": "urn:ngsi-ld:Machine:line1-oven", "description": "Burner over-firing."},
        "evidence": [{"finding_id": "f1", "entity_id": "e", "description": "zone2 230 C against 190 C"}],
        "steps": ["Lower the zone two setpoint in steps of at most fifteen degrees."],
        "proposed_actions": [
            {
                "machine_entity_id": "urn:ngsi-ld:Machine:line1-oven",
                "parameter": "zone2_setpoint",
                "value": 175.0,
                "reason": "offset",
            }
        ],
        "references": [
            {"doc_id": "SOP-OVEN-001", "section": "3. Corrective action: lower the zone setpoint"}
        ],
        "model": {"provider": "local", "model_id": "m", "version": "1"},
    }
    record.update(changes)
    return record


def vote(fid: str, rec_id: str, value: int, operator: str = "op1", comment: str | None = None) -> dict:
    return {
        "feedback_id": fid,
        "recommendation_id": rec_id,
        "line_id": "line1",
        "kind": "vote",
        "vote": value,
        "comment": comment,
        "operator": operator,
        "created_at": 1,
    }


def test_history_votes_become_examples_reviews_or_drops() -> None:
    recs = [rec("r-up"), rec("r-down"), rec("r-silent"), rec("r-dup")]
    feedback = [
        vote("f1", "r-up", 1),
        vote("f1", "r-up", 1),
        vote("f2", "r-up", 1, "op2"),
        vote("f3", "r-down", -1, comment="zone 3 was the hot one"),
        vote("f4", "r-silent", -1),
        vote("f5", "r-dup", 1),
        vote("f6", "r-dup", -1),  # op1 changed their mind: the last vote counts
        vote("f7", "r-gone", 1),
    ]
    examples, review, dropped = history_examples(recs, feedback)
    assert [e["recommendation_id"] for e in examples] == ["r-up"] and examples[0]["votes"] == 2
    assert examples[0]["group"] == "SOP-OVEN-001#3. Corrective action: lower the zone setpoint"
    assert "230 C" in examples[0]["question"]
    assert [r["recommendation_id"] for r in review] == ["r-down"] and review[0]["comments"] == [
        "zone 3 was the hot one"
    ]
    assert sorted(d["reason"] for d in dropped) == [
        "downvoted without comment",
        "downvoted without comment",
        "recommendation not found",
    ]


def test_history_reaches_the_dataset_with_its_section(tmp_path: Path) -> None:
    def history():
        return (
            [rec("r-up"), rec("r-bad", references=[{"doc_id": "SOP-X-1", "section": "1"}])],
            [vote("f1", "r-up", 1), vote("f2", "r-bad", 1)],
        )

    card = prepare(DOCS, tmp_path / "ds", history=history).card
    assert card["kept_by_source"]["history"] == 1 and card["dropped_by_source"].get("history") == 1
    # recommendations.v1 keeps 30 days, feedback.v1 forever: a vote outlives its recommendation on the topic
    later = prepare(
        DOCS, tmp_path / "ds", history=lambda: ([], [vote("f1", "r-up", 1), vote("f2", "r-bad", 1)])
    ).card
    assert later["kept_by_source"]["history"] == 1 and later["dataset_id"] == card["dataset_id"]
    examples = lines(tmp_path / "ds" / "examples" / "train.jsonl") + lines(
        tmp_path / "ds" / "examples" / "test.jsonl"
    )
    mine = next(e for e in examples if e["source"] == "history")
    side = "train" if mine in lines(tmp_path / "ds" / "examples" / "train.jsonl") else "test"
    same_section = [e for e in examples if e["group"] == mine["group"] and e["source"] == "sop"]
    assert same_section and all(
        (e in lines(tmp_path / "ds" / "examples" / f"{side}.jsonl")) for e in same_section
    )


def test_bedrock_generator_through_converse(tmp_path: Path) -> None:
    """The production generator: Converse with a forced tool, throttled once (retried), stubbed with Stubber."""
    import boto3
    from botocore.stub import ANY, Stubber

    from services.advisor.models import BedrockProvider
    from services.trainer.extract import extract_folder as extract
    from services.trainer.generate import TOOL, generate_for_section

    section = next(s for s in extract(DOCS)[0] if s.doc_id == "SOP-OVEN-001" and s.section.startswith("3."))
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    examples = scripted_answer(
        type(
            "R",
            (),
            {"prompt": __import__("services.trainer.generate", fromlist=["x"]).section_prompt(section, 2)},
        )()
    )
    with Stubber(client) as stub:
        stub.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
        stub.add_response(
            "converse",
            {
                "output": {
                    "message": {
                        "role": "assistant",
                        "content": [{"toolUse": {"toolUseId": "t1", "name": TOOL, "input": examples}}],
                    }
                },
                "stopReason": "tool_use",
                "usage": {"inputTokens": 900, "outputTokens": 200, "totalTokens": 1100},
                "metrics": {"latencyMs": 800},
            },
            {
                "modelId": "us.amazon.nova-pro-v1:0",
                "messages": ANY,
                "system": ANY,
                "inferenceConfig": ANY,
                "toolConfig": ANY,
            },
        )
        provider = BedrockProvider(
            ModelAlias("gen", "bedrock", "us.amazon.nova-pro-v1:0", "v1"), client=client, sleep=lambda s: None
        )
        found, error = generate_for_section(provider, section)
        stub.assert_no_pending_responses()
    assert error is None and len(found) == 1
    assert check_example(found[0], SECTIONS, PLANT) == []
    assert found[0]["generator"]["model_id"] == "us.amazon.nova-pro-v1:0"
