"""The operators' chat API: a question about a line, answered from its current and recent windows and the SOPs.

    POST /v1/lines/{line_id}/ask    Authorization: Bearer <token>
    {"question": "why did the detector stop?", "stream": true}

The answer always comes with the evidence (finding ids and their numbers) and the SOP sections it used. The
analysis of the window in progress and the latest recommendations are the ground; the model, when there is one,
only phrases the answer and may cite only those findings and sections (checked as for recommendations; an
answer that fails is replaced by one composed from the analysis). With `"stream": true` the answer is sent as
chunked NDJSON: one `evidence` line, `delta` lines of text, and a closing `done` line.

    GET  /v1/lines/{line_id}/recommendations    Authorization: Bearer <token>   (the latest, newest last)

Authentication: bearer tokens from LINEGUARD_CHAT_TOKENS (compared in constant time), for both routes; with no
token set both answer 503. Rate limit: a token
bucket of LINEGUARD_CHAT_RATE_PER_MIN questions per token and minute (429 with Retry-After when empty).
"""

from __future__ import annotations

import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lineguard import telemetry
from services.advisor.analysis import Analysis
from services.advisor.models import ModelError, ModelRequest
from services.advisor.prose import check_prose
from services.advisor.retrieval import Hit
from services.advisor.window import LineHistory, LineWindow

if TYPE_CHECKING:
    from services.advisor.service import AdvisorService

CHAT_REQUESTS = telemetry.counter("advisor", "chat_requests", "Chat questions by outcome.", ["outcome"])
MAX_QUESTION = 500
# Questions that try to change the advisor's instructions get a refusal, never an answer (issue 18).
OVERRIDE = re.compile(r"\b(ignore|disregard|forget)\b.{0,30}\b(instructions|rules|prompt|sop|policy)\b|system\s*override|"
                      r"\byou are now\b|\bpretend\b|\bjailbreak\b|\bdeveloper mode\b|\bact as\b", re.I)
