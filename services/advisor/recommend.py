"""From a window to a recommendation: analysis, retrieval, the model, validation and the fallback.

The model gets the findings (with their ids and numbers), the candidate causes, the actions the plant model
allows and the matching SOP sections, and must answer in a fixed JSON structure whose schema lists the only
finding ids, entities, parameters and document sections it may use. Its answer is then checked again
(`validate_draft`): it must parse, cite only findings that exist, name the root cause the analysis found,
propose only actions the analysis allows (same machine, parameter and direction) within the setpoint's limits
and largest step, and cite only the sections retrieved. An invalid answer is retried once with the reasons;
after that the recommendation is the analysis alone, marked `fallback: true`. Numbers in the evidence always come
from the analysis, never from the model's text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineguard.logs import event, get_logger
from lineguard.plant import PlantModel
from lineguard.telemetry import counter, histogram
from services.advisor.analysis import Analysis, Analyzer, Memory, ProposedAction
from services.advisor.models import ModelAlias, ModelError, ModelProvider, ModelRequest, ModelResponse
from services.advisor.prose import check_prose, grounded_vocabulary, text_pattern
from services.advisor.retrieval import Hit, Retriever, Section
from services.advisor.window import LineHistory, LineWindow

log = get_logger(__name__)
SERVICE = "advisor"

CATEGORIES = ("process_deviation", "equipment_fault", "quality", "environment", "sensor_fault", "none")
SEVERITIES = ("critical", "major", "minor", "warning", "info")
TRIGGERS = ("scheduled", "critical_alarm", "defect_spike", "silence", "chat")

RECOMMENDATIONS = counter(SERVICE, "recommendations", "Recommendations produced", ["severity", "trigger"])
MODEL_CALLS = counter(SERVICE, "model_calls", "Model calls by provider and outcome", ["provider", "outcome"])
MODEL_TOKENS = counter(SERVICE, "model_tokens", "Model tokens by provider and direction", ["provider", "direction"])
MODEL_LATENCY = histogram(SERVICE, "model_latency_seconds", "Model call latency", ["provider"])
VALIDATION_FAILURES = counter(SERVICE, "validation_failures", "Model outputs rejected by validation", ["provider"])
FALLBACKS = counter(SERVICE, "fallbacks", "Recommendations built from the analysis alone", ["provider", "reason"])

SYSTEM_PROMPT = (
    "You are the line advisor of a cookie factory. You get the deterministic findings of a five-minute window, "
    "the root cause they point to, the allowed actions and excerpts of the SOPs. Write the recommendation for the "
    "operator as JSON. Use only the finding ids, entities, actions and document sections given. Be brief and "
    "concrete: a title, a short summary, the root cause in one sentence, and at most three steps."
)


def recommendation_id(line_id: str, window_start: int, window_end: int, trigger: str) -> str:
    """Deterministic: the same line, window and trigger always give the same id (a replay does not notify twice).
    Immediate triggers are limited to one per window, so their id uses the window, not the moment they fired."""
    digest = hashlib.sha256(f"{line_id}|{window_start}|{window_end}|{trigger}".encode()).hexdigest()[:12]
    return f"rec-{line_id}-{window_start}-{trigger}-{digest}"


def draft_mode(alias: ModelAlias) -> str:
    """What the model drafts: "text" (only the words, under grounded enums and patterns) or "full" (the whole
    recommendation). The alias option `draft`; by default "text" for the `local` provider, "full" otherwise."""
    return str(alias.options.get("draft", "text" if alias.provider == "local" else "full"))


@dataclass
class Outcome:
    record: dict[str, Any]
    analysis: Analysis
    hits: list[Hit]
    model_valid: bool  # the model's own output passed validation
    fallback: bool
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    model_latency_s: float = 0.0


def draft_schema(analysis: Analysis, hits: list[Hit], plant: PlantModel) -> dict[str, Any]:
    """The JSON schema of the model's answer, with the allowed ids as enums (a grammar can enforce them)."""
    finding_ids = analysis.finding_ids or ["none"]
    entities = [analysis.root_cause_entity] if analysis.root_cause_entity else ["none"]
    sections = [f"{h.section.doc_id}#{h.section.section}" for h in hits] or ["none"]
    action_schema: dict[str, Any] = {"type": "array", "maxItems": 0, "items": {"type": "object"}}
    if analysis.actions:
        action_schema = {
            "type": "array", "minItems": len(analysis.actions), "maxItems": len(analysis.actions),
            "items": {"type": "object", "properties": {
                "machine_entity_id": {"type": "string", "enum": sorted({a.machine_entity_id for a in analysis.actions})},
                "parameter": {"type": "string", "enum": sorted({a.parameter for a in analysis.actions})},
                # the value the analysis allows; the validator still checks it against the plant's limits
                "value": {"type": "number", "enum": sorted({a.value for a in analysis.actions})},
                "reason": {"type": "string", "maxLength": 160},
            }, "required": ["machine_entity_id", "parameter", "value", "reason"]},
        }
    return {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 90},
            "summary": {"type": "string", "maxLength": 200},
            # the analysis decides the category; the model writes the words around it
            "category": {"type": "string", "enum": [analysis.category]},
            "root_cause_entity_id": {"type": "string", "enum": entities},
            "root_cause": {"type": "string", "maxLength": 160},
            "evidence": {"type": "array", "minItems": 1, "maxItems": 4,
                         "items": {"type": "string", "enum": finding_ids}},
            # the steps are the playbook's (SOP steps and the allowed actions): the model chooses and orders them,
            # it does not invent any (a grammar enforces it locally; validation checks every provider's text)
            "steps": {"type": "array", "minItems": 1, "maxItems": max(3, min(6, len(analysis.steps))),
                      "items": {"type": "string", "enum": list(dict.fromkeys(analysis.steps))}
                      if analysis.steps else {"type": "string", "maxLength": 160}},
            "proposed_actions": action_schema,
            "references": {"type": "array", "maxItems": 2, "items": {"type": "string", "enum": sections}},
        },
        "required": ["title", "summary", "category", "root_cause_entity_id", "root_cause", "evidence", "steps",
                     "proposed_actions", "references"],
    }


