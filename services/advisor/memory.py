"""What was done about a line's recommendations, from `actions.v1` and `feedback.v1`, kept in the line's state.

- A change applied or pending (proposed, pending approval, approved, executing, executed) is not proposed again
  while its effect is due: the analysis says "waiting for effect" with the expected time instead.
- A rejected change (by the policy's operator or a rejection in feedback) is not proposed again on the same
  evidence: its evidence signature is remembered; new evidence (a different finding or level) lifts it.
- A down-vote with a reason (a comment) lowers the rank of the playbooks of that recommendation on the line.

Pure state (JSON-safe for the changelog); the service feeds it records and asks for the analysis's `Memory`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.advisor.analysis import Analysis, Analyzer, Memory

IN_EFFECT = {"proposed", "pending_approval", "approved", "executing", "executed", "requested", "succeeded"}
ENDED = {"blocked", "expired", "failed", "denied"}
KEEP_RECOMMENDATIONS = 200
KEEP_ACTIONS = 200


def _key(*parts: str) -> str:
    return "|".join(parts)


@dataclass
class LineMemory:
    # action id -> {machine, parameter, value, direction, status, at, rec}
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # recommendation id -> {"playbooks": [...], "signatures": {"machine|parameter|direction": signature}}
    recommendations: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # "machine|parameter|direction" -> signature
    downvoted: dict[str, int] = field(default_factory=dict)  # playbook id -> down-votes with a reason
    seen: list[str] = field(default_factory=list)  # feedback ids already counted (a replay counts once)

    def note_recommendation(self, rec_id: str, analysis: Analysis) -> None:
        signatures = {}
        for cause in analysis.causes:
            lead = analysis.finding(cause.finding_ids[0]) if cause.finding_ids else None
            for action in cause.actions:
                if lead is not None:
                    signatures[_key(action.machine_id, action.parameter, action.direction)] = Analyzer.signature(lead)
        self.recommendations[rec_id] = {"playbooks": [c.playbook for c in analysis.causes if c.playbook],
                                        "signatures": signatures}
        while len(self.recommendations) > KEEP_RECOMMENDATIONS:
            self.recommendations.pop(next(iter(self.recommendations)))

    def on_action(self, record: dict[str, Any], machine_id: str) -> None:
        previous, value = record.get("previous_value"), float(record["value"])
        direction = "" if previous is None else ("increase" if value > float(previous) else "decrease")
        self.actions[record["action_id"]] = {
            "machine": machine_id, "parameter": record["parameter"], "value": value, "direction": direction,
            "status": record["status"], "at": int(record.get("updated_at") or record.get("created_at") or 0),
            "rec": record.get("recommendation_id")}
        while len(self.actions) > KEEP_ACTIONS:
            self.actions.pop(next(iter(self.actions)))
        if record["status"] == "rejected":
            self._reject(self.actions[record["action_id"]])

    def on_feedback(self, record: dict[str, Any]) -> None:
        if record["feedback_id"] in self.seen:
            return
        self.seen.append(record["feedback_id"])
        del self.seen[:-500]
        if record["kind"] == "rejection" and record.get("action_id") in self.actions:
            self._reject(self.actions[record["action_id"]])
        elif record["kind"] == "vote" and (record.get("vote") or 0) < 0 and (record.get("comment") or "").strip():
            for playbook in self.recommendations.get(record["recommendation_id"], {}).get("playbooks", []):
                self.downvoted[playbook] = self.downvoted.get(playbook, 0) + 1

    def _reject(self, action: dict[str, Any]) -> None:
        signatures = self.recommendations.get(action.get("rec") or "", {}).get("signatures", {})
        for direction in ([action["direction"]] if action["direction"] else ["increase", "decrease"]):
            key = _key(action["machine"], action["parameter"], direction)
            if key in signatures:
                self.rejected[key] = signatures[key]

    def memory(self, now_ms: int, effect_ms: int = 600_000) -> Memory:
        """The analysis's view at event time `now_ms`: changes whose effect is still due, rejections, votes."""
        in_effect: dict[tuple[str, str], tuple[float, int, str]] = {}
        for action in self.actions.values():
            if action["status"] in IN_EFFECT and action["at"] + effect_ms > now_ms:
                key = (action["machine"], action["parameter"])
                if key not in in_effect or in_effect[key][1] <= action["at"]:
                    in_effect[key] = (action["value"], action["at"], action["status"].replace("_", " "))
        rejected = {tuple(k.split("|", 2)): v for k, v in self.rejected.items()}
        return Memory(in_effect=in_effect, rejected=rejected, downvoted=dict(self.downvoted),  # type: ignore[arg-type]
                      effect_ms=effect_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"actions": self.actions, "recommendations": self.recommendations, "rejected": self.rejected,
                "downvoted": self.downvoted, "seen": self.seen}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> LineMemory:
        raw = raw or {}
        return cls(dict(raw.get("actions", {})), dict(raw.get("recommendations", {})), dict(raw.get("rejected", {})),
                   dict(raw.get("downvoted", {})), list(raw.get("seen", [])))
