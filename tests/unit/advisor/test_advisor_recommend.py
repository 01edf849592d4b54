"""Recommendations: deterministic ids, schema-valid records, validation of model output, retry and fallback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from lineguard.avro import AvroSerde
from lineguard.plant import default_plant_path, load_plant
from services.advisor.models import (
    ModelAlias,
    ModelError,
    ModelRequest,
    ScriptedProvider,
    parse_aliases,
    parse_json_output,
)
from services.advisor.recommend import Advisor, draft_from_analysis, recommendation_id, validate_draft
from services.advisor.retrieval import Retriever
from services.advisor.window import LineHistory, LineWindow

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).parent / "fixtures"
PLANT = load_plant(default_plant_path())
RETRIEVER = Retriever.from_folder(ROOT / "examples" / "cookie-line" / "docs")
SERDE = AvroSerde()
OVEN = "urn:ngsi-ld:Machine:line1-oven"


def load(name: str) -> tuple[LineWindow, LineHistory]:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    return LineWindow.from_dict(doc["window"]), LineHistory.from_dict(doc["history"])


def advise(provider, fixture: str = "oven_zone_overheat_900", trigger: str = "scheduled", **kw):
    window, history = load(fixture)
    return asyncio.run(Advisor(PLANT, RETRIEVER, provider, **kw).recommend(window, history, trigger,
                                                                          now_ms=1_764_404_000_000))


def roundtrip(record: dict) -> dict:
    return SERDE.decode("recommendations.v1", SERDE.encode("recommendations.v1", record))


def test_advisor_ids_are_deterministic_per_line_window_trigger() -> None:
    a = recommendation_id("line1", 0, 300_000, "scheduled")
    assert a == recommendation_id("line1", 0, 300_000, "scheduled")
    assert a != recommendation_id("line1", 0, 300_000, "critical_alarm")
    assert a != recommendation_id("line1", 300_000, 600_000, "scheduled")
    assert a != recommendation_id("line2", 0, 300_000, "scheduled")


def test_advisor_valid_model_output_is_used_and_validated() -> None:
    provider = ScriptedProvider(draft_from_analysis)
    outcome = advise(provider)
    record = roundtrip(outcome.record)
    assert outcome.model_valid and not outcome.fallback and outcome.attempts == 1
    assert record["validated"] is True and record["fallback"] is False
    assert record["model"] == {"provider": "openai", "model_id": "scripted", "version": "1"}
    assert record["root_cause"]["entity_id"] == OVEN
    (action,) = record["proposed_actions"]
    assert (action["parameter"], action["value"]) == ("zone2_setpoint", 175.0)
    assert record["references"] and record["references"][0]["doc_id"].startswith("SOP-OVEN")
    assert {e["finding_id"] for e in record["evidence"]} <= set(outcome.analysis.finding_ids)
    assert all(e["value"] is not None for e in record["evidence"])  # numbers come from the analysis
    # the model saw the allowed ids in its schema
    schema = provider.requests[0].schema
    assert "range:oven.zone2_temperature:high" in schema["properties"]["evidence"]["items"]["enum"]


def invented(request: ModelRequest) -> dict:
    draft = draft_from_analysis(request)
    draft["evidence"] = ["range:oven.zone9_temperature:high"]
    return draft


def test_advisor_invented_finding_is_retried_once_then_falls_back() -> None:
    provider = ScriptedProvider(invented)
    outcome = advise(provider)
    assert len(provider.requests) == 2
    assert "refused" in provider.requests[1].prompt
    assert outcome.fallback and not outcome.model_valid
    record = roundtrip(outcome.record)
    assert record["fallback"] is True and record["model"]["provider"] == "analysis"
    assert record["proposed_actions"][0]["parameter"] == "zone2_setpoint"
    assert any("does not exist" in e for e in outcome.errors)


def test_advisor_retry_that_succeeds_is_not_a_fallback() -> None:
    answers = iter(["not json at all", None])

    def flaky(request: ModelRequest):
        answer = next(answers)
        return answer if answer is not None else draft_from_analysis(request)

    outcome = advise(ScriptedProvider(flaky))
    assert outcome.model_valid and outcome.attempts == 2 and not outcome.fallback


@pytest.mark.parametrize("mutate, problem", [
    (lambda d: d["proposed_actions"][0].update(value=100.0), "outside the limits"),
    (lambda d: d["proposed_actions"][0].update(value=160.0), "largest allowed step"),
    (lambda d: d["proposed_actions"][0].update(value=200.0), "wrong way"),
    (lambda d: d["proposed_actions"][0].update(parameter="belt_speed"), "not one the analysis allows"),
    (lambda d: d.update(category="sensor_fault"), "contradicts"),
    (lambda d: d.update(root_cause_entity_id="urn:ngsi-ld:Machine:line1-mixer"), "root cause"),
    (lambda d: d.update(references=["SOP-FAKE-9#1"]), "not a retrieved"),
    (lambda d: d.pop("steps"), "steps is missing"),
    (lambda d: d.update(proposed_actions=[]), "is missing"),
    (lambda d: d.update(title="], action:"), "says nothing"),
    (lambda d: d["steps"].append("See SOP-OVEN-001#3 for urn:ngsi-ld:Machine:line1-oven"), "ids or markup"),
    # prose that is checked (issue 18): the local model's unsafe step, invented numbers, machines, directions, units
    (lambda d: d["steps"].append("Lower the oven's setpoint by 40.0 C or more."), "open-ended"),
    (lambda d: d["steps"].append("Lower the zone 2 setpoint by 40 °C now."), "largest allowed step"),
    (lambda d: d["steps"].append("Set the zone 2 setpoint to 120 °C."), "outside the setpoint limits"),
    (lambda d: d.update(summary="Zone 2 has read 257.3 °C for an hour."), "not in the evidence"),
    (lambda d: d.update(summary="The mixer torque is low and the cookies deform."), "does not involve"),
    (lambda d: d["steps"].append("Raise zone2_setpoint to bring the heat back."), "wrong way"),
    (lambda d: d.update(root_cause="Zone 2 reads 230 CEL against its setpoint."), "units must be symbols"),
    (lambda d: d.update(summary="Zone 2 went hot at 03:17 UTC."), "not in the evidence"),
])
def test_advisor_validation_refuses_unsafe_or_invented_output(mutate, problem) -> None:
    window, history = load("oven_zone_overheat_900")
    advisor = Advisor(PLANT, RETRIEVER, ScriptedProvider(draft_from_analysis))
    analysis = advisor.analyzer.analyse(window, history)
    hits = RETRIEVER.search(analysis.query_terms(), limit=3)
    from services.advisor.recommend import build_prompt, draft_schema
    request = ModelRequest("s", build_prompt(analysis, hits, "scheduled"), draft_schema(analysis, hits, PLANT))
    draft = draft_from_analysis(request)
    assert validate_draft(draft, analysis, hits, PLANT) == []
    mutate(draft)
    problems = validate_draft(draft, analysis, hits, PLANT)
    assert any(problem in p for p in problems), problems
    assert validate_draft(None, analysis, hits, PLANT) == ["the output did not parse"]


def test_advisor_normal_window_skips_the_model() -> None:
    provider = ScriptedProvider(draft_from_analysis)
    outcome = advise(provider, fixture="normal_run_900")
    assert provider.requests == []
    record = roundtrip(outcome.record)
    assert record["category"] == "none" and record["proposed_actions"] == [] and not record["fallback"]
    assert record["references"] == []


def test_advisor_thermocouple_never_proposes_a_setpoint_change() -> None:
    def rogue(request: ModelRequest) -> dict:
        draft = draft_from_analysis(request)
        draft["proposed_actions"] = [{"machine_entity_id": OVEN, "parameter": "zone2_setpoint", "value": 175.0,
                                      "reason": "lower it"}]
        return draft

    outcome = advise(ScriptedProvider(rogue), fixture="thermocouple_failure_900")
    record = roundtrip(outcome.record)
    assert outcome.fallback and record["proposed_actions"] == []
    assert record["category"] == "sensor_fault"


def test_advisor_model_errors_fall_back() -> None:
    class Broken:
        alias = ModelAlias("broken", "bedrock", "x")

        async def generate(self, request):
            raise ModelError("bedrock down")

    outcome = advise(Broken(), fixture="mixer_torque_loss_900", trigger="defect_spike")
    assert outcome.fallback and outcome.record["trigger"] == "defect_spike"
    assert roundtrip(outcome.record)["proposed_actions"][0]["parameter"] == "speed"
    with pytest.raises(ValueError, match="unknown trigger"):
        advise(Broken(), trigger="whim")


def test_advisor_aliases_switch_and_revert_by_configuration() -> None:
    aliases = parse_aliases('{"advisor-tuned": {"provider": "bedrock", "model_id": '
                            '"arn:aws:bedrock:us-east-1:123456789012:imported-model/abcdefghijkl", "version": "v3"}}')
    assert aliases["advisor-tuned"].ref()["version"] == "v3"
    assert aliases["advisor-local"].provider == "local"  # defaults stay
    for bad, why in (("{", "not valid JSON"), ('{"x": {"provider": "gpt"}}', "needs"),
                     ('{"x": {"provider": "gpt", "model_id": "m"}}', "unknown provider"), ("[1]", "JSON object")):
        with pytest.raises(ValueError, match=why):
            parse_aliases(bad)


def test_advisor_parse_json_output_tolerates_prose() -> None:
    assert parse_json_output('Sure! ```json\n{"a": 1}\n```') == ({"a": 1}, None)
    assert parse_json_output("no json")[0] is None
    assert "not valid JSON" in parse_json_output('{"a": ')[1]