# "Facts from the data, words from the model": a small model (the local default) writes only the title, the
# summary and the root cause, in a grammar that offers only the evidence's words and numbers; the category, the
# cause, the evidence, the steps (the playbook's), the actions and the references are the analysis'. The whole
# draft is then validated as any model's.
TEXT_SYSTEM_PROMPT = (
    "You are the line advisor of a cookie factory. For the operator, write in plain words a short title, a "
    "one-sentence summary and the root cause of what the findings show, as JSON. Use only the facts given."
)
TEXT_LIMITS = {"title": (3, 10), "summary": (5, 22), "root_cause": (5, 22)}  # words (chunks) per text


def text_schema(analysis: Analysis, hits: list[Hit], plant: PlantModel) -> dict[str, Any]:
    """The schema of a words-only answer: each text a `pattern` over the window's grounded vocabulary."""
    words, numbers = grounded_vocabulary(analysis, hits[:2], plant)
    return {"type": "object",
            "properties": {key: {"type": "string", "pattern": text_pattern(words, numbers, low, high)}
                           for key, (low, high) in TEXT_LIMITS.items()},
            "required": list(TEXT_LIMITS)}


def speakable(text: str, max_words: int = 0) -> str:
    """An analysis text as the words-only grammar can write it (no times, colons, brackets or semicolons), cut
    at a comma or a full stop within `max_words` words when given."""
    text = re.sub(r",?\s*(window\s+)?\d{1,2}:\d{2}( [A-Z]{3,4})?( to \d{1,2}:\d{2}( [A-Z]{3,4})?)?", "", text)
    text = re.sub(r"\s*[:;]\s*", ", ", text)
    text = re.sub(r"\s*\(\s*", ", ", text).replace(")", "")
    text = re.sub(r"\s+", " ", re.sub(r",\s*,", ",", text)).strip(" ,")
    words = text.split(" ")
    if max_words and len(words) > max_words:
        cut = " ".join(words[:max_words])
        ends = [m.start() for m in re.finditer(r"[,.](?= |$)", cut)]
        text = cut[:ends[-1]] if ends else cut
    return text.rstrip(" ,")


def _brief(category: str, severity: str, headline: str, cause: str, findings: list[str], change: str,
           sop: str) -> str:
    return "\n".join([f"Category: {category.replace('_', ' ')}, severity {severity}.", f"Headline: {headline}",
                      f"Root cause: {cause}", "Findings: " + " ".join(f"{f.rstrip('.')}." for f in findings),
                      f"Change: {change}", f"The SOP says: {sop}"])


