"""The test split for a words-only provider: the schema of each SOP question offers only its own section's
references, sentences, numbers and stated setpoint values, and an answer inside it passes validation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from lineguard.plant import default_plant_path, load_plant
from services.advisor.models import ModelAlias, ModelRequest, ScriptedProvider
from services.advisor.prose import TARGET_WORDS
from services.trainer.evaluate import evaluate, load_dataset
from services.trainer.generate import make_generator
from services.trainer.grounded import grounded_schema, step_choices
from services.trainer.pipeline import Prepare, PrepareOptions
from services.trainer.validate import check_example

DOCS = Path(__file__).resolve().parents[3] / "examples" / "cookie-line" / "docs"
PLANT = load_plant(default_plant_path())
WATER = "SOP-ENV-004#3. CORRECTIVE ACTION: LOWER THE WATER RATIO"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds")
    Prepare(PrepareOptions(DOCS, out), PLANT, lambda: make_generator("scripted")).run()
    return out


def fits(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def test_each_schema_offers_only_its_own_section(dataset: Path) -> None:
    examples, sections = load_dataset(dataset)
    assert WATER in {e["group"] for e in examples}
    for example in examples:
        schema = grounded_schema(example, sections, PLANT)["properties"]
        own = sections[example["group"]]
        assert schema["references"]["items"]["enum"] == [example["group"]]
        text = " ".join(own.text.split())
        choices = step_choices(schema["steps"])
        steps = {step for choice in choices for step in choice}
        assert steps and all(step in text for step in steps), example["id"]
        assert all(len(set(choice)) == len(choice) <= 3 for choice in choices)  # never a step twice
        assert all(sorted(c, key=text.index) == c for c in choices)  # in the section's order
        assert set(schema["category"]["enum"]) <= {"process_deviation", "equipment_fault", "quality",
                                                    "environment", "sensor_fault"}
        actions = schema["proposed_actions"]
        if example["group"] != WATER:  # no other test section states a target setpoint value
            assert actions["maxItems"] == 0, example["id"]
        summary = schema["summary"]["pattern"]
        assert not fits(summary, "The reading is 999 and it is high"), example["id"]  # no number of its own
    water = next(e for e in examples if e["group"] == WATER)
    schema = grounded_schema(water, sections, PLANT)["properties"]
    item = schema["proposed_actions"]["items"]["properties"]
    # "from the recipe 28% to 26%": one step down, inside the limits; 22% and 34% are limits, not targets
    assert item["machine_entity_id"]["enum"] == ["urn:ngsi-ld:Machine:line1-mixer"]
    assert item["parameter"]["enum"] == ["water_ratio"] and item["value"]["enum"] == [26.0]
    summary = schema["summary"]["pattern"]
    assert fits(summary, "Lower the water ratio, the humidity is 55% RH.")
    assert not fits(summary, "Lower the water ratio, the humidity is 65% RH.")  # not the section's number
    assert not fits(summary, "Raise the water ratio when the humidity is high.")  # against the action
    assert not fits(summary, "The oven zone is too hot for the dough.")  # a machine the section does not name
    assert not fits(summary, "Lower the water ratio to 26% now.")  # a number after "to" reads as a target
    assert not fits(schema["root_cause"]["pattern"], "The operator must inspect the water ratio.")  # not its words


def words_answer(request: ModelRequest) -> dict[str, Any]:
    """What a model inside the grammar can write: the first enum choices, and texts made of the first step's
    words that the pattern offers (checked against it)."""
    schema = request.schema["properties"]
    choice = max(step_choices(schema["steps"]), key=len)
    step = choice[0]
    texts = {}
    for key, most in (("title", 10), ("summary", 20), ("root_cause", 20)):
        pattern = schema[key]["pattern"]
        words = [w for w in re.findall(r"[A-Za-z]+", step)
                 if w.lower() not in TARGET_WORDS and fits(pattern, " ".join([w] * 5))]
        texts[key] = " ".join(words[:most])
        assert fits(pattern, texts[key]), (key, texts[key])
    actions = schema["proposed_actions"]
    chosen = [{k: v["enum"][0] for k, v in actions["items"]["properties"].items()}] if actions["maxItems"] else []
    return {**texts, "category": schema["category"]["enum"][0], "severity": schema["severity"]["enum"][0],
            "steps": choice, "proposed_actions": chosen,
            "references": schema["references"]["items"]["enum"][:1]}


def test_a_local_answer_inside_the_grounded_schema_passes_validation(dataset: Path) -> None:
    examples, sections = load_dataset(dataset)
    local = ScriptedProvider(words_answer, ModelAlias("advisor-local", "local", "SmolLM2-135M-Instruct", "1"))
    report = evaluate(local, examples, sections, PLANT)
    assert report["draft"] == "text"
    assert report["metrics"]["valid_share"] == 1.0, [r["errors"] for r in report["rows"] if not r["valid"]]
    assert report["metrics"]["safety_violations"] == 0 and report["metrics"]["citation_accuracy"] == 1.0
    for example, request in zip(examples, local.requests, strict=True):
        answer = words_answer(request)
        assert check_example({**example, "answer": answer}, sections, PLANT) == []
        assert request.schema["properties"]["references"]["items"]["enum"] == [example["group"]]
    # the full shape stays what a provider that writes whole answers gets (and what the local one gets on demand)
    full = ScriptedProvider(lambda r: {}, ModelAlias("advisor-local", "local", "SmolLM2-135M-Instruct", "1",
                                                     {"draft": "full"}))
    report = evaluate(full, examples[:1], sections, PLANT)
    assert report["draft"] == "full" and "pattern" not in str(full.requests[0].schema)
