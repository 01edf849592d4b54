"""The test split's answer schema for a small model: every choice from the example's own SOP section(s).

The advisor's principle ("facts from the data, words from the model", services/advisor/recommend.py) applied to
an SOP question: the schema's enums and patterns come from the sections the prompt quotes, so the grammar offers
only what the validator (`validate.check_example`) accepts:
- references: the sections in the prompt (today only the example's own, so it is always cited);
- steps: 1 to 3 distinct sentences of those sections that read as prose, in their order (the model chooses);
- category and severity: the valid ones (enum: the model chooses);
- proposed_actions: only a setpoint value a section states as a target ("from 28% to 26%") in a sentence that
  names the parameter, within the plant's limits and largest step; none (an empty array) otherwise;
- title, summary, root cause: the advisor's `text_pattern` over the sections' vocabulary (the advisor's
  `grounded_vocabulary`: numbers only the sections', with their units; machines only those the sections name;
  change verbs only in the allowed action's direction, none when no change is allowed), less the advisor's
  common words the sections do not use: every content word is the sections' own, so the text is supported.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

from lineguard.plant import PlantModel
from services.advisor.analysis import Analysis, ProposedAction
from services.advisor.prose import NUMBER, _sentences, grounded_vocabulary, machine_words, text_pattern
from services.advisor.recommend import CATEGORIES, SEVERITIES, TEXT_LIMITS, prose_problem
from services.advisor.retrieval import tokenize
from services.trainer.extract import SourceSection

MAX_STEPS = 3
MAX_STEP_CHOICES = 130  # ordered choices of 1-3 steps offered as alternatives (8 sentences: 92)


def prompt_sections(example: dict[str, Any], sections: dict[str, SourceSection]) -> list[str]:
    """The sections the example's prompt quotes, its own first."""
    own = str(example.get("group") or "")
    context = str(example.get("context") or "")
    quoted = [key for key in sections if f"The SOP {key} says" in context]
    return [key for key in dict.fromkeys([own, *quoted]) if key in sections]


def section_steps(texts: list[str]) -> list[str]:
    """Sentences of the sections an operator can read as a step (no ids, markup or quotes a grammar would need
    to escape)."""
    steps = []
    for text in texts:
        for sentence in _sentences(" ".join(text.split())):
            sentence = sentence.strip().lstrip("-").strip()
            if prose_problem(sentence, "step") is None and not re.search(r"[\"\\]", sentence):
                steps.append(sentence)
    return list(dict.fromkeys(steps))


def stated_actions(texts: list[str], plant: PlantModel, line_id: str) -> list[ProposedAction]:
    """Setpoint values the sections state as a target ("to 26%") in a sentence naming the parameter (and the
    machine, when two machines share the parameter's name), a change from the default within the plant's limits
    and largest step."""
    machines = list(plant.lines[line_id].machines.values())
    words = machine_words(plant, line_id)
    actions: dict[tuple[str, str, float], ProposedAction] = {}
    for sentence in (s for text in texts for s in _sentences(" ".join(text.split()))):
        lowered = sentence.lower()
        targets = [float(m.group(1)) for m in NUMBER.finditer(sentence)
                   if sentence[:m.start()].lower().split()[-1:] == ["to"]]
        for machine in machines:
            for name, setpoint in machine.setpoints.items():
                if name.lower() not in lowered and name.replace("_", " ").lower() not in lowered:
                    continue
                shared = sum(name in m.setpoints for m in machines) > 1
                if shared and not any(re.search(rf"\b{w}\b", lowered) for w, m in words.items() if m == machine.id):
                    continue
                for value in targets:
                    if value != setpoint.default and not setpoint.check(value, setpoint.default):
                        entity = f"urn:ngsi-ld:Machine:{line_id}-{machine.id}"
                        actions[(entity, name, value)] = ProposedAction(
                            machine.id, entity, name, value, setpoint.default, setpoint.unit, sentence,
                            setpoint.max_step)
    return list(actions.values())


