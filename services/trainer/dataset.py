"""Split and publish: train/test without leakage, JSONL for Bedrock and SageMaker, and the data card.

- Split by group (a source section, or for history the section it cites): a group is never on both sides.
  Groups are stratified by category: each category with two groups or more gives about `test_share` of its
  groups (at least one) to the test split, chosen by a seeded hash so the same data always splits the same way.
- Bedrock fine-tuning, conversation format (`bedrock-conversation-2024`, the one Nova models take):
  {"schemaVersion", "system": [{"text"}], "messages": [{"role": "user", "content": [{"text"}]},
   {"role": "assistant", "content": [{"text": <the recommendation JSON>}]}]}
- SageMaker (SFT / JumpStart chat): {"messages": [{"role": "system"|"user"|"assistant", "content": <text>}]}
The system prompt is the advisor's own, so a tuned model is trained on the prompt it gets in production.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from typing import Any

from services.advisor.recommend import SYSTEM_PROMPT

SCHEMA_VERSION = "bedrock-conversation-2024"


def _rank(seed: str, group: str) -> str:
    return hashlib.sha256(f"{seed}|{group}".encode()).hexdigest()


def split(
    examples: list[dict[str, Any]], test_share: float = 0.25, seed: str = "lineguard"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for example in examples:
        groups[str(example["group"])].append(example)
    by_category: dict[str, list[str]] = defaultdict(list)
    for group, members in groups.items():
        category = Counter(str(m["answer"].get("category")) for m in members).most_common(1)[0][0]
        by_category[category].append(group)
    test_groups: set[str] = set()
    for names in by_category.values():
        if len(names) < 2:
            continue  # one group cannot be on both sides: it trains
        ranked = sorted(names, key=lambda g: _rank(seed, g))
        test_groups.update(ranked[: max(1, round(len(ranked) * test_share))])
    train = [e for g in sorted(groups) if g not in test_groups for e in groups[g]]
    test = [e for g in sorted(groups) if g in test_groups for e in groups[g]]
    return train, test


def answer_text(answer: dict[str, Any]) -> str:
    return json.dumps(answer, sort_keys=True, ensure_ascii=False)


def with_context(example: dict[str, Any], sections: dict[str, Any], chars: int = 900) -> dict[str, Any]:
    """The example with the text of the section it answers from, as the advisor gives it its retrieved SOP text:
    a tuned model learns to answer from the text in front of it, not to recite manuals from memory."""
    refs = (example.get("answer") or {}).get("references") or []
    section = sections.get(example.get("group")) or next((sections[r] for r in refs if r in sections), None)
    context = ""
    if section is not None:
        context = f"\nThe SOP {section.key} says: {' '.join(section.text.split())[:chars]}"
    return {**example, "context": context}


def user_prompt(example: dict[str, Any]) -> str:
    return f"{example['question']}{example.get('context') or ''}"


def bedrock_record(example: dict[str, Any], system: str = SYSTEM_PROMPT) -> dict[str, Any]:
    return {
        "schemaVersion": SCHEMA_VERSION,
        "system": [{"text": system}],
        "messages": [
            {"role": "user", "content": [{"text": user_prompt(example)}]},
            {"role": "assistant", "content": [{"text": answer_text(example["answer"])}]},
        ],
    }


def sagemaker_record(example: dict[str, Any], system: str = SYSTEM_PROMPT) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user_prompt(example)},
            {"role": "assistant", "content": answer_text(example["answer"])},
        ]
    }


def check_bedrock_record(record: Any) -> list[str]:
    """Why a line is not a valid Bedrock conversation-format training record; empty when it is."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    errors = []
    if set(record) - {"schemaVersion", "system", "messages"}:
        errors.append(f"unknown keys {sorted(set(record) - {'schemaVersion', 'system', 'messages'})}")
    if record.get("schemaVersion") != SCHEMA_VERSION:
        errors.append(f"schemaVersion must be {SCHEMA_VERSION}")
    system = record.get("system", [])
    if not isinstance(system, list) or not all(
        isinstance(b, dict) and set(b) == {"text"} and isinstance(b["text"], str) for b in system
    ):
        errors.append("system must be a list of {text} blocks")
    messages = record.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        return errors + ["messages must hold at least a user and an assistant turn"]
    for index, message in enumerate(messages):
        want = "user" if index % 2 == 0 else "assistant"
        if not isinstance(message, dict) or message.get("role") != want:
            errors.append(f"message {index} must have role {want} (turns alternate, starting with the user)")
            continue
        content = message.get("content")
        if (
            not isinstance(content, list)
            or not content
            or not all(
                isinstance(b, dict)
                and set(b) == {"text"}
                and isinstance(b["text"], str)
                and b["text"].strip()
                for b in content
            )
        ):
            errors.append(f"message {index}: content must be a non-empty list of non-empty {{text}} blocks")
    if messages[-1].get("role") != "assistant" if isinstance(messages[-1], dict) else True:
        errors.append("the last turn must be the assistant's")
    return errors


def dumps_lines(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)


def data_card(
    *,
    sections: int,
    skipped: list[dict[str, Any]],
    candidates: list[dict[str, Any]],
    dropped: list[dict[str, Any]],
    train: list[dict[str, Any]],
    test: list[dict[str, Any]],
    review: list[dict[str, Any]],
    generator: str,
    dataset_id: str,
    section_errors: list[dict[str, Any]],
) -> dict[str, Any]:
    def count(items: list[dict[str, Any]], key: str) -> dict[str, int]:
        return dict(sorted(Counter(str(i.get(key)) for i in items).items()))

    return {
        "dataset_id": dataset_id,
        "generator": generator,
        "format": SCHEMA_VERSION,
        "sections_extracted": sections,
        "files_skipped": [{"path": s["path"], "reason": s["reason"]} for s in skipped],
        "generation_errors": section_errors,
        "candidates_by_source": count(candidates, "source"),
        "kept_by_source": count(train + test, "source"),
        "dropped_by_reason": count(dropped, "reason"),
        "dropped_by_source": count(dropped, "source"),
        "dropped": dropped,
        "train": {
            "examples": len(train),
            "groups": len({e["group"] for e in train}),
            "by_category": dict(sorted(Counter(e["answer"]["category"] for e in train).items())),
        },
        "test": {
            "examples": len(test),
            "groups": len({e["group"] for e in test}),
            "by_category": dict(sorted(Counter(e["answer"]["category"] for e in test).items())),
        },
        "review_items": len(review),
    }


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# Data card {card['dataset_id']}",
        "",
        f"Generator: {card['generator']}; format: {card['format']}.",
        f"Sections extracted: {card['sections_extracted']}; review items: {card['review_items']}.",
        "",
        "| split | examples | groups | by category |",
        "|---|---|---|---|",
    ]
    for name in ("train", "test"):
        part = card[name]
        lines.append(
            f"| {name} | {part['examples']} | {part['groups']} | "
            + ", ".join(f"{k} {v}" for k, v in part["by_category"].items())
            + " |"
        )
    lines += [
        "",
        "Candidates by source: " + json.dumps(card["candidates_by_source"]),
        "Kept by source: " + json.dumps(card["kept_by_source"]),
        "Dropped by reason: " + json.dumps(card["dropped_by_reason"]),
        "",
        "Files skipped:",
    ]
    lines += [f"- {s['path']}: {s['reason']}" for s in card["files_skipped"]] or ["- none"]
    lines += ["", "Generation errors:"]
    lines += [f"- {e['section']}: {e['error']}" for e in card["generation_errors"]] or ["- none"]
    return "\n".join(lines) + "\n"
