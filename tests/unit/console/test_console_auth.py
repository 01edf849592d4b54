"""Passwords, the users file and sessions (expiry by age and by idleness, CSRF tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.console.auth import (
    SessionStore,
    User,
    UsersFileError,
    csrf_ok,
    hash_password,
    load_users,
    verify_password,
)
from services.console.settings import HERE


def test_hash_and_verify() -> None:
    encoded = hash_password("correct horse")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsf", encoded)
    assert not verify_password("correct horse", "md5$abc")
    assert not verify_password("correct horse", "scrypt$garbage")
    assert hash_password("same") != hash_password("same"), "a fresh salt every time"


def test_embedded_users_file_loads_and_its_dev_password_works() -> None:
    users = load_users(HERE / "users.embedded.yaml")
    assert set(users) >= {"alice", "bob"}
    assert verify_password("lineguard-dev", users["alice"].password_hash)


@pytest.mark.parametrize("text, message", [
    ("users: {}", "at least one operator"),
    ("users:\n  eve: {password: plain-text}", "scrypt hash"),
    ("[not a mapping", "while parsing"),
])
def test_bad_users_files_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(UsersFileError, match=message):
        load_users(path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_by_age_and_by_idleness() -> None:
    clock = Clock()
    store = SessionStore(ttl_s=100, idle_s=30, clock=clock)
    user = User("alice", "Alice", "x")
    session = store.create(user)
    assert store.get(session.id) is session
    clock.now += 29
    assert store.get(session.id) is session  # a request keeps it alive
    clock.now += 29
    assert store.get(session.id) is session
    clock.now += 31
    assert store.get(session.id) is None, "idle for more than idle_s"
    session = store.create(user)
    for _ in range(5):
        clock.now += 25
        store.get(session.id)
    assert store.get(session.id) is None, "older than ttl_s even though active"
    assert store.get(None) is None and store.get("nope") is None


def test_csrf_tokens_are_per_session() -> None:
    store = SessionStore(ttl_s=100, idle_s=100)
    alice = store.create(User("alice", "Alice", "x"))
    bob = store.create(User("bob", "Bob", "x"))
    assert alice.id != bob.id and alice.csrf != bob.csrf
    assert csrf_ok(alice, alice.csrf)
    assert not csrf_ok(alice, bob.csrf)
    assert not csrf_ok(alice, None)
    assert not csrf_ok(alice, "")