def _steps_schema(steps: list[str]) -> dict[str, Any]:
    """1 to 3 distinct sentences in the section's order, each choice an alternative (llama.cpp's grammar ignores
    `uniqueItems`, and a small model repeats a sentence); a plain enum when there are too many choices."""
    choices = [c for k in range(1, MAX_STEPS + 1) for c in combinations(steps, k)]
    if len(steps) < 2 or len(choices) > MAX_STEP_CHOICES:
        return {"type": "array", "minItems": 1, "maxItems": min(MAX_STEPS, max(1, len(steps))),
                "items": {"type": "string", "enum": steps}}
    return {"anyOf": [{"type": "array", "prefixItems": [{"type": "string", "enum": [step]} for step in choice],
                       "minItems": len(choice), "maxItems": len(choice)} for choice in choices]}


def step_choices(schema: dict[str, Any]) -> list[list[str]]:
    """The step lists a schema of `_steps_schema` allows."""
    if "anyOf" in schema:
        return [[item["enum"][0] for item in option["prefixItems"]] for option in schema["anyOf"]]
    return [[step] for step in schema["items"]["enum"]]


def _action_schema(actions: list[ProposedAction]) -> dict[str, Any]:
    if not actions:
        return {"type": "array", "maxItems": 0, "items": {"type": "object"}}
    options = [{"type": "object", "properties": {
        "machine_entity_id": {"type": "string", "enum": [a.machine_entity_id]},
        "parameter": {"type": "string", "enum": [a.parameter]},
        "value": {"type": "number", "enum": [a.value]},
        "reason": {"type": "string", "enum": [a.reason]},
    }, "required": ["machine_entity_id", "parameter", "value", "reason"]} for a in actions]
    item = options[0] if len(options) == 1 else {"anyOf": options}
    return {"type": "array", "minItems": 0, "maxItems": min(2, len(actions)), "items": item}


def grounded_schema(
    example: dict[str, Any], sections: dict[str, SourceSection], plant: PlantModel
) -> dict[str, Any]:
    """The answer schema for one test example, every enum and pattern from the sections its prompt quotes."""
    refs = prompt_sections(example, sections)
    cited = [sections[r] for r in refs]
    texts = [s.text for s in cited]
    line_id = next(iter(plant.lines))
    actions = stated_actions(texts, plant, line_id)
    steps = section_steps(texts) or [" ".join(cited[0].title.split())] if cited else []
    # the sections as an analysis' own texts: their words and numbers are the grounded vocabulary
    pseudo = Analysis(line_id=line_id, window_start=0, window_end=0, findings=[], title=" ".join(f"{s.title} {s.section}" for s in cited),
                      steps=texts, actions=actions)
    words, numbers = grounded_vocabulary(pseudo, [], plant)
    # only the sections' own content words (and function words): the validator wants the root cause supported
    # by the cited text, so the advisor's common words ("operator", "inspect") are not offered here
    support = {t for s in cited for t in tokenize(f"{s.title} {s.section} {s.text}")}
    words = {w for w in words if all(t in support for t in tokenize(w))}
    # the sections the prompt quotes (one per SOP question today: the own section, which check_example requires)
    references = {"type": "array", "minItems": 1, "maxItems": min(2, max(1, len(refs))),
                  "items": {"type": "string", "enum": refs or ["none"]}}
    return {
        "type": "object",
        "properties": {
            "title": {"type": "string", "pattern": text_pattern(words, numbers, *TEXT_LIMITS["title"])},
            "summary": {"type": "string", "pattern": text_pattern(words, numbers, *TEXT_LIMITS["summary"])},
            "category": {"type": "string", "enum": [c for c in CATEGORIES if c != "none"]},
            "severity": {"type": "string", "enum": list(SEVERITIES)},
            "root_cause": {"type": "string",
                           "pattern": text_pattern(words, numbers, *TEXT_LIMITS["root_cause"])},
            "steps": _steps_schema(steps),
            "proposed_actions": _action_schema(actions),
            "references": references,
        },
        "required": ["title", "summary", "category", "severity", "root_cause", "steps", "proposed_actions",
                     "references"],
    }
