"""Generate: a model writes question/answer examples per source section, the answer in the recommendation's shape.

Any advisor model provider does the writing (services/advisor/models.py): Bedrock through Converse with a forced
tool in production, the local GGUF model on the embedded default, or the scripted generator below (deterministic,
instant: sentences of the section itself), which the tests and a first dataset use. Whatever it writes is only a
candidate: the validate stage checks it against its source before it can enter a dataset.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from services.advisor.models import (
    ModelProvider,
    ModelRequest,
    ScriptedProvider,
    create_provider,
    parse_aliases,
)
from services.advisor.recommend import CATEGORIES, SEVERITIES
from services.trainer.extract import SourceSection

SYSTEM = (
    "You write training examples for the line advisor of a cookie factory. From one section of a plant document, "
    "write questions an operator could face and the answer the advisor should give, using only what the section "
    "says. Cite the section. Propose no setpoint change the section does not name."
)
TOOL = "emit_examples"

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 90},
        "summary": {"type": "string", "maxLength": 200},
        "category": {"type": "string", "enum": [c for c in CATEGORIES if c != "none"]},
        "severity": {"type": "string", "enum": list(SEVERITIES)},
        "root_cause": {"type": "string", "maxLength": 160},
        "steps": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "maxLength": 160},
        },
        "proposed_actions": {
            "type": "array",
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {
                    "machine_entity_id": {"type": "string"},
                    "parameter": {"type": "string"},
                    "value": {"type": "number"},
                    "reason": {"type": "string", "maxLength": 160},
                },
                "required": ["machine_entity_id", "parameter", "value", "reason"],
            },
        },
        "references": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "string"}},
    },
    "required": [
        "title",
        "summary",
        "category",
        "severity",
        "root_cause",
        "steps",
        "proposed_actions",
        "references",
    ],
}


def request_schema(section: SourceSection, per_section: int) -> dict[str, Any]:
    answer = {
        **ANSWER_SCHEMA,
        "properties": {
            **ANSWER_SCHEMA["properties"],
            "references": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {"type": "string", "enum": [section.key]},
            },
        },
    }
    return {
        "type": "object",
        "properties": {
            "examples": {
                "type": "array",
                "minItems": 1,
                "maxItems": per_section,
                "items": {
                    "type": "object",
                    "properties": {"question": {"type": "string", "maxLength": 300}, "answer": answer},
                    "required": ["question", "answer"],
                },
            }
        },
        "required": ["examples"],
    }


def section_prompt(section: SourceSection, per_section: int) -> str:
    text = " ".join(section.text.split())
    return (
        f"Section: {section.key}\nDocument: {section.title}\nHeading: {section.section}\nText: {text[:1500]}\n"
        f"Write up to {per_section} examples."
    )


# --- the scripted generator ---------------------------------------------------------------------------------

_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sensor_fault", ("thermocouple", "sensor", "probe", "calibrat", "reads high but")),
    ("environment", ("humidity", "hall", "water ratio", "% rh")),
    ("equipment_fault", ("conveyor", "drive", "belt", "trip", "motor", "chiller", "maintenance", "torque")),
    ("quality", ("burnt", "cracked", "deformed", "bubbled", "defect", "reject")),
    ("process_deviation", ("setpoint", "zone", "temperature", "oven", "bake")),
)
_SENTENCE = re.compile(r"(?<=[.;])\s+|\s+(?=\d+\.\s)|\s+-\s+")


def guess_category(section: SourceSection) -> str:
    text = f"{section.title} {section.section} {section.text}".lower()
    stated = re.search(r"category: ([a-z_]+)", text)
    if stated and stated.group(1) in CATEGORIES:
        return stated.group(1)
    scores = {name: sum(text.count(word) for word in words) for name, words in _KEYWORDS}
    return max(scores, key=lambda name: (scores[name], -[n for n, _ in _KEYWORDS].index(name)))


def sentences(text: str) -> list[str]:
    out = []
    for piece in _SENTENCE.split(" ".join(text.split())):
        piece = re.sub(r"^\d+\.\s*", "", piece).strip(" ;-")
        labelled = re.match(r"^(likely cause|right action|symptom|applies to): (.+)$", piece, re.I)
        if labelled:  # a CSV row's `column: value` becomes a sentence of its own
            piece = labelled.group(2)[:1].upper() + labelled.group(2)[1:]
        if "urn:" in piece or piece[:1].islower():  # ids are not for operators; a fragment is not a sentence
            continue
        if len(re.findall(r"[A-Za-z]{2,}", piece)) >= 4:
            out.append(piece[:158].rstrip(" ,;") + ("." if not piece.endswith(".") else ""))
    return out


def scripted_answer(request: ModelRequest) -> dict[str, Any]:
    """Examples built from the section's own sentences (parsed back out of the prompt)."""
    fields = dict(line.split(": ", 1) for line in request.prompt.splitlines() if ": " in line)
    key, heading, text = fields.get("Section", ""), fields.get("Heading", ""), fields.get("Text", "")
    doc_id, _, section_id = key.partition("#")
    section = SourceSection(doc_id, section_id, fields.get("Document", ""), text, "", None, "")
    said = sentences(text)
    if not said:
        return {"examples": []}
    category = guess_category(section)
    severity = {"process_deviation": "major", "equipment_fault": "major", "quality": "major"}.get(
        category, "warning"
    )
    subject = re.sub(r"^[A-Z]?\d+\.?\s*", "", heading).strip() or section.title
    symptom = re.search(r"symptom: ([^;]+)", text)
    question = (
        f"Line 1 shows {symptom.group(1)}. What should the operator do?"
        if symptom
        else f"Line 1, {section.title.lower()}: what does the procedure say about {subject.lower()}?"
    )
    cause = next((s for s in said if re.search(r"cause|because|means|shows", s, re.I)), said[0])
    answer = {
        "title": f"{section.title}: {subject}"[:90],
        "summary": said[0][:200],
        "category": category,
        "severity": severity,
        "root_cause": cause[:160],
        "steps": said[1:4] or said[:1],
        "proposed_actions": [],
        "references": [key],
    }
    return {"examples": [{"question": question, "answer": answer}]}


