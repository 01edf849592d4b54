"""The learning step for the advisor's own window prompts (the local model, no GPU).

Exemplars are solved briefs in the advisor's words-only format (`services/advisor/recommend.py`: the window's
brief as the question, title / summary / root cause as the answer), from two sources:
- recorded windows (scenario runs, or windows exported from the lake): the answer is the analysis' own texts,
  written as the words-only grammar can write them;
- recommendations the operators upvoted (feedback.v1): the answer is the published texts.
Each one is checked before it is kept: its texts must pass the advisor's prose check and fit the grammar of the
window they answer (for a window), so the model is never shown an example it could not or must not write.
`evaluate_windows` runs the advisor itself on recorded windows (the prompts it really sends), leaving out the
exemplars of the window's own group (scenario), so the measure is honest.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lineguard.plant import PlantModel
from services.advisor.analysis import Analyzer
from services.advisor.prose import check_prose, grounded_vocabulary, text_pattern, unsafe_values
from services.advisor.recommend import (
    TEXT_LIMITS,
    Advisor,
    brief_from_record,
    build_brief,
    speakable,
)
from services.advisor.retrieval import Retriever
from services.advisor.window import LineHistory, LineWindow


def load_windows(folder: str | Path) -> list[dict[str, Any]]:
    """Recorded windows: `<group>_<start s>.json` files with {"window", "history"} (the advisor's changelog form,
    as tests/unit/trainer/make_scenario_windows.py writes them); group = the scenario or source."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        doc = json.loads(path.read_text())
        group = doc.get("group") or path.stem.rsplit("_", 1)[0]
        out.append({"name": path.stem, "group": group, "start_s": doc.get("start_s"), "window": doc["window"],
                    "history": doc.get("history") or {}})
    return out


def _analyse(item: dict[str, Any], analyzer: Analyzer, retriever: Retriever):  # type: ignore[no-untyped-def]
    analysis = analyzer.analyse(LineWindow.from_dict(item["window"]), LineHistory.from_dict(item["history"]),
                                None, None)
    hits = retriever.search(analysis.query_terms(), limit=3) if analysis.query_terms() else []
    return analysis, hits


