"""Signed answer links: HMAC-SHA256 over a small JSON claim set, with an expiry and a one-time id.

A link is `<public url>/a/<token>`, token = base64url(claims) "." base64url(hmac). Opening it (GET) shows a page
with a form and never acts (mail scanners open links); submitting the form (POST) acts once. Whether a link was
used is the service's state (the `jti` recorded from the answer's Kafka record), not the link's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

ACTIONS = ("ack", "up", "down", "approve", "reject")


class LinkError(ValueError):
    """A link that must be refused; `reason` is one of tampered, expired, malformed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    action: str  # ack, up, down, approve, reject
    notification_id: str  # the notification (for ack: the root one that escalates)
    subject: str  # what a vote is about (the recommendation id, or alarm:/action: ids)
    line_id: str
    operator: str  # the recipient the link was made for
    expires: int  # seconds since the epoch
    jti: str  # one-time id
    action_id: str | None = None  # approve / reject

    def as_dict(self) -> dict:
        out = {"a": self.action, "n": self.notification_id, "s": self.subject, "l": self.line_id,
               "o": self.operator, "e": self.expires, "j": self.jti}
        if self.action_id:
            out["x"] = self.action_id
        return out


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    def __init__(self, key: str, base_url: str, ttl_s: float) -> None:
        self._key = hashlib.sha256(b"lineguard-notifier-links\x00" + key.encode()).digest()
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def token(self, claims: Claims) -> str:
        body = _b64(json.dumps(claims.as_dict(), separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(body)}"

    def make(self, action: str, notification_id: str, subject: str, line_id: str, operator: str, now: float,
             action_id: str | None = None, expires_at: float | None = None) -> str:
        """A signed URL; `expires_at` (an approval's deadline) shortens the link's own lifetime."""
        expires = now + self.ttl_s
        if expires_at is not None:
            expires = min(expires, expires_at)
        claims = Claims(action, notification_id, subject, line_id, operator, int(expires),
                        secrets.token_urlsafe(12), action_id)
        return f"{self.base_url}/a/{self.token(claims)}"

    def verify(self, token: str, now: float) -> Claims:
        """The claims of a genuine, unexpired token; LinkError(tampered | expired | malformed) otherwise."""
        body, dot, mac = token.partition(".")
        if not dot or not body or not mac:
            raise LinkError("malformed", "This link is incomplete: it was cut or changed.")
        if not hmac.compare_digest(mac, self._mac(body)):
            raise LinkError("tampered", "This link's signature does not match: it was changed after it was sent.")
        try:
            raw = json.loads(_unb64(body))
            claims = Claims(raw["a"], raw["n"], raw["s"], raw["l"], raw["o"], int(raw["e"]), raw["j"], raw.get("x"))
        except (ValueError, KeyError, TypeError) as exc:
            raise LinkError("malformed", f"This link cannot be read: {type(exc).__name__}.") from None
        if claims.action not in ACTIONS:
            raise LinkError("malformed", f"This link asks for an unknown action {claims.action!r}.")
        if now >= claims.expires:
            raise LinkError("expired", "This link has expired: answer from the console or a newer notification.")
        return claims