def make_generator(name: str, aliases: str | None = None) -> ModelProvider:
    """`scripted`, or an advisor model alias (`advisor-local`, `advisor-bedrock`, or one from the alias table)."""
    if name == "scripted":
        return ScriptedProvider(scripted_answer)
    table = parse_aliases(aliases)
    if name not in table:
        raise ValueError(f"unknown generator {name!r} (scripted or one of {', '.join(sorted(table))})")
    return create_provider(table[name])


def generate_for_section(
    provider: ModelProvider, section: SourceSection, per_section: int = 2, max_tokens: int = 900
) -> tuple[list[dict[str, Any]], str | None]:
    """(candidate examples, an error when the model failed or wrote nothing usable)."""
    request = ModelRequest(
        SYSTEM,
        section_prompt(section, per_section),
        request_schema(section, per_section),
        tool_name=TOOL,
        max_tokens=max_tokens,
    )
    try:
        response = asyncio.run(provider.generate(request))
    except Exception as exc:  # noqa: BLE001 - ModelError or a provider bug: this section is reported, not fatal
        return [], f"{type(exc).__name__}: {str(exc)[:200]}"
    examples = (response.data or {}).get("examples")
    if not isinstance(examples, list):
        return [], response.error or "the answer holds no examples list"
    out = []
    for number, example in enumerate(examples[:per_section]):
        if isinstance(example, dict):
            out.append(
                {
                    "id": f"sop:{section.key}:{number}",
                    "source": "sop",
                    "group": section.key,
                    "doc_id": section.doc_id,
                    "section": section.section,
                    "page": section.page,
                    "question": example.get("question"),
                    "answer": example.get("answer"),
                    "generator": response.model,
                }
            )
    return out, None
