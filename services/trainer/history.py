"""Add history: recommendations the operators voted on (feedback.v1 joined to recommendations.v1).

- net vote > 0: the recommendation becomes an example (the question is the window's evidence, the answer the
  recommendation as it was published);
- net vote < 0 with a comment: a review item for a person (never an example: a bad answer must not be learned);
- net vote < 0 without a comment, or a vote for a recommendation not found: counted and dropped.
The records come from the topics (`read_topic`, from the start) or from JSON lines exported from the lake.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of an export: skip it
    return out


def read_topics(settings: Any, timeout_s: float = 60.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(recommendations, feedback) from the beginning of both topics to their current end."""
    from lineguard import topics
    from lineguard.kafka import read_topic

    recommendations = [
        r.value
        for r in read_topic(settings, topics.RECOMMENDATIONS, timeout_s=timeout_s)
        if isinstance(r.value, dict)
    ]
    feedback = [
        r.value
        for r in read_topic(settings, topics.FEEDBACK, timeout_s=timeout_s)
        if isinstance(r.value, dict)
    ]
    return recommendations, feedback


def question_for(record: dict[str, Any]) -> str:
    """What the advisor saw: the line, the trigger and the evidence with its numbers."""
    evidence = "; ".join(
        str(e.get("description") or "") for e in record.get("evidence") or [] if isinstance(e, dict)
    )
    return (
        f"Line {record.get('line_id')}, {record.get('trigger', 'scheduled')} evaluation. "
        f"Evidence: {evidence or 'none'}. What is wrong and what should the operator do?"
    )


def answer_for(record: dict[str, Any]) -> dict[str, Any]:
    root = record.get("root_cause") or {}
    return {
        "title": record.get("title"),
        "summary": record.get("summary"),
        "category": record.get("category"),
        "severity": record.get("severity"),
        "root_cause": root.get("description") if isinstance(root, dict) else None,
        "steps": list(record.get("steps") or []),
        "proposed_actions": [
            {
                "machine_entity_id": a.get("machine_entity_id"),
                "parameter": a.get("parameter"),
                "value": a.get("value"),
                "reason": a.get("reason"),
            }
            for a in record.get("proposed_actions") or []
            if isinstance(a, dict)
        ],
        "references": [
            f"{r.get('doc_id')}#{r.get('section')}"
            for r in record.get("references") or []
            if isinstance(r, dict)
        ],
    }


def history_examples(
    recommendations: Iterable[dict[str, Any]], feedback: Iterable[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(examples, review items, dropped) from the votes."""
    by_id = {r["id"]: r for r in recommendations if isinstance(r, dict) and r.get("id")}
    votes: dict[str, dict[str, int]] = defaultdict(dict)
    comments: dict[str, list[str]] = defaultdict(list)
    seen_feedback: set[str] = set()
    for item in feedback:
        if not isinstance(item, dict) or item.get("feedback_id") in seen_feedback:
            continue  # at-least-once delivery: a feedback id counts once
        seen_feedback.add(str(item.get("feedback_id")))
        rec_id = str(item.get("recommendation_id"))
        if item.get("kind") == "vote" and item.get("vote") in (1, -1):
            votes[rec_id][str(item.get("operator"))] = int(item["vote"])  # an operator's last vote counts
        if item.get("comment"):
            comments[rec_id].append(str(item["comment"]))
    examples, review, dropped = [], [], []
    for rec_id in sorted(set(votes) | set(comments)):
        net = sum(votes.get(rec_id, {}).values())
        record = by_id.get(rec_id)
        if record is None:
            dropped.append(
                {
                    "id": f"history:{rec_id}",
                    "source": "history",
                    "reason": "recommendation not found",
                    "reasons": ["the voted recommendation is not on recommendations.v1"],
                }
            )
            continue
        if net > 0:
            answer = answer_for(record)
            # its group is the section it cites, so that it lands on the same side of the split as that section
            group = answer["references"][0] if answer["references"] else f"history:{rec_id}"
            examples.append(
                {
                    "id": f"history:{rec_id}",
                    "source": "history",
                    "group": group,
                    "recommendation_id": rec_id,
                    "votes": net,
                    "question": question_for(record),
                    "answer": answer,
                    "generator": record.get("model"),
                }
            )
        elif net < 0 and comments.get(rec_id):
            review.append(
                {
                    "recommendation_id": rec_id,
                    "line_id": record.get("line_id"),
                    "votes": net,
                    "comments": comments[rec_id],
                    "title": record.get("title"),
                    "category": record.get("category"),
                    "model": record.get("model"),
                }
            )
        elif net < 0:
            dropped.append(
                {
                    "id": f"history:{rec_id}",
                    "source": "history",
                    "reason": "downvoted without comment",
                    "reasons": ["downvoted without a comment: nothing to learn or review"],
                }
            )
    return examples, review, dropped
