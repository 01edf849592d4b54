"""Evaluate: any model over the held-out test split -> metrics (JSON) and a report (Markdown).

Every test example is sent as it is published (the advisor's system prompt, the question with its SOP text),
under the answer's JSON schema (a grammar locally, a forced tool on Bedrock). Each answer is checked by the
same validator as the dataset (`validate.check_example`) and compared with the expected answer:
- valid_share: answers that pass validation (parse, fields, prose, citations exist, supported, safe);
- category_accuracy, root_cause_accuracy (most content words of the expected root cause present),
  action_accuracy (the same machines and parameters), direction_accuracy (each shared action moves the same way
  from the setpoint's default), citation_accuracy (the expected section cited, nothing invented);
- safety_violations: answers proposing an action outside the plant's setpoints, limits or largest step;
- latency (p50, p95, max) per answer.
A provider that drafts in words only (the alias option `draft`, "text" by default for the `local` provider, as
in the advisor) answers under `grounded.grounded_schema`: every enum and pattern from the example's own section
(the model chooses among grounded options and writes the words); the others under the full answer schema.
The metrics are what `promote` compares (lineguard/model_registry.py).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from lineguard.model_registry import SCORED
from lineguard.plant import PlantModel
from services.advisor.models import ModelError, ModelProvider, ModelRequest
from services.advisor.recommend import SYSTEM_PROMPT, draft_mode
from services.advisor.retrieval import tokenize
from services.trainer.dataset import user_prompt
from services.trainer.extract import SourceSection
from services.trainer.generate import ANSWER_SCHEMA
from services.trainer.grounded import grounded_schema
from services.trainer.validate import check_example

ACCURACIES = SCORED  # the shares a report lists are the ones promotion scores


def load_dataset(
    folder: str | Path, split: str = "test"
) -> tuple[list[dict[str, Any]], dict[str, SourceSection]]:
    folder = Path(folder)
    examples = [
        json.loads(line)
        for line in (folder / "examples" / f"{split}.jsonl").read_text().splitlines()
        if line.strip()
    ]
    extracted = json.loads((folder / "work" / "extract.json").read_text())
    sections = {f"{s['doc_id']}#{s['section']}": SourceSection.from_dict(s) for s in extracted["sections"]}
    return examples, sections


def schema_for(sections: dict[str, SourceSection]) -> dict[str, Any]:
    refs = {
        "type": "array",
        "minItems": 1,
        "maxItems": 2,
        "items": {"type": "string", "enum": sorted(sections)},
    }
    return {**ANSWER_SCHEMA, "properties": {**ANSWER_SCHEMA["properties"], "references": refs}}


def _covers(expected: str, got: str, share: float = 0.5) -> bool:
    want = set(tokenize(expected))
    return not want or len(want & set(tokenize(got))) / len(want) >= share


def _direction(plant: PlantModel, action: dict[str, Any]) -> int:
    for machine in plant.machines():
        setpoint = machine.setpoints.get(str(action.get("parameter")))
        if (
            setpoint is not None
            and machine.line_id
            and str(action.get("machine_entity_id", "")).endswith(machine.id)
        ):
            value = action.get("value")
            if isinstance(value, int | float):
                return (value > setpoint.default) - (value < setpoint.default)
    return 0


def score_answer(
    example: dict[str, Any], got: dict[str, Any] | None, sections: dict[str, SourceSection], plant: PlantModel
) -> dict[str, Any]:
    expected = example["answer"]
    candidate = {**example, "answer": got}
    errors = (
        check_example(candidate, sections, plant, check_support=example.get("source") == "sop")
        if got
        else ["the output did not parse"]
    )
    got = got if isinstance(got, dict) else {}
    actions = [a for a in got.get("proposed_actions") or [] if isinstance(a, dict)]
    want_actions = expected.get("proposed_actions") or []
    keys = {(a.get("machine_entity_id"), a.get("parameter")) for a in actions}
    want_keys = {(a.get("machine_entity_id"), a.get("parameter")) for a in want_actions}
    directions = [
        _direction(plant, a) == _direction(plant, b)
        for a in want_actions
        for b in actions
        if (a.get("machine_entity_id"), a.get("parameter"))
        == (b.get("machine_entity_id"), b.get("parameter"))
    ]
    refs = [r for r in got.get("references") or [] if isinstance(r, str)]
    return {
        "id": example.get("id"),
        "valid": not errors,
        "errors": errors[:5],
        "category": got.get("category") == expected.get("category"),
        "root_cause": _covers(str(expected.get("root_cause") or ""), str(got.get("root_cause") or "")),
        "action": keys == want_keys,
        "direction": keys == want_keys and all(directions),
        "citation": bool(refs) and expected["references"][0] in refs and all(r in sections for r in refs),
        "unsafe": any(e.startswith("unsafe") for e in errors),
    }


async def _run(
    provider: ModelProvider, examples: list[dict[str, Any]], schemas: list[dict[str, Any]], max_tokens: int
) -> list[tuple[dict[str, Any] | None, float, str | None]]:
    out = []
    for example, schema in zip(examples, schemas, strict=True):
        started = time.perf_counter()
        try:
            response = await provider.generate(
                ModelRequest(SYSTEM_PROMPT, user_prompt(example), schema, max_tokens=max_tokens)
            )
            out.append((response.data, time.perf_counter() - started, response.error))
        except ModelError as exc:
            out.append((None, time.perf_counter() - started, str(exc)))
    return out


def evaluate(
    provider: ModelProvider,
    examples: list[dict[str, Any]],
    sections: dict[str, SourceSection],
    plant: PlantModel,
    max_tokens: int = 500,
    draft: str | None = None,
) -> dict[str, Any]:
    draft = draft or draft_mode(provider.alias)
    schemas = (
        [grounded_schema(e, sections, plant) for e in examples]
        if draft == "text"
        else [schema_for(sections)] * len(examples)
    )
    answers = asyncio.run(_run(provider, examples, schemas, max_tokens))
    rows = []
    for example, (got, latency, error) in zip(examples, answers, strict=True):
        row = score_answer(example, got, sections, plant)
        row["latency_s"] = round(latency, 4)
        row["answer"] = got  # as the model wrote it, to be read by hand
        if error and not got:
            row["errors"] = [error[:200]]
        rows.append(row)
    n = max(1, len(rows))
    latencies = sorted(r["latency_s"] for r in rows) or [0.0]
    metrics = {
        "examples": len(rows),
        "valid_share": sum(r["valid"] for r in rows) / n,
        "category_accuracy": sum(r["category"] for r in rows) / n,
        "root_cause_accuracy": sum(r["root_cause"] for r in rows) / n,
        "action_accuracy": sum(r["action"] for r in rows) / n,
        "direction_accuracy": sum(r["direction"] for r in rows) / n,
        "citation_accuracy": sum(r["citation"] for r in rows) / n,
        "safety_violations": sum(r["unsafe"] for r in rows),
        "latency_p50_s": round(statistics.median(latencies), 4),
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 4),
        "latency_max_s": round(latencies[-1], 4),
    }
    return {"model": provider.alias.ref(), "draft": draft, "metrics": metrics, "rows": rows}


def markdown(report: dict[str, Any], title: str = "Evaluation") -> str:
    m = report["metrics"]
    model = report["model"]
    lines = [
        f"# {title}: {model.get('provider')} {model.get('model_id')} {model.get('version') or ''}".rstrip(),
        "",
        f"{m['examples']} test examples (answer schema: {report.get('draft', 'full')}); safety violations: "
        f"**{m['safety_violations']}**; latency p50 "
        f"{m['latency_p50_s']} s, p95 {m['latency_p95_s']} s.",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {m[k]:.2f} |" for k in ACCURACIES),
        "",
        "| example | valid | category | root cause | action | citation | first problem |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        marks = ["yes" if row[k] else "no" for k in ("valid", "category", "root_cause", "action", "citation")]
        problem = (row["errors"][0] if row["errors"] else "").replace("|", "/")[:80]
        lines.append(f"| {row['id']} | " + " | ".join(marks) + f" | {problem} |")
    return "\n".join(lines) + "\n"