def window_exemplars(windows: list[dict[str, Any]], plant: PlantModel, retriever: Retriever
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(exemplars, dropped) from recorded windows; a normal window never goes to the model, so it teaches none."""
    analyzer = Analyzer(plant)
    kept, dropped = [], []
    for item in windows:
        analysis, hits = _analyse(item, analyzer, retriever)
        if analysis.category == "none":
            continue
        lead = analysis.finding(analysis.cited[0]) if analysis.cited else None
        answer = {"title": speakable(analysis.title, TEXT_LIMITS["title"][1]),
                  # the lead finding in one clause or two: the analysis' summary lists every finding
                  "summary": speakable(lead.description if lead else analysis.summary, 14),
                  "root_cause": speakable(analysis.root_cause_text, TEXT_LIMITS["root_cause"][1])}
        words, numbers = grounded_vocabulary(analysis, hits[:2], plant)
        reasons = [f"{key} does not fit the window's grammar" for key, (low, high) in TEXT_LIMITS.items()
                   if not re.fullmatch(text_pattern(words, numbers, low, high)[1:-1], answer[key])]
        reasons += check_prose(answer, analysis, hits[:2], plant)
        entry = {"id": f"window:{item['name']}", "group": item["group"], "source": "window"}
        if reasons:
            dropped.append({**entry, "reasons": reasons[:5]})
        else:
            kept.append({**entry, "question": build_brief(analysis, hits), "answer": answer})
    return kept, dropped


def record_exemplars(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exemplars from upvoted recommendations (already validated as dataset examples)."""
    out = []
    for record in records:
        root = record.get("root_cause") or {}
        answer = {"title": speakable(str(record.get("title") or ""), TEXT_LIMITS["title"][1]),
                  "summary": speakable(str(record.get("summary") or ""), TEXT_LIMITS["summary"][1]),
                  "root_cause": speakable(str(root.get("description") or "") if isinstance(root, dict) else "",
                                          TEXT_LIMITS["root_cause"][1])}
        if all(answer.values()):
            out.append({"id": f"history:{record.get('id')}", "group": f"history:{record.get('id')}",
                        "source": "history", "question": brief_from_record(record), "answer": answer})
    return out


def evaluate_windows(advisor: Advisor, windows: list[dict[str, Any]], leave_group_out: bool = True,
                     on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The advisor on each recorded window as it runs (its brief, grammar, exemplars, validation, retry)."""
    rows = []
    for item in windows:
        window, history = LineWindow.from_dict(item["window"]), LineHistory.from_dict(item["history"])
        advisor.exclude_exemplar_group = item["group"] if leave_group_out else None
        started = time.perf_counter()
        outcome = asyncio.run(advisor.recommend(window, history, "scheduled", now_ms=0))
        if outcome.analysis.category == "none" and not outcome.attempts:
            continue  # a normal window: no model call
        record = outcome.record
        texts = [record["title"], record["summary"], record["root_cause"]["description"], *record["steps"]]
        unsafe = [p for t in texts for p in unsafe_values(t, advisor.plant, record["line_id"],
                                                          outcome.analysis.units)]
        for action in record["proposed_actions"]:
            machine = next((m for m in advisor.plant.lines[record["line_id"]].machines.values()
                            if m.entity_id == action["machine_entity_id"]), None)
            setpoint = machine.setpoints.get(action["parameter"]) if machine else None
            why = setpoint.check(action["value"], setpoint.default) if setpoint else "unknown setpoint"
            if why:
                unsafe.append(f"action {action['parameter']} {action['value']}: {why}")
        rows.append({"window": item["name"], "group": item["group"], "model_valid": outcome.model_valid,
                     "first_attempt_valid": outcome.model_valid and outcome.attempts == 1,
                     "attempts": outcome.attempts, "fallback": outcome.fallback,
                     "latency_s": round(time.perf_counter() - started, 2), "errors": outcome.errors[:4],
                     "unsafe": unsafe,
                     "title": record["title"], "summary": record["summary"],
                     "root_cause": record["root_cause"]["description"]})
        if on_row is not None:
            on_row(rows[-1])  # a long run (minutes per window on a busy CPU) shows its progress
    n = max(1, len(rows))
    latencies = sorted(r["latency_s"] for r in rows) or [0.0]
    return {"model": advisor.provider.alias.ref(), "rows": rows, "metrics": {
        "windows": len(rows), "model_valid_share": sum(r["model_valid"] for r in rows) / n,
        "first_attempt_valid_share": sum(r["first_attempt_valid"] for r in rows) / n,
        "fallbacks": sum(r["fallback"] for r in rows), "safety_violations": sum(bool(r["unsafe"]) for r in rows),
        "latency_p50_s": statistics.median(latencies), "latency_max_s": latencies[-1]}}


def windows_markdown(report: dict[str, Any]) -> str:
    m, model = report["metrics"], report["model"]
    lines = [f"# The advisor on recorded windows: {model.get('provider')} {model.get('model_id')} "
             f"{model.get('version') or ''}".rstrip(), "",
             f"{m['windows']} windows; the model's own output passed validation and the text check in "
             f"{m['model_valid_share']:.0%} ({m['first_attempt_valid_share']:.0%} at the first attempt); "
             f"fallbacks {m['fallbacks']}; safety violations **{m['safety_violations']}**; latency p50 "
             f"{m['latency_p50_s']:.0f} s, max {m['latency_max_s']:.0f} s.", "",
             "| window | valid | attempts | title | first problem |", "|---|---|---|---|---|"]
    for row in report["rows"]:
        problem = (row["errors"][0] if row["errors"] else "").replace("|", "/")[:80]
        lines.append(f"| {row['window']} | {'yes' if row['model_valid'] else 'no'} | {row['attempts']} | "
                     f"{row['title'][:60]} | {problem} |")
    return "\n".join(lines) + "\n"