REFUSAL = ("I can only answer from the line's current analysis and its SOPs; I cannot change my instructions or "
           "the plant's safety rules. Ask me about the line's readings, causes or the next step.")


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, _Bucket] = {}

    def take(self, who: str, now: float | None = None) -> float:
        """0 when allowed; otherwise the seconds to wait."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(who) or _Bucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[who] = bucket
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def _mentioned_machines(service: AdvisorService, line_id: str, question: str) -> list[str]:
    words = set(re.findall(r"[a-z0-9]+", question.lower()))
    found = []
    for machine in service.plant.lines[line_id].machines.values():
        names = set(re.findall(r"[a-z0-9]+", f"{machine.id} {machine.name} {machine.type}".lower()))
        names -= {"line", "1", "hall", "cookie"}
        if words & names:
            found.append(machine.id)
    return found


def ground(service: AdvisorService, line_id: str, question: str) -> tuple[Analysis | None, list[dict], list[Hit]]:
    """The analysis of the window in progress, the latest recommendations and the sections matching the question."""
    with service.lock:
        state = service.states.get(line_id)
        window = history = None
        if state is not None and state.windows:
            latest = state.windows[max(state.windows)]
            window = LineWindow.from_dict(service.engine._snapshot(latest))
            window.end_ms = max(window.start_ms + 1, state.watermark + 1)
            history = LineHistory.from_dict(state.history.to_dict())
        recent = list(service.recent.get(line_id, ()))[-3:]
    analysis = service.advisor.analyzer.analyse(window, history) if window is not None else None
    query = question + " " + (analysis.query_terms() if analysis else "")
    if recent:
        query += " " + recent[-1]["title"]
    return analysis, recent, service.retriever.search(query, limit=3)


def compose_answer(service: AdvisorService, line_id: str, question: str, analysis: Analysis | None,
                   recent: list[dict], hits: list[Hit]) -> dict[str, Any]:
    """The answer built from the ground alone (no model)."""
    machines = _mentioned_machines(service, line_id, question)
    parts: list[str] = []
    evidence: list[dict[str, Any]] = []
    if analysis is not None:
        relevant = [f for f in analysis.findings if not machines or f.machine_id in machines
                    or f.id in analysis.cited]
        if analysis.category == "none":
            parts.append("In the current window nothing is out of its normal range and defects are at their "
                         "background rate.")
        else:
            parts.append(f"Now: {analysis.title}. {analysis.root_cause_text}")
            if machines and analysis.root_cause_machine and analysis.root_cause_machine not in machines:
                parts.append(f"What you see at the {', '.join(machines)} is explained by the "
                             f"{analysis.root_cause_machine} upstream of it.")
        evidence = [f.evidence() for f in relevant[:5]]
        if analysis.steps and analysis.category != "none":
            parts.append("What to do: " + " ".join(analysis.steps[:3]))
        if analysis.category != "none" and (analysis.safety_notes or analysis.compliance_notes):
            # the SOP's safety directives (segregate, lock out, do not open) always travel with the answer
            parts.append("Safety: " + " ".join([*analysis.safety_notes, *analysis.compliance_notes]))
    else:
        parts.append("No data has arrived for this line in the current window yet.")
    for record in reversed(recent):
        if record["category"] != "none":
            parts.append(f"Latest recommendation ({record['trigger']}, {record['severity']}): {record['title']}. "
                         f"{record['root_cause']['description']}")
            evidence += [e for e in record["evidence"][:3] if e not in evidence]
            break
    if hits:
        parts.append("See " + "; ".join(f"{h.section.doc_id} {h.section.section}" for h in hits[:2]) + ".")
    return {"line_id": line_id, "question": question, "answer": " ".join(parts), "evidence": evidence,
            "references": [h.section.ref for h in hits], "model": {"provider": "analysis",
                                                                   "model_id": "deterministic-analysis",
                                                                   "version": "1"}, "fallback": False}


async def answer_question(service: AdvisorService, line_id: str, question: str) -> dict[str, Any]:
    if OVERRIDE.search(question):
        CHAT_REQUESTS.labels("refused").inc()
        return {"line_id": line_id, "question": question, "answer": REFUSAL, "evidence": [], "references": [],
                "model": {"provider": "analysis", "model_id": "deterministic-analysis", "version": "1"},
                "fallback": False, "refused": True}
    analysis, recent, hits = ground(service, line_id, question)
    composed = compose_answer(service, line_id, question, analysis, recent, hits)
    if service.provider.alias.provider == "analysis":
        return composed
    finding_ids = [e["finding_id"] for e in composed["evidence"]] or ["none"]
    sections = [f"{h.section.doc_id}#{h.section.section}" for h in hits] or ["none"]
    schema = {"type": "object", "properties": {
        "answer": {"type": "string", "maxLength": 600},
        "evidence": {"type": "array", "maxItems": 4, "items": {"type": "string", "enum": finding_ids}},
        "references": {"type": "array", "maxItems": 2, "items": {"type": "string", "enum": sections}}},
        "required": ["answer", "evidence", "references"]}
    prompt = (f"Question from the operator about line {line_id}: {question}\nFacts: {composed['answer']}\n"
              "Findings: " + "; ".join(f"{e['finding_id']}: {e['description']}" for e in composed["evidence"]))
    try:
        response = await service.provider.generate(ModelRequest(
            "Answer the operator in two or three sentences, using only the facts given.", prompt, schema,
            tool_name="answer_operator", max_tokens=250))
    except ModelError:
        return {**composed, "fallback": True}
    data = response.data
    if (not isinstance(data, dict) or not isinstance(data.get("answer"), str) or not data["answer"].strip()
            or not isinstance(data.get("evidence"), list)
            or any(i not in finding_ids for i in data["evidence"])
            or not isinstance(data.get("references"), list) or any(r not in sections for r in data["references"])):
        return {**composed, "fallback": True}
    if analysis is not None and check_prose({"answer": data["answer"]}, analysis, hits, service.plant):
        return {**composed, "fallback": True}  # a claim the analysis does not support: the composed answer stands
    answer = data["answer"].strip()
    if analysis is not None and analysis.category != "none":
        missing = [n for n in [*analysis.safety_notes, *analysis.compliance_notes] if n not in answer]
        if missing:
            answer += " Safety: " + " ".join(missing)
    return {**composed, "answer": answer, "model": response.model}


def add_chat_routes(app: web.Application, service: AdvisorService) -> None:
    tokens = [t.strip() for t in (service.settings.chat_tokens or "").split(",") if t.strip()]
    limiter = RateLimiter(service.settings.chat_rate_per_min)

    def authorised(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        given = header[7:].strip().encode()
        for token in tokens:
            if hmac.compare_digest(given, token.encode()):
                return token
        return None

    async def ask(request: web.Request) -> web.StreamResponse:
        if not tokens:
            CHAT_REQUESTS.labels("disabled").inc()
            return web.json_response({"error": "the chat API is disabled: set LINEGUARD_CHAT_TOKENS"}, status=503)
        token = authorised(request)
        if token is None:
            CHAT_REQUESTS.labels("unauthorised").inc()
            return web.json_response({"error": "missing or invalid bearer token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        wait = limiter.take(token)
        if wait > 0:
            CHAT_REQUESTS.labels("rate_limited").inc()
            return web.json_response({"error": "too many questions, slow down"}, status=429,
                                     headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        line_id = request.match_info["line_id"]
        if line_id not in service.plant.lines:
            CHAT_REQUESTS.labels("bad_request").inc()
            return web.json_response({"error": f"unknown line {line_id!r}",
                                      "known": sorted(service.plant.lines)}, status=404)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        question = body.get("question") if isinstance(body, dict) else None
        if not isinstance(question, str) or not question.strip() or len(question) > MAX_QUESTION:
            CHAT_REQUESTS.labels("bad_request").inc()
            return web.json_response({"error": f"send JSON {{\"question\": \"...\"}} with 1 to {MAX_QUESTION} "
                                               "characters"}, status=400)
        answer = await answer_question(service, line_id, question.strip())
        CHAT_REQUESTS.labels("answered").inc()
        if not body.get("stream"):
            return web.json_response(answer)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write((json.dumps({"type": "evidence", "evidence": answer["evidence"],
                                          "references": answer["references"], "model": answer["model"]})
                              + "\n").encode())
        words = answer["answer"].split(" ")
        for start in range(0, len(words), 8):
            chunk = " ".join(words[start:start + 8]) + (" " if start + 8 < len(words) else "")
            await response.write((json.dumps({"type": "delta", "text": chunk}) + "\n").encode())
        await response.write((json.dumps({"type": "done", "fallback": answer["fallback"]}) + "\n").encode())
        await response.write_eof()
        return response

    async def recommendations(request: web.Request) -> web.Response:
        # The same bearer tokens as the chat: recommendations name the line's faults and actions. The console
        # calls it server-side with LINEGUARD_ADVISOR_TOKEN (one of LINEGUARD_CHAT_TOKENS).
        if not tokens:
            return web.json_response({"error": "the recommendations API is disabled: set LINEGUARD_CHAT_TOKENS"},
                                     status=503)
        if authorised(request) is None:
            return web.json_response({"error": "missing or invalid bearer token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        line_id = request.match_info["line_id"]
        with service.lock:
            recent = list(service.recent.get(line_id, ()))
        return web.json_response({"line_id": line_id, "recommendations": recent})

    app.router.add_post("/v1/lines/{line_id}/ask", ask)
    app.router.add_get("/v1/lines/{line_id}/recommendations", recommendations)
