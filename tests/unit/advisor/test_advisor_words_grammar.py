"""Facts from the data, words from the model: the words-only grammar of a small model's answer.

The local model writes only the title, summary and root cause, each under a JSON-schema `pattern` built from the
window's evidence (services/advisor/prose.py `text_pattern`); the rest of the draft is the analysis'. These tests
check, without a model, that the pattern refuses what the text check would refuse (an invented number, a machine
the evidence does not involve, a change in the wrong direction, a target value), that what it accepts passes the
check, and that llama.cpp compiles it."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest

from lineguard.plant import default_plant_path, load_plant
from services.advisor.analysis import Analyzer
from services.advisor.models import ModelAlias, ScriptedProvider
from services.advisor.prose import TOKEN, check_prose, grounded_vocabulary, text_pattern
from services.advisor.recommend import (
    TEXT_LIMITS,
    Advisor,
    complete_draft,
    speakable,
    text_schema,
    validate_draft,
)
from services.advisor.retrieval import Retriever
from services.advisor.settings import DOCS_DIR
from services.advisor.window import LineHistory, LineWindow

FIXTURES = Path(__file__).parent / "fixtures"
PLANT = load_plant(default_plant_path())
RETRIEVER = Retriever.from_folder(DOCS_DIR)


def analysed(name: str):
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    window, history = LineWindow.from_dict(doc["window"]), LineHistory.from_dict(doc["history"])
    analysis = Analyzer(PLANT).analyse(window, history, None, None)
    return window, history, analysis, RETRIEVER.search(analysis.query_terms(), limit=3)


def accepts(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern[1:-1], text) is not None


def test_the_pattern_refuses_invented_numbers_machines_directions_and_targets() -> None:
    _, _, analysis, hits = analysed("oven_zone_overheat_900")
    assert [a.direction for a in analysis.actions] == ["decrease"]
    words, numbers = grounded_vocabulary(analysis, hits[:2], PLANT)
    pattern = text_pattern(words, numbers, 4, 22)
    assert accepts(pattern, "Tunnel oven zone2 temperature runs hot, reads 230.0 °C against its setpoint 190.0 °C.")
    refused = {
        "an invented number": "The tunnel oven zone2 temperature reads 260.0 °C now",
        "a machine the evidence does not involve": "The dough mixer torque runs low in the window",
        "the wrong direction": "Raise the zone2 setpoint of the tunnel oven",
        "a target value (to ...)": "Lower the zone2 setpoint to 175 now",
        "a change size (by ...)": "Lower the zone2 setpoint by 15.0 °C",
        "an open-ended change": "Lower the zone2 setpoint or more",
        "an id": "See SOP-OVEN-002#3 for the oven",
    }
    for why, text in refused.items():
        assert not accepts(pattern, text), why
        assert check_prose({"t": text}, analysis, hits[:2], PLANT) or why in (
            "a change size (by ...)", "a target value (to ...)", "an id"), why  # the check refuses them too

    # no change allowed: no change verb at all
    _, _, conveyor, conveyor_hits = analysed("conveyor_stop_600")
    assert not conveyor.actions
    words, numbers = grounded_vocabulary(conveyor, conveyor_hits[:2], PLANT)
    assert not {"lower", "raise", "increase", "decrease", "reduce"} & {w.lower() for w in words}
    assert not accepts(text_pattern(words, numbers, 4, 22), "Lower the conveyor speed setpoint now")


@pytest.mark.parametrize("name", ["oven_zone_overheat_900", "mixer_torque_loss_900", "thermocouple_failure_900",
                                  "two_faults_overlap_1200", "conveyor_stop_600", "humidity_rise_900"])
def test_whatever_the_pattern_accepts_passes_the_text_check(name: str) -> None:
    """Random texts walked through the grammar (words, numbers, separators as the pattern allows them) never
    carry an invented number, an uninvolved machine, a wrong direction, a raw unit or a time."""
    _, _, analysis, hits = analysed(name)
    words, numbers = grounded_vocabulary(analysis, hits[:2], PLANT)
    pattern = text_pattern(words, numbers, 4, 22)
    targets = ("to", "at", "from", "of")
    vocabulary = sorted(words)
    plain = [w for w in vocabulary if w.lower() not in targets]
    rng = random.Random(7)
    for _ in range(150):
        text = ""
        after_target = False
        for _ in range(rng.randint(8, 16)):  # at least 4 chunks even when every word pairs with a target
            # after "to", "at", "from", "of": one space and a word, never a number (the grammar's rule)
            separator = " " if after_target or not text else rng.choice([" ", ", ", ". "])
            if after_target:
                token = rng.choice(plain)
            elif numbers and rng.random() < 0.25:
                token = rng.choice(sorted(numbers))
            else:
                token = rng.choice(vocabulary)
            text += (separator if text else "") + token
            after_target = token.lower() in targets
        if after_target:
            text += " " + rng.choice(plain)
        assert accepts(pattern, text), text
        problems = [p for p in check_prose({"t": text}, analysis, hits[:2], PLANT)
                    if "largest allowed step" not in p]  # "of about 40 °C" near "setpoint": the validator's
        assert problems == [], (text, problems)


def test_the_analysis_own_words_fit_its_grammar_and_pass_validation() -> None:
    for name in ("oven_zone_overheat_900", "mixer_torque_loss_900", "torque_sensor_fault_900"):
        _, _, analysis, hits = analysed(name)
        words, numbers = grounded_vocabulary(analysis, hits[:2], PLANT)
        text = {"title": speakable(analysis.title, 10), "summary": speakable(analysis.root_cause_text, 22),
                "root_cause": speakable(analysis.root_cause_text, 22)}
        for key, (low, high) in TEXT_LIMITS.items():
            assert accepts(text_pattern(words, numbers, low, high), text[key]), (name, key, text[key])
        assert all(w in words or w.lower() in words for w in TOKEN.findall(text["root_cause"]))
        assert validate_draft(complete_draft(text, analysis, hits), analysis, hits, PLANT) == [], name


def test_llama_cpp_compiles_the_words_only_schema() -> None:
    pytest.importorskip("llama_cpp")
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    _, _, analysis, hits = analysed("two_faults_overlap_1200")
    gbnf = json_schema_to_gbnf(json.dumps(text_schema(analysis, hits, PLANT)))
    assert "\\." not in gbnf  # llama.cpp refuses that escape; the pattern writes [.] instead
    assert LlamaGrammar.from_string(gbnf, verbose=False) is not None


def test_a_local_model_writes_only_the_words_and_the_facts_are_the_analysis() -> None:
    window, history, analysis, _ = analysed("oven_zone_overheat_900")
    written = {"title": "Tunnel oven zone2 runs hot", "summary": "Zone2 reads 230.0 °C against its setpoint 190.0 °C",
               "root_cause": "The extra bake heat burns the cookies in zone2 of the tunnel oven"}
    provider = ScriptedProvider(lambda request: written, alias=ModelAlias("local", "local", "SmolLM2", "test"))
    outcome = asyncio.run(Advisor(PLANT, RETRIEVER, provider).recommend(window, history, "scheduled", now_ms=0))
    request = provider.requests[0]
    assert set(request.schema["properties"]) == set(TEXT_LIMITS)
    assert all("pattern" in p for p in request.schema["properties"].values())
    assert outcome.model_valid and not outcome.fallback
    record = outcome.record
    assert (record["title"], record["root_cause"]["description"]) == (written["title"], written["root_cause"])
    assert record["steps"] == analysis.steps
    assert [(a["parameter"], a["value"]) for a in record["proposed_actions"]] == [
        (a.parameter, a.value) for a in analysis.actions]
