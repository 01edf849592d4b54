"""The approvals API (aiohttp), on the actuator's HTTP port next to /livez, /readyz and /metrics.

    GET  /v1/actions?state=pending_approval[&line_id=...]   {"actions": [action, ...]}, oldest first
    GET  /v1/actions/{action_id}                           the action
    POST /v1/actions/{action_id}/approve   {"comment": "..."}                       the action after the decision
    POST /v1/actions/{action_id}/reject    {"comment": "..."}

Every request needs `Authorization: Bearer <token>`. An operator's token (LINEGUARD_ACTUATOR_OPERATOR_TOKENS) acts
as that operator. A delegate's token (LINEGUARD_ACTUATOR_DELEGATE_TOKENS: the console, the notifier) must name the
operator it acts for in the body, `{"operator": "alice", ...}`, and the audit trail records "alice via console".
401: no or a wrong token; 404: no such action; 409: expired or already decided; 400: a malformed body.
Approving re-checks the policy against the live state, executes, and answers once the action is executed, failed
or blocked (or after LINEGUARD_APPROVE_WAIT_S with the action as it stands).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from services.actuator.actions import ActionConflict, Actuator, public_view

STATES = ("proposed", "blocked", "pending_approval", "approved", "rejected", "expired", "executing", "executed",
          "failed")
OPERATOR_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MAX_COMMENT = 1000


def _error(status: int, code: str, reason: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="lineguard-actuator"'} if status == 401 else None
    return web.json_response({"error": code, "reason": reason}, status=status, headers=headers)


class Callers:
    """Token -> (name, is_delegate), compared in constant time against every known token."""

    def __init__(self, operators: dict[str, str], delegates: dict[str, str]) -> None:
        self._tokens = [(t.encode(), name, False) for t, name in operators.items()]
        self._tokens += [(t.encode(), name, True) for t, name in delegates.items()]

    def identify(self, request: web.Request) -> tuple[str, bool] | None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        token = given.strip().encode()
        found = None
        for known, name, delegate in self._tokens:  # no early exit: the time does not tell which token matched
            if hmac.compare_digest(token, known):
                found = (name, delegate)
        return found


def add_approval_routes(app: web.Application, actuator: Actuator, callers: Callers, approve_wait_s: float,
                        available: Callable[[], bool] = lambda: True) -> None:
    """The routes above; `available` is False while the ledger is being restored (answers 503 meanwhile)."""

    @web.middleware
    async def restoring(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v1/actions") and not available():
            return _error(503, "restoring", "the ledger is being rebuilt from actions.v1; try again in a moment")
        return await handler(request)

    app.middlewares.append(restoring)

    def unauthorised() -> web.Response:
        return _error(401, "unauthorized", "send 'Authorization: Bearer <token>' with an operator's or a "
                                           "delegate's token")

    async def list_actions(request: web.Request) -> web.Response:
        if callers.identify(request) is None:
            return unauthorised()
        state = request.query.get("state", "pending_approval")
        if state not in STATES:
            return _error(400, "bad_request", f"state must be one of {', '.join(STATES)}")
        line_id = request.query.get("line_id")
        for aid in [a["action_id"] for a in actuator.pending()]:  # an expired one must not be shown as pending
            await actuator.expire_if_due(aid)
        chosen = [a for a in sorted(actuator.ledger.values(), key=lambda a: a["created_at"])
                  if a["status"] == state and (line_id is None or a["line_id"] == line_id)]
        return web.json_response({"actions": [public_view(a) for a in chosen[-500:]]})

    async def get_action(request: web.Request) -> web.Response:
        if callers.identify(request) is None:
            return unauthorised()
        aid = request.match_info["action_id"]
        await actuator.expire_if_due(aid)
        action = actuator.ledger.get(aid)
        if action is None:
            return _error(404, "not_found", f"no action {aid!r}")
        return web.json_response(public_view(action))

    async def decide(request: web.Request, approve: bool) -> web.Response:
        who = callers.identify(request)
        if who is None:
            return unauthorised()
        name, delegate = who
        aid = request.match_info["action_id"]
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return _error(400, "bad_request", "the body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "bad_request", "the body must be a JSON object")
        comment = body.get("comment")
        if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
            return _error(400, "bad_request", f"comment must be a string of at most {MAX_COMMENT} characters")
        if delegate:
            operator = body.get("operator")
            if not isinstance(operator, str) or not OPERATOR_NAME.match(operator):
                return _error(400, "bad_request", f"a delegate ({name}) must name the operator it acts for: "
                                                  '{"operator": "alice", ...}')
            actor = f"{operator} via {name}"
        else:
            actor = name
        if aid not in actuator.ledger:
            return _error(404, "not_found", f"no action {aid!r}")
        try:
            if approve:
                action = await actuator.approve(aid, actor, comment, wait_s=approve_wait_s)
            else:
                action = await actuator.reject(aid, actor, comment)
        except KeyError:
            return _error(404, "not_found", f"no action {aid!r}")
        except ActionConflict as exc:
            return _error(409, "conflict", str(exc))
        return web.json_response(public_view(action))

    async def approve(request: web.Request) -> web.Response:
        return await decide(request, True)

    async def reject(request: web.Request) -> web.Response:
        return await decide(request, False)

    app.router.add_get("/v1/actions", list_actions)
    app.router.add_get("/v1/actions/{action_id}", get_action)
    app.router.add_post("/v1/actions/{action_id}/approve", approve)
    app.router.add_post("/v1/actions/{action_id}/reject", reject)