def build_brief(analysis: Analysis, hits: list[Hit], sop_chars: int = 120) -> str:
    """The words-only prompt: what the window shows, short (a 135M model on one core reads ~100 tokens/s)."""
    changes = [f"{a.direction} {a.parameter.replace('_', ' ')} from {a.current:g} to {a.value:g} "
               f"{analysis.units.get(a.unit_code or '', '')}".rstrip() for a in analysis.actions]
    findings = [f.description for f in (analysis.finding(i) for i in analysis.cited[:2]) if f is not None]
    cause = analysis.root_cause_text
    if len(analysis.causes) > 1:
        cause += " Other causes: " + "; ".join(c.title for c in analysis.causes[1:])
    sop = " ".join(hits[0].section.text.split())[:sop_chars] if hits else "nothing retrieved"
    return _brief(analysis.category, analysis.severity, analysis.title, cause, findings,
                  "; ".join(changes) or "none allowed, propose no setpoint change", sop)


def brief_from_record(record: dict[str, Any]) -> str:
    """The brief of a published recommendation (an upvoted one becomes an exemplar for windows like it)."""
    root = record.get("root_cause") or {}
    changes = [f"{a.get('parameter', '').replace('_', ' ')} to {a.get('value')}"
               for a in record.get("proposed_actions") or [] if isinstance(a, dict)]
    findings = [str(e.get("description") or "") for e in (record.get("evidence") or [])[:3] if isinstance(e, dict)]
    refs = [f"{r.get('doc_id')} {r.get('title') or ''}".strip() for r in record.get("references") or []
            if isinstance(r, dict)]
    return _brief(str(record.get("category") or "none"), str(record.get("severity") or "info"),
                  str(record.get("title") or ""), str(root.get("description") or "") if isinstance(root, dict)
                  else "", findings, "; ".join(changes) or "none allowed, propose no setpoint change",
                  "; ".join(refs) or "nothing retrieved")


def complete_draft(text: dict[str, Any], analysis: Analysis, hits: list[Hit]) -> dict[str, Any]:
    """A full draft: the model's words around the analysis' facts."""
    cause = str(text.get("root_cause") or "")
    return {"title": text.get("title"), "summary": text.get("summary"), "category": analysis.category,
            "root_cause_entity_id": analysis.root_cause_entity or "none", "root_cause": text.get("root_cause"),
            "evidence": list(analysis.cited[:4]) or ["none"], "steps": list(analysis.steps),
            "proposed_actions": [{"machine_entity_id": a.machine_entity_id, "parameter": a.parameter,
                                  "value": a.value, "reason": cause} for a in analysis.actions],
            "references": [f"{h.section.doc_id}#{h.section.section}" for h in hits[:2]]}


def build_prompt(analysis: Analysis, hits: list[Hit], trigger: str, section_chars: int = 240) -> str:
    """Short and plain: small models copy what they see first, so ids stay in the schema, not in the prose."""
    lines = [f"Line {analysis.line_id}, trigger {trigger}. Deterministic conclusion: category {analysis.category}, "
             f"severity {analysis.severity}, root cause entity {analysis.root_cause_entity or 'none'}.",
             f"Headline: {analysis.title}",
             f"Root cause: {analysis.root_cause_text}"]
    if len(analysis.causes) > 1:
        lines.append("Independent causes (name each): " + " | ".join(c.title for c in analysis.causes))
    if analysis.waiting:
        lines.append("Already done, waiting for effect: " + " | ".join(analysis.waiting))
    lines.append("Findings:")
    for finding in analysis.findings[:6]:
        lines.append(f"- {finding.id}: {finding.description}")
    if analysis.actions:
        lines.append("Allowed actions:")
        for action in analysis.actions:
            lines.append(f"- {action.machine_entity_id} {action.parameter}: from {action.current:g} to "
                         f"{action.value:g} {action.unit_code or ''} ({action.reason})")
    else:
        lines.append("Allowed actions: none (propose no setpoint change).")
    lines.append("Suggested steps: " + " | ".join(analysis.steps[:6]))
    for hit in hits[:2]:
        lines.append(f"The SOP says: {' '.join(hit.section.text.split())[:section_chars]}")
    lines.append("Write the title, a one-sentence summary, the root cause and up to three short steps in plain "
                 "words for the operator.")
    return "\n".join(lines)


