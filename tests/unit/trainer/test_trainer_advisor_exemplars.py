"""The learning step reaches the advisor's own prompts: exemplars from recorded windows and from upvoted
recommendations (`prepare --windows`, `--history`) -> advisor_exemplars.jsonl -> the local model's brief."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from lineguard.plant import default_plant_path, load_plant
from services.advisor.models import ModelAlias, ScriptedProvider, create_provider
from services.advisor.recommend import TEXT_LIMITS, Advisor, Exemplars
from services.advisor.retrieval import Retriever
from services.advisor.window import LineHistory, LineWindow
from services.trainer.advisor_exemplars import evaluate_windows, load_windows
from services.trainer.generate import make_generator
from services.trainer.pipeline import Prepare, PrepareOptions

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "examples" / "cookie-line" / "docs"
FIXTURES = ROOT / "tests" / "unit" / "advisor" / "fixtures"
PLANT = load_plant(default_plant_path())
RETRIEVER = Retriever.from_folder(DOCS)
UPVOTED_TITLE = "Zone2 of the tunnel oven runs hot, the cookies burn"


def window(name: str) -> tuple[LineWindow, LineHistory]:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    return LineWindow.from_dict(doc["window"]), LineHistory.from_dict(doc["history"])


def vote(fid: str, rec_id: str, value: int) -> dict:
    return {"feedback_id": fid, "recommendation_id": rec_id, "line_id": "line1", "kind": "vote", "vote": value,
            "comment": None, "operator": "op1", "created_at": 1}


def published(name: str, title: str) -> dict:
    """What the advisor published for a recorded window (the analysis), with the title an operator liked."""
    advisor = Advisor(PLANT, RETRIEVER, create_provider(ModelAlias("a", "analysis", "deterministic-analysis")))
    record = asyncio.run(advisor.recommend(*window(name), "scheduled", now_ms=0)).record
    return {**record, "title": title}


def local_stub(exemplars: Path | None) -> ScriptedProvider:
    """The local model's place in the advisor (words-only prompt and grammar), answering instantly."""
    options = {"exemplars": str(exemplars)} if exemplars else {}
    answer = {"title": "Tunnel oven zone2 runs hot", "summary": "Zone2 reads 230.0 °C against its setpoint 190.0 °C",
              "root_cause": "The extra bake heat burns the cookies in zone2 of the tunnel oven"}
    return ScriptedProvider(lambda request: answer, alias=ModelAlias("local", "local", "SmolLM2", "t", options))


def test_an_upvoted_recommendation_reaches_the_advisors_prompt(tmp_path: Path) -> None:
    liked = published("oven_zone_overheat_300", UPVOTED_TITLE)
    # (the fixtures share their run's start, so their ids would be the same)
    disliked = {**published("mixer_torque_loss_300", "Dough mixer torque low, a title nobody liked"),
                "id": "rec-disliked"}
    out = tmp_path / "ds"
    Prepare(PrepareOptions(DOCS, out, history=lambda: ([liked, disliked], [vote("f1", liked["id"], 1),
                                                                          vote("f2", disliked["id"], -1)])),
            PLANT, lambda: make_generator("scripted")).run()
    exemplars = [json.loads(x) for x in (out / "advisor_exemplars.jsonl").read_text().splitlines()]
    assert [e["id"] for e in exemplars] == [f"history:{liked['id']}"]
    assert exemplars[0]["answer"]["title"] == UPVOTED_TITLE and set(exemplars[0]["answer"]) == set(TEXT_LIMITS)

    # the next oven window: the local model's prompt shows the operators' answer; without the file it does not
    with_file, without = local_stub(out / "advisor_exemplars.jsonl"), local_stub(None)
    for provider in (with_file, without):
        outcome = asyncio.run(Advisor(PLANT, RETRIEVER, provider).recommend(
            *window("oven_zone_overheat_900"), "scheduled", now_ms=0))
        assert outcome.model_valid, outcome.errors
    assert UPVOTED_TITLE in with_file.requests[0].prompt
    assert UPVOTED_TITLE not in without.requests[0].prompt
    assert "a title nobody liked" not in with_file.requests[0].prompt


def test_recorded_windows_become_exemplars_and_the_evaluation_leaves_their_scenario_out(tmp_path: Path) -> None:
    windows = tmp_path / "windows"
    windows.mkdir()
    for name in ("oven_zone_overheat_300", "oven_zone_overheat_900", "mixer_torque_loss_900", "normal_run_900"):
        shutil.copy(FIXTURES / f"{name}.json", windows / f"{name}.json")
    out = tmp_path / "ds"
    card = Prepare(PrepareOptions(DOCS, out, windows=windows), PLANT, lambda: make_generator("scripted")).run().card
    assert card["advisor_exemplars"] == {"windows": 3, "history": 0, "dropped": []}  # a normal window teaches none
    items = [json.loads(x) for x in (out / "advisor_exemplars.jsonl").read_text().splitlines()]
    assert {i["group"] for i in items} == {"oven_zone_overheat", "mixer_torque_loss"}
    assert all(i["question"].startswith("Category: ") for i in items)  # the advisor's own brief

    exemplars = Exemplars(items)
    brief = next(i["question"] for i in items if i["id"] == "window:oven_zone_overheat_900")
    assert exemplars.nearest(brief, 1)[0]["group"] == "oven_zone_overheat"
    assert all(i["group"] != "oven_zone_overheat" for i in exemplars.nearest(brief, 2, "oven_zone_overheat"))

    provider = local_stub(out / "advisor_exemplars.jsonl")
    report = evaluate_windows(Advisor(PLANT, RETRIEVER, provider), load_windows(windows))
    assert report["metrics"]["windows"] == 3 and report["metrics"]["model_valid_share"] >= 2 / 3
    assert report["metrics"]["safety_violations"] == 0
    oven_prompts = [r.prompt for r in provider.requests if "Tunnel oven" in r.prompt.rsplit("Now this window.")[-1]]
    assert oven_prompts and all("Solved examples" not in p or "Dough mixer" in p.split("Now this window.")[0]
                                for p in oven_prompts)


def test_evaluate_windows_on_the_command_line(tmp_path: Path, capsys) -> None:
    from services.trainer.cli import main

    windows = tmp_path / "windows"
    windows.mkdir()
    shutil.copy(FIXTURES / "conveyor_stop_600.json", windows / "conveyor_stop_600.json")
    code = main(["evaluate", "--windows", str(windows), "--model", "analysis-only", "--dataset", str(tmp_path),
                 "--docs", str(DOCS)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # no model: every window is the analysis' own (not the model's), and nothing unsafe
    assert printed["windows"] == 1 and printed["model_valid_share"] == 0 and printed["safety_violations"] == 0
    report = (tmp_path / "reports" / "windows-analysis-only.md").read_text()
    assert "| conveyor_stop_600 | no | 0 |" in report
