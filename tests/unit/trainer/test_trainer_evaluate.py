"""`lineguard-train evaluate`: metrics over the test split, safety violations, exemplars, and promote on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineguard.model_registry import FileStore, Registry
from lineguard.plant import default_plant_path, load_plant
from services.advisor.models import ModelAlias, ScriptedProvider
from services.trainer.dataset import user_prompt
from services.trainer.evaluate import evaluate, load_dataset, markdown
from services.trainer.exemplars import ExemplarProvider
from services.trainer.generate import make_generator
from services.trainer.pipeline import Prepare, PrepareOptions

DOCS = Path(__file__).resolve().parents[3] / "examples" / "cookie-line" / "docs"
PLANT = load_plant(default_plant_path())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds")
    Prepare(PrepareOptions(DOCS, out), PLANT, lambda: make_generator("scripted")).run()
    return out


def oracle(examples: list[dict], mutate=None) -> ScriptedProvider:
    answers = {user_prompt(e): e["answer"] for e in examples}

    def answer(request):
        found = dict(answers[request.prompt.rsplit("Question: ", 1)[-1]])
        return mutate(found) if mutate else found

    return ScriptedProvider(answer, ModelAlias("oracle", "openai", "oracle", "1"))


def test_a_perfect_model_scores_one_everywhere(dataset: Path) -> None:
    examples, sections = load_dataset(dataset)
    report = evaluate(oracle(examples), examples, sections, PLANT)
    metrics = report["metrics"]
    assert metrics["examples"] == len(examples) >= 4
    for key in (
        "valid_share",
        "category_accuracy",
        "root_cause_accuracy",
        "action_accuracy",
        "citation_accuracy",
    ):
        assert metrics[key] == 1.0, key
    assert metrics["safety_violations"] == 0
    assert "| valid_share | 1.00 |" in markdown(report)


def test_unsafe_and_wrong_answers_are_counted(dataset: Path) -> None:
    examples, sections = load_dataset(dataset)

    def unsafe(answer: dict) -> dict:
        action = {
            "machine_entity_id": "urn:ngsi-ld:Machine:line1-oven",
            "parameter": "zone2_setpoint",
            "value": 400.0,
            "reason": "hotter",
        }
        return {**answer, "proposed_actions": [action]}

    metrics = evaluate(oracle(examples, unsafe), examples, sections, PLANT)["metrics"]
    assert metrics["safety_violations"] == len(examples) and metrics["valid_share"] == 0.0
    assert metrics["action_accuracy"] == 0.0

    def confused(answer: dict) -> dict:
        return {
            **answer,
            "category": "quality" if answer["category"] != "quality" else "environment",
            "references": ["SOP-OVEN-001#1. Purpose and scope"],
        }

    metrics = evaluate(oracle(examples, confused), examples, sections, PLANT)["metrics"]
    assert metrics["category_accuracy"] == 0.0 and metrics["citation_accuracy"] < 0.5
    broken = ScriptedProvider(lambda r: "not json", ModelAlias("b", "openai", "b", "1"))
    report = evaluate(broken, examples, sections, PLANT)
    assert report["metrics"]["valid_share"] == 0.0 and "JSON" in report["rows"][0]["errors"][0]


def test_promote_follows_the_evaluation(dataset: Path, tmp_path: Path) -> None:
    examples, sections = load_dataset(dataset)
    registry = Registry(FileStore(tmp_path / "registry.json"))
    registry.register("v1", "openai", "so-so")
    registry.record_metrics(
        "v1",
        "test",
        evaluate(oracle(examples, lambda a: {**a, "category": "quality"}), examples, sections, PLANT)[
            "metrics"
        ],
    )
    assert registry.promote().promote
    registry.register("v2", "openai", "good")
    registry.record_metrics("v2", "test", evaluate(oracle(examples), examples, sections, PLANT)["metrics"])
    assert registry.promote().promote and registry.resolve("production")["version"] == "v2"
    registry.register("v3", "openai", "reckless")
    unsafe = evaluate(
        oracle(
            examples,
            lambda a: {
                **a,
                "proposed_actions": [
                    {
                        "machine_entity_id": "urn:ngsi-ld:Machine:line1-mixer",
                        "parameter": "speed",
                        "value": 1e6,
                        "reason": "faster",
                    }
                ],
            },
        ),
        examples,
        sections,
        PLANT,
    )["metrics"]
    registry.record_metrics("v3", "test", unsafe)
    decision = registry.promote()
    assert not decision.promote and any("safety" in r for r in decision.reasons)


def test_exemplars_come_from_the_train_split_only(dataset: Path) -> None:
    train, _ = load_dataset(dataset, "train")
    test, sections = load_dataset(dataset)
    inner = oracle(test)
    provider = ExemplarProvider(inner, train, k=2)
    evaluate(provider, test, sections, PLANT)
    train_questions = {e["question"] for e in train}
    test_questions = {e["question"] for e in test}
    for request in inner.requests:
        shown = {
            line.removeprefix("Question: ")
            for line in request.prompt.splitlines()
            if line.startswith("Question: ")
        }
        assert request.prompt.startswith("Solved examples:")
        exemplars = shown - {request.prompt.rsplit("Question: ", 1)[-1].splitlines()[0]}
        assert exemplars and exemplars <= train_questions and not exemplars & test_questions
    assert provider.alias.version.endswith("+exemplars2")
    # the nearest solved example is about the same kind of problem (here: every test example)
    same = [
        provider.exemplars(user_prompt(e))[0]["answer"]["category"] == e["answer"]["category"] for e in test
    ]
    assert sum(same) >= 0.75 * len(test)
