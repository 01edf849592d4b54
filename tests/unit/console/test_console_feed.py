"""The feed: recommendations in order, one vote per recommendation and operator."""

from __future__ import annotations

import pytest

from services.console.feed import AlreadyVoted, Feed, feedback_id


def rec(rid: str, created: int, line: str = "line1") -> dict:
    return {"id": rid, "line_id": line, "created_at": created, "title": rid}


def test_recommendations_newest_first_once_each_and_only_this_line() -> None:
    feed = Feed("line1")
    assert feed.add_recommendation(rec("b", 2000))
    assert feed.add_recommendation(rec("a", 1000))
    assert not feed.add_recommendation(rec("b", 2000)), "a replayed record is not a new item"
    assert not feed.add_recommendation(rec("c", 3000, line="line2"))
    assert [r["id"] for r in feed.items()] == ["b", "a"]


def test_one_vote_per_recommendation_and_operator() -> None:
    feed = Feed("line1")
    feed.add_recommendation(rec("r1", 1))
    record = feed.begin_vote("r1", "alice", 1, "spot on")
    assert record["feedback_id"] == feedback_id("r1", "alice") and record["kind"] == "vote"
    assert record["line_id"] == "line1" and record["operator"] == "alice" and record["comment"] == "spot on"
    with pytest.raises(AlreadyVoted):  # the same vote while the first is still in flight
        feed.begin_vote("r1", "alice", -1, None)
    feed.end_vote(record, ok=True)
    with pytest.raises(AlreadyVoted) as exc:
        feed.begin_vote("r1", "alice", -1, None)
    assert exc.value.vote["vote"] == 1
    bob = feed.begin_vote("r1", "bob", -1, None)  # another operator votes for himself
    assert bob["feedback_id"] != record["feedback_id"]
    feed.end_vote(bob, ok=False)  # not delivered: bob may try again
    assert feed.begin_vote("r1", "bob", -1, None)["operator"] == "bob"
    assert feed.items("alice")[0]["my_vote"] == 1
    with pytest.raises(KeyError):
        feed.begin_vote("unknown", "alice", 1, None)


def test_votes_read_back_from_the_topic_count() -> None:
    feed = Feed("line1")
    feed.add_recommendation(rec("r1", 1))
    feed.add_feedback({"kind": "vote", "recommendation_id": "r1", "operator": "alice", "vote": -1})
    feed.add_feedback({"kind": "approval", "recommendation_id": "r1", "operator": "bob", "vote": None})
    with pytest.raises(AlreadyVoted):
        feed.begin_vote("r1", "alice", 1, None)
    assert feed.begin_vote("r1", "bob", 1, None)
