"""The feed: recommendations as they arrive (recommendations.v1), the notifier's notifications when it runs,
and the operators' votes (one per recommendation and operator, to feedback.v1)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any

MAX_ITEMS = 200


def feedback_id(recommendation_id: str, operator: str, kind: str = "vote") -> str:
    """Deterministic: the same operator voting on the same recommendation always makes the same id."""
    return hashlib.sha256(f"{recommendation_id}|{operator}|{kind}".encode()).hexdigest()[:32]


class AlreadyVoted(Exception):
    def __init__(self, vote: dict[str, Any]) -> None:
        super().__init__("already voted")
        self.vote = vote


class Feed:
    def __init__(self, line_id: str) -> None:
        self.line_id = line_id
        self.recommendations: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.notifications: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.votes: dict[tuple[str, str], dict[str, Any]] = {}  # (recommendation, operator) -> feedback record
        self._pending_votes: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def add_recommendation(self, record: dict[str, Any]) -> bool:
        if record.get("line_id") != self.line_id:
            return False
        with self.lock:
            if record["id"] in self.recommendations:
                return False
            self.recommendations[record["id"]] = record
            # newest last, by creation time (a replay from several partitions arrives out of order)
            if len(self.recommendations) > 1:
                items = sorted(self.recommendations.items(), key=lambda kv: kv[1].get("created_at") or 0)
                self.recommendations = OrderedDict(items[-MAX_ITEMS:])
            return True

    def add_notification(self, notification: dict[str, Any]) -> bool:
        nid = notification.get("notification_id")
        if not nid or (notification.get("line_id") not in (None, self.line_id)):
            return False
        with self.lock:
            if nid in self.notifications:
                return False
            self.notifications[nid] = notification
            while len(self.notifications) > MAX_ITEMS:
                self.notifications.popitem(last=False)
            return True

    def add_feedback(self, record: dict[str, Any]) -> None:
        """A vote seen on feedback.v1 (ours from before a restart, or another console replica's)."""
        if record.get("kind") != "vote":
            return
        with self.lock:
            self.votes.setdefault((record["recommendation_id"], record["operator"]), record)

    # --- votes -------------------------------------------------------------------------------------------

    def begin_vote(self, recommendation_id: str, operator: str, vote: int, comment: str | None) -> dict[str, Any]:
        """The feedback record to produce; raises AlreadyVoted (also while the same vote is in flight)."""
        key = (recommendation_id, operator)
        with self.lock:
            if key in self.votes:
                raise AlreadyVoted(self.votes[key])
            if key in self._pending_votes:
                raise AlreadyVoted({"recommendation_id": recommendation_id, "operator": operator, "pending": True})
            rec = self.recommendations.get(recommendation_id)
            if rec is None:
                raise KeyError(recommendation_id)
            self._pending_votes.add(key)
        return {"feedback_id": feedback_id(recommendation_id, operator), "recommendation_id": recommendation_id,
                "line_id": rec["line_id"], "kind": "vote", "action_id": None, "vote": vote,
                "comment": comment or None, "operator": operator, "created_at": int(time.time() * 1000)}

    def end_vote(self, record: dict[str, Any], ok: bool) -> None:
        key = (record["recommendation_id"], record["operator"])
        with self.lock:
            self._pending_votes.discard(key)
            if ok:
                self.votes[key] = record

    # --- reading -----------------------------------------------------------------------------------------

    def items(self, operator: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        with self.lock:
            recs = list(self.recommendations.values())[-limit:]
            out = []
            for rec in reversed(recs):
                mine = self.votes.get((rec["id"], operator)) if operator else None
                out.append({**rec, "my_vote": mine["vote"] if mine else None,
                            "votes": sum(1 for (rid, _), v in self.votes.items() if rid == rec["id"] and v)})
            return out

    def notification_items(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.lock:
            return list(reversed(list(self.notifications.values())[-limit:]))