_MARKUP = re.compile(r"[\[\]{}]|urn:ngsi-ld|[A-Z]{2,}-[A-Z0-9]+-?\d*#|previous answer|\w+:\w+\.\w+")


def prose_problem(text: str, what: str) -> str | None:
    """Why a text is not something to show an operator: too short to say anything, or ids and markup."""
    if len(re.findall(r"[A-Za-z]{2,}", text)) < 3:
        return f"{what} {text[:40]!r} says nothing"
    if _MARKUP.search(text):
        return f"{what} {text[:40]!r} holds ids or markup, not words for an operator"
    return None


def validate_draft(draft: dict[str, Any] | None, analysis: Analysis, hits: list[Hit], plant: PlantModel
                   ) -> list[str]:
    """Why the model's answer cannot be shown to an operator; empty when it can."""
    if draft is None:
        return ["the output did not parse"]
    errors: list[str] = []
    for key, kind in (("title", str), ("summary", str), ("category", str), ("root_cause", str),
                      ("evidence", list), ("steps", list), ("proposed_actions", list), ("references", list)):
        if not isinstance(draft.get(key), kind):
            errors.append(f"{key} is missing or not a {kind.__name__}")
    if errors:
        return errors
    for what, text in (("title", draft["title"]), ("summary", draft["summary"]), ("root cause", draft["root_cause"]),
                       *(("a step", step) for step in draft["steps"] if isinstance(step, str))):
        problem = prose_problem(text, what)
        if problem:
            errors.append(problem)
    if draft["category"] != analysis.category:
        errors.append(f"category {draft['category']!r} contradicts the analysis ({analysis.category})")
    root = draft.get("root_cause_entity_id")
    if root != (analysis.root_cause_entity or "none"):
        errors.append(f"root cause {root!r} is not the one the findings support ({analysis.root_cause_entity})")
    known = set(analysis.finding_ids)
    for finding_id in draft["evidence"]:
        if finding_id not in known and not (finding_id == "none" and not known):
            errors.append(f"evidence cites a finding that does not exist: {finding_id!r}")
    if known and not any(f in known for f in draft["evidence"]):
        errors.append("evidence cites no finding")
    if not all(isinstance(s, str) and s.strip() for s in draft["steps"]) or not draft["steps"]:
        errors.append("steps must be non-empty strings")
    if analysis.category == "sensor_fault" and not any(
            isinstance(step, str) and any(w in step.lower() for w in ("sensor", "thermocouple", "probe", "calibrat"))
            and not re.search(r"\b(not|never|don't|no)\b", step.lower()) for step in draft["steps"]):
        errors.append("a sensor fault needs a step that checks the sensor (and does not say not to)")
    allowed = {(a.machine_entity_id, a.parameter): a for a in analysis.actions}
    for proposal in draft["proposed_actions"]:
        if not isinstance(proposal, dict):
            errors.append("a proposed action is not an object")
            continue
        key = (proposal.get("machine_entity_id"), proposal.get("parameter"))
        reference = allowed.get(key)  # type: ignore[arg-type]
        if reference is None:
            errors.append(f"action {key[1]!r} on {key[0]!r} is not one the analysis allows")
            continue
        value = proposal.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"action {key[1]}: value {value!r} is not a number")
            continue
        machine = plant.machine(analysis.line_id, reference.machine_id)
        setpoint = machine.setpoints.get(reference.parameter) if machine else None
        why = setpoint.check(float(value), reference.current) if setpoint else "unknown setpoint"
        if why:
            errors.append(f"action {key[1]}: {why}")
        elif (float(value) - reference.current) * (reference.value - reference.current) <= 0:
            errors.append(f"action {key[1]}: {value} moves the wrong way (the analysis says {reference.direction})")
    proposed = {(p.get("machine_entity_id"), p.get("parameter")) for p in draft["proposed_actions"]
                if isinstance(p, dict)}
    for key in allowed:
        if key not in proposed:
            errors.append(f"the action on {key[1]} that the analysis found is missing")
    sections = {f"{h.section.doc_id}#{h.section.section}" for h in hits}
    for ref in draft["references"]:
        if ref not in sections and ref != "none":
            errors.append(f"reference {ref!r} is not a retrieved SOP section")
    cited = {f"{h.section.doc_id}#{h.section.section}" for h in hits} & set(draft["references"])
    texts = {"title": draft["title"], "summary": draft["summary"], "root cause": draft["root_cause"],
             **{f"step {i + 1}": s for i, s in enumerate(draft["steps"]) if isinstance(s, str)},
             **{f"action reason {i + 1}": str(p.get("reason") or "") for i, p in enumerate(draft["proposed_actions"])
                if isinstance(p, dict)}}
    errors += check_prose(texts, analysis, [h for h in hits if f"{h.section.doc_id}#{h.section.section}" in cited]
                          or hits[:1], plant)
    return errors


