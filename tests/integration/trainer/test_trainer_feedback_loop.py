"""A vote on feedback.v1 reaches the next dataset, end to end through Tansu and `lineguard-train prepare`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from lineguard.kafka import Producer
from lineguard.plant import default_plant_path, load_plant
from services.advisor.models import AnalysisOnlyProvider, parse_aliases
from services.advisor.recommend import Advisor
from services.advisor.retrieval import Retriever
from services.advisor.window import LineHistory, LineWindow
from services.trainer.cli import main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "unit" / "advisor" / "fixtures"


def recommendation(fixture: str) -> dict:
    """A real advisor recommendation (the deterministic analysis) for a recorded window of a scenario."""
    doc = json.loads((FIXTURES / f"{fixture}.json").read_text())
    advisor = Advisor(
        load_plant(default_plant_path()),
        Retriever.from_folder(ROOT / "examples/cookie-line/docs"),
        AnalysisOnlyProvider(parse_aliases(None)["analysis-only"]),
    )
    outcome = asyncio.run(
        advisor.recommend(
            LineWindow.from_dict(doc["window"]),
            LineHistory.from_dict(doc["history"]),
            "scheduled",
            now_ms=1_764_404_000_000,
        )
    )
    return outcome.record


def vote(fid: str, rec_id: str, value: int, operator: str, comment: str | None = None) -> dict:
    return {
        "feedback_id": fid,
        "recommendation_id": rec_id,
        "line_id": "line1",
        "kind": "vote",
        "vote": value,
        "comment": comment,
        "operator": operator,
        "created_at": 1_764_404_500_000,
    }


def run_prepare(out: Path, settings, monkeypatch, capsys) -> dict:
    monkeypatch.setenv("LINEGUARD_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("LINEGUARD_TOPIC_PREFIX", settings.topic_prefix)
    assert (
        main(
            [
                "prepare",
                "--docs",
                str(ROOT / "examples/cookie-line/docs"),
                "--out",
                str(out),
                "--history",
                "topics",
            ]
        )
        == 0
    )
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def examples(out: Path) -> dict[str, dict]:
    found = {}
    for split in ("train", "test"):
        for line in (out / "examples" / f"{split}.jsonl").read_text().splitlines():
            example = json.loads(line)
            found[example["id"]] = {**example, "split": split}
    return found


def test_votes_on_feedback_reach_the_next_dataset(
    make_settings, create_topics, tmp_path, monkeypatch, capsys
):
    settings = make_settings(service_name="trainer")
    create_topics(settings)
    # two windows of two scenarios (different ids: an id is the line, the window and the trigger)
    hot, torque = recommendation("oven_zone_overheat_900"), recommendation("mixer_torque_loss_300")
    assert hot["id"] != torque["id"]
    producer = Producer(settings)
    for record in (hot, torque):
        producer.produce("recommendations.v1", record["line_id"], record)
    producer.produce("feedback.v1", hot["id"], vote("f1", hot["id"], 1, "anna"))
    producer.produce(
        "feedback.v1",
        torque["id"],
        vote("f2", torque["id"], -1, "ben", "the belt was fine, it was the flour"),
    )
    assert producer.flush() == 0

    out = tmp_path / "dataset"
    first = run_prepare(out, settings, monkeypatch, capsys)
    found = examples(out)
    assert f"history:{hot['id']}" in found and f"history:{torque['id']}" not in found
    learned = found[f"history:{hot['id']}"]
    assert learned["answer"]["title"] == hot["title"] and "230.0" in learned["question"]
    published = (out / f"{learned['split']}.jsonl").read_text()
    assert hot["title"] in published  # in the Bedrock JSONL of its split
    review = [json.loads(line) for line in (out / "review.jsonl").read_text().splitlines()]
    assert [r["recommendation_id"] for r in review] == [torque["id"]]
    assert review[0]["comments"] == ["the belt was fine, it was the flour"]
    assert first["review"] == 1
    # the upvote also teaches the advisor's own prompt (the local model's exemplars); the downvote does not
    exemplars = [json.loads(line) for line in (out / "advisor_exemplars.jsonl").read_text().splitlines()]
    assert [e["id"] for e in exemplars] == [f"history:{hot['id']}"]
    assert exemplars[0]["question"].startswith("Category: ") and "230.0" in exemplars[0]["question"]

    # two more operators find the torque advice helpful after all: the next run learns it, the review item goes
    producer.produce("feedback.v1", torque["id"], vote("f3", torque["id"], 1, "carla"))
    producer.produce("feedback.v1", torque["id"], vote("f4", torque["id"], 1, "dev"))
    assert producer.close() == 0
    second = run_prepare(out, settings, monkeypatch, capsys)
    assert "history" in second["ran"] and "extract" not in second["ran"]  # the documents did not change
    assert f"history:{torque['id']}" in examples(out) and second["review"] == 0
    exemplars = (out / "advisor_exemplars.jsonl").read_text()
    assert f"history:{torque['id']}" in exemplars and f"history:{hot['id']}" in exemplars
    assert second["dataset_id"] != first["dataset_id"]
