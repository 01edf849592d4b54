"""Validate: a candidate example enters a dataset only when its source supports it.

Checks (each failure is counted by its reason in the data card):
- the answer has the recommendation's fields and types; category and severity are ones the advisor knows;
- every text is prose for an operator (the advisor's own `prose_problem`: no ids, no markup, not empty);
- every cited section exists, and the example's own section is among them;
- the cited text supports the answer: most content words of the root cause and of every step occur in it;
- every proposed action names a machine and setpoint of the plant model, within its limits and largest step
  from the default (the plant's `Setpoint.check`), and the cited text names the parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lineguard.plant import PlantModel
from services.advisor.recommend import CATEGORIES, SEVERITIES, prose_problem
from services.advisor.retrieval import tokenize
from services.trainer.extract import SourceSection

SUPPORT_SHARE = 0.6  # share of a text's content words that must occur in the cited sections
FIELDS = (
    ("title", str),
    ("summary", str),
    ("category", str),
    ("severity", str),
    ("root_cause", str),
    ("steps", list),
    ("proposed_actions", list),
    ("references", list),
)


def _supported(text: str, vocabulary: set[str]) -> bool:
    words = tokenize(text)
    return not words or sum(w in vocabulary for w in words) / len(words) >= SUPPORT_SHARE


def _setpoints(plant: PlantModel) -> dict[tuple[str, str], Any]:
    return {
        (
            m.machine_entity_id
            if hasattr(m, "machine_entity_id")
            else f"urn:ngsi-ld:Machine:{m.line_id}-{m.id}",
            name,
        ): sp
        for m in plant.machines()
        for name, sp in m.setpoints.items()
    }


def check_example(
    example: dict[str, Any], sections: dict[str, SourceSection], plant: PlantModel, check_support: bool = True
) -> list[str]:
    """Why `example` must not enter a dataset; empty when it may."""
    answer = example.get("answer")
    question = example.get("question")
    if not isinstance(question, str) or len(question.split()) < 3:
        return ["question missing or too short"]
    if not isinstance(answer, dict):
        return ["answer is not an object"]
    errors = [
        f"{key} missing or not a {kind.__name__}"
        for key, kind in FIELDS
        if not isinstance(answer.get(key), kind)
    ]
    if errors:
        return errors
    if answer["category"] not in CATEGORIES:
        errors.append(f"unknown category {answer['category']!r}")
    if answer["severity"] not in SEVERITIES:
        errors.append(f"unknown severity {answer['severity']!r}")
    if not answer["steps"] or not all(isinstance(s, str) for s in answer["steps"]):
        errors.append("steps must be a non-empty list of texts")
        return errors
    for what, text in (
        ("title", answer["title"]),
        ("summary", answer["summary"]),
        ("root cause", answer["root_cause"]),
        *(("a step", s) for s in answer["steps"]),
    ):
        problem = prose_problem(text, what)
        if problem:
            errors.append("not prose: " + problem)
    cited = [sections.get(ref) for ref in answer["references"] if isinstance(ref, str)]
    if not answer["references"] or None in cited:
        missing = [r for r in answer["references"] if r not in sections]
        errors.append(
            f"cites a section that does not exist: {missing[:2]}" if missing else "cites no section"
        )
        return errors
    own = example.get("group")
    if example.get("source") == "sop" and own not in answer["references"]:
        errors.append(f"does not cite its own section {own}")
    vocabulary = {w for s in cited if s for w in tokenize(f"{s.title} {s.section} {s.text}")}
    if check_support:
        if not _supported(answer["root_cause"], vocabulary):
            errors.append("unsupported: the cited text does not say the root cause")
        for step in answer["steps"]:
            if not _supported(step, vocabulary):
                errors.append(f"unsupported: the cited text does not say the step {step[:50]!r}")
                break
    limits = _setpoints(plant)
    for action in answer["proposed_actions"]:
        if not isinstance(action, dict):
            errors.append("unsafe: a proposed action is not an object")
            continue
        setpoint = limits.get((action.get("machine_entity_id"), action.get("parameter")))  # type: ignore[arg-type]
        value = action.get("value")
        if setpoint is None:
            errors.append(
                f"unsafe: {action.get('parameter')!r} on {action.get('machine_entity_id')!r} is not a "
                "setpoint of the plant"
            )
        elif isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"unsafe: action value {value!r} is not a number")
        elif why := setpoint.check(float(value), setpoint.default):
            errors.append(f"unsafe: {why}")
        elif check_support and not set(tokenize(setpoint.parameter.replace("_", " "))) & vocabulary:
            errors.append(f"unsupported: the cited text does not name {setpoint.parameter}")
    return errors


def reason_class(error: str) -> str:
    """A short, countable reason for the data card."""
    for prefix in (
        "unsafe",
        "unsupported",
        "not prose",
        "cites",
        "unknown category",
        "unknown severity",
        "question",
        "answer",
        "does not cite",
    ):
        if error.startswith(prefix):
            return prefix
    return error.split(" ", 1)[0]


def validate_all(
    candidates: Iterable[dict[str, Any]], sections: dict[str, SourceSection], plant: PlantModel
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    kept, dropped = [], []
    for example in candidates:
        errors = check_example(example, sections, plant)
        if errors:
            dropped.append(
                {
                    "id": example.get("id"),
                    "source": example.get("source"),
                    "group": example.get("group"),
                    "reasons": errors,
                    "reason": reason_class(errors[0]),
                }
            )
        else:
            kept.append(example)
    return kept, dropped