class Exemplars:
    """The learning step for a model without a GPU: solved briefs (lineguard-train's `advisor_exemplars.jsonl`,
    from recorded windows and upvoted recommendations), the nearest (BM25) put in front of a window's brief.
    Each item: {"id", "group", "question" (a brief), "answer" ({"title", "summary", "root_cause"})}."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = [i for i in items if isinstance(i, dict) and i.get("question") and isinstance(i.get("answer"), dict)]
        self.retriever = Retriever([Section(str(i.get("id")), str(n), "", str(i["question"]), "")
                                    for n, i in enumerate(self.items)])

    @classmethod
    def load(cls, path: str | Path) -> Exemplars:
        items = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line: the rest still teach
        return cls(items)

    def nearest(self, brief: str, k: int, exclude_group: str | None = None) -> list[dict[str, Any]]:
        hits = self.retriever.search(brief, limit=k + 8, min_score=0.0)
        found = [self.items[int(h.section.section)] for h in hits]
        return [i for i in found if exclude_group is None or i.get("group") != exclude_group][:k]

    def prompt(self, brief: str, k: int, exclude_group: str | None = None) -> str:
        shown = self.nearest(brief, k, exclude_group)
        if not shown:
            return brief
        parts = [f"Example {n}.\n{_short(str(i['question']))}\nAnswer: "
                 + json.dumps({key: i["answer"].get(key) for key in TEXT_LIMITS}, ensure_ascii=False)
                 for n, i in enumerate(shown, start=1)]
        return "Solved examples:\n" + "\n\n".join(parts) + "\n\nNow this window.\n" + brief


def _short(brief: str) -> str:
    """An exemplar's brief as shown: its headline, root cause and first finding (prompt tokens cost ~25 ms each
    on one core; the whole brief stays the retrieval key)."""
    keep = ("Headline: ", "Root cause: ", "Findings: ")
    lines = [line for line in brief.splitlines() if line.startswith(keep)]
    return "\n".join(line.split(". ", 1)[0] if line.startswith("Findings: ") else line for line in lines)


_EXEMPLARS: dict[str, tuple[float, Exemplars]] = {}


def exemplars_at(path: str) -> Exemplars | None:
    """The exemplars file, re-read when it changes (a new `prepare` reaches the next window, no restart)."""
    try:
        mtime = Path(path).stat().st_mtime
    except OSError:
        return None
    cached = _EXEMPLARS.get(path)
    if cached is None or cached[0] != mtime:
        cached = (mtime, Exemplars.load(path))
        _EXEMPLARS[path] = cached
    return cached[1]


class Advisor:
    """Turns windows into recommendation records (dicts for `recommendations.v1`)."""

    def __init__(self, plant: PlantModel, retriever: Retriever, provider: ModelProvider,
                 analyzer: Analyzer | None = None, model_on_normal: bool = False, max_tokens: int = 600) -> None:
        self.plant = plant
        self.retriever = retriever
        self.provider = provider
        self.analyzer = analyzer or Analyzer(plant)
        self.model_on_normal = model_on_normal
        self.max_tokens = max_tokens
        self.stats = {"model_valid": 0, "fallback": 0, "analysis_only": 0}
        # an evaluation on recorded windows leaves out the exemplars of the window's own scenario
        self.exclude_exemplar_group: str | None = None

    @property
    def provider_name(self) -> str:
        return self.provider.alias.provider

    async def recommend(self, window: LineWindow, history: LineHistory | None, trigger: str,
                        setpoints: dict[tuple[str, str], float] | None = None, now_ms: int | None = None,
                        window_end: int | None = None, rec_id: str | None = None,
                        memory: Memory | None = None) -> Outcome:
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r} (known: {', '.join(TRIGGERS)})")
        analysis = self.analyzer.analyse(window, history, setpoints, memory)
        if window_end is not None:
            analysis.window_end = window_end
        query = analysis.query_terms()
        hits = self.retriever.search(query, limit=3) if query else []
        rec_id = rec_id or recommendation_id(window.line_id, window.start_ms, window.end_ms, trigger)
        created = now_ms if now_ms is not None else int(time.time() * 1000)
        provider = self.provider_name
        if provider == "analysis" or (analysis.category == "none" and not self.model_on_normal):
            self.stats["analysis_only"] += 1
            record = self._from_analysis(rec_id, analysis, hits, trigger, created, fallback=False)
            RECOMMENDATIONS.labels(record["severity"], trigger).inc()
            return Outcome(record, analysis, hits, model_valid=False, fallback=False)

        options = self.provider.alias.options
        words_only = draft_mode(self.provider.alias) == "text"
        if words_only:
            system, schema, prompt = TEXT_SYSTEM_PROMPT, text_schema(analysis, hits, self.plant), build_brief(
                analysis, hits)
            exemplars = exemplars_at(str(options["exemplars"])) if options.get("exemplars") else None
            if exemplars is not None:
                prompt = exemplars.prompt(prompt, int(options.get("exemplars_k", 2)), self.exclude_exemplar_group)
        else:
            system, schema, prompt = SYSTEM_PROMPT, draft_schema(analysis, hits, self.plant), build_prompt(
                analysis, hits, trigger)
        errors: list[str] = []
        failed_call = False
        attempts = 0
        latency = 0.0
        for attempt in (1, 2):  # the first answer, and one retry with the reasons it was refused
            attempts = attempt
            text = prompt if attempt == 1 else (
                prompt + "\nYour previous answer was refused: " + "; ".join(errors[-3:]) + ". Answer again.")
            try:
                response = await self.provider.generate(ModelRequest(system, text, schema,
                                                                     max_tokens=self.max_tokens))
            except ModelError as exc:
                errors.append(str(exc))
                failed_call = True
                MODEL_CALLS.labels(provider, "error").inc()
                event(log, "model_call_failed", level=logging.WARNING, provider=provider, error=str(exc))
                continue
            failed_call = False
            latency += response.latency_s
            self._record_usage(provider, response)
            draft = response.data
            if words_only and isinstance(draft, dict):
                draft = complete_draft(draft, analysis, hits)
            problems = validate_draft(draft, analysis, hits, self.plant)
            if response.data is None and response.error:
                problems = [response.error]
            if not problems:
                MODEL_CALLS.labels(provider, "valid").inc()
                self.stats["model_valid"] += 1
                record = self._from_draft(rec_id, analysis, hits, trigger, created, response, draft or {})
                RECOMMENDATIONS.labels(record["severity"], trigger).inc()
                return Outcome(record, analysis, hits, True, False, attempts, errors, latency)
            MODEL_CALLS.labels(provider, "invalid").inc()
            VALIDATION_FAILURES.labels(provider).inc()
            errors += problems
            event(log, "model_output_refused", level=logging.WARNING, provider=provider, attempt=attempt,
                  problems=problems[:5], recommendation_id=rec_id)
        self.stats["fallback"] += 1
        FALLBACKS.labels(provider, "model_error" if failed_call else "invalid").inc()
        record = self._from_analysis(rec_id, analysis, hits, trigger, created, fallback=True)
        RECOMMENDATIONS.labels(record["severity"], trigger).inc()
        return Outcome(record, analysis, hits, False, True, attempts, errors, latency)

    @staticmethod
    def _record_usage(provider: str, response: ModelResponse) -> None:
        MODEL_LATENCY.labels(provider).observe(response.latency_s)
        MODEL_TOKENS.labels(provider, "input").inc(response.input_tokens)
        MODEL_TOKENS.labels(provider, "output").inc(response.output_tokens)

    # --- records -----------------------------------------------------------------------------------------

    def _base(self, rec_id: str, analysis: Analysis, trigger: str, created: int) -> dict[str, Any]:
        return {"id": rec_id, "line_id": analysis.line_id, "window_start": analysis.window_start,
                "window_end": analysis.window_end, "trigger": trigger, "severity": analysis.severity,
                "category": analysis.category, "created_at": created,
                "root_causes": [{"entity_id": c.entity_id, "category": c.category, "description": c.text or c.why,
                                 "finding_ids": list(c.finding_ids), "waiting": list(c.waiting)}
                                for c in analysis.causes],
                "safety_notes": list(analysis.safety_notes), "compliance_notes": list(analysis.compliance_notes)}

    def _from_analysis(self, rec_id: str, analysis: Analysis, hits: list[Hit], trigger: str, created: int,
                       fallback: bool) -> dict[str, Any]:
        record = self._base(rec_id, analysis, trigger, created)
        record.update(
            title=analysis.title, summary=analysis.summary,
            root_cause={"entity_id": analysis.root_cause_entity, "description": analysis.root_cause_text},
            evidence=[f.evidence() for f in (analysis.finding(i) for i in analysis.cited[:8]) if f is not None],
            steps=list(analysis.steps), proposed_actions=[a.to_record() for a in analysis.actions],
            references=[h.section.ref for h in hits],
            model={"provider": "analysis", "model_id": "deterministic-analysis", "version": "1"},
            validated=True, fallback=fallback,
        )
        return record

    def _from_draft(self, rec_id: str, analysis: Analysis, hits: list[Hit], trigger: str, created: int,
                    response: ModelResponse, draft: dict[str, Any]) -> dict[str, Any]:
        record = self._base(rec_id, analysis, trigger, created)
        by_ref = {f"{h.section.doc_id}#{h.section.section}": h.section.ref for h in hits}
        allowed = {(a.machine_entity_id, a.parameter): a for a in analysis.actions}
        actions = []
        for proposal in draft.get("proposed_actions", []):
            reference: ProposedAction = allowed[(proposal["machine_entity_id"], proposal["parameter"])]
            actions.append({"machine_entity_id": reference.machine_entity_id, "parameter": reference.parameter,
                            "value": float(proposal["value"]), "unit_code": reference.unit_code,
                            "reason": str(proposal.get("reason") or reference.reason)[:300]})
        evidence_ids = [i for i in dict.fromkeys(draft.get("evidence", [])) if analysis.finding(i)]
        record.update(
            title=draft["title"].strip()[:200], summary=draft["summary"].strip()[:1000],
            root_cause={"entity_id": analysis.root_cause_entity,
                        "description": draft["root_cause"].strip()[:500] or analysis.root_cause_text},
            evidence=[analysis.finding(i).evidence() for i in evidence_ids],  # type: ignore[union-attr]
            steps=[s.strip()[:300] for s in draft["steps"] if s.strip()],
            proposed_actions=actions,
            references=[by_ref[r] for r in dict.fromkeys(draft.get("references", [])) if r in by_ref]
            or [h.section.ref for h in hits[:1]],
            model=response.model, validated=True, fallback=False,
        )
        return record


def draft_from_analysis(request: ModelRequest) -> dict[str, Any]:
    """A perfect answer derived from the request's schema and prompt: the stubbed instant model."""
    props = request.schema["properties"]
    steps = next((line.split(": ", 1)[1].split(" | ") for line in request.prompt.splitlines()
                  if line.startswith("Suggested steps: ")), [])[:props["steps"]["maxItems"]]
    actions = []
    action_items = props["proposed_actions"].get("items", {}).get("properties")
    if action_items:
        for line in request.prompt.splitlines():
            if line.startswith("- urn:") and " to " in line:
                entity, parameter = line[2:].split(" ", 2)[:2]
                value = float(line.split(" to ", 1)[1].split(" ", 1)[0])
                actions.append({"machine_entity_id": entity, "parameter": parameter.rstrip(":"), "value": value,
                                "reason": "as the analysis and the SOP say"})
    lines = request.prompt.splitlines()
    headline = next((x.split(": ", 1)[1] for x in lines if x.startswith("Headline: ")), "No headline given")
    cause = next((x.split(": ", 1)[1] for x in lines if x.startswith("Root cause: ")), "No root cause given")
    return {"title": headline[:90], "summary": cause[:200],
            "category": request.prompt.split("category ", 1)[1].split(",", 1)[0],
            "root_cause_entity_id": props["root_cause_entity_id"]["enum"][0],
            "root_cause": cause[:160], "evidence": props["evidence"]["items"]["enum"][:2],
            "steps": steps or ["Follow the SOP."], "proposed_actions": actions,
            "references": props["references"]["items"]["enum"][:1]}


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)
