"""Operators, passwords and sessions.

Users and their password hashes come from a YAML file (a Kubernetes Secret in production):

    users:
      alice:
        name: Alice Baker
        password: scrypt$16384$8$1$<salt, base64>$<hash, base64>

Hashes are scrypt (hashlib, no extra package); `python -m services.console hash-password` makes one. A session is a
random 256-bit id in an HttpOnly, SameSite=Strict cookie (Secure under TLS) that maps to the operator on the
server, with its own CSRF token: every request that changes something must carry it in `X-CSRF-Token`. Sessions
end `session_ttl_s` after sign-in or `session_idle_s` after the last request, whichever comes first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

SCRYPT_N, SCRYPT_R, SCRYPT_P = 16384, 8, 1


class UsersFileError(ValueError):
    pass


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(base64.b64decode(expected)), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, base64.b64decode(expected))


@dataclass(frozen=True)
class User:
    id: str
    name: str
    password_hash: str


def load_users(path: Path) -> dict[str, User]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsersFileError(f"{path}: {exc}") from exc
    users = (data or {}).get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict) or not users:
        raise UsersFileError(f"{path}: expected a mapping 'users:' with at least one operator")
    out: dict[str, User] = {}
    for user_id, entry in users.items():
        if not isinstance(entry, dict) or not str(entry.get("password", "")).startswith("scrypt$"):
            raise UsersFileError(f"{path}: users.{user_id}.password must be a scrypt hash "
                                 "(python -m services.console hash-password)")
        out[str(user_id)] = User(str(user_id), str(entry.get("name") or user_id), str(entry["password"]))
    return out


@dataclass
class Session:
    id: str
    user: User
    csrf: str
    created: float
    last_seen: float


class SessionStore:
    """Sessions in memory: one console replica, or sticky sessions at the ingress (README)."""

    def __init__(self, ttl_s: float, idle_s: float, clock=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: User) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._expire(now)
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.created > self.ttl_s or now - session.last_seen > self.idle_s:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            return session

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self._sessions.items()
                    if now - s.created > self.ttl_s or now - s.last_seen > self.idle_s]:
            del self._sessions[sid]

    def __len__(self) -> int:
        return len(self._sessions)


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), given.encode())  # type: ignore[union-attr]
