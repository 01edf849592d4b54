"""HTTP conventions of the NGSI-LD API (ETSI GS CIM 009, clause 6.3): content negotiation, the `Link` header,
ProblemDetails errors and bearer authentication, as one aiohttp middleware.

- `Accept: application/ld+json` -> the body carries `@context`; `application/json` (and `*/*`, or no Accept) ->
  no `@context` in the body, a `Link` header names it; anything else -> 406.
- Every error on every route (unknown routes and methods included) is a ProblemDetails body
  (`application/problem+json`: type, title, status, detail).
- `/ngsi-ld/...` needs `Authorization: Bearer <LINEGUARD_NORMALIZER_API_TOKEN>` (compared in constant time); without
  a configured token the API answers 503. `/livez`, `/readyz` and `/metrics` stay open (probes and scrapers).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lineguard.logs import event, get_logger
from lineguard.plant import NGSI_LD_CONTEXT

log = get_logger(__name__)

JSON = "application/json"
JSONLD = "application/ld+json"
PROBLEM = "application/problem+json"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
LINEGUARD_ERRORS = "urn:lineguard:errors:"
LINK_REL = "http://www.w3.org/ns/json-ld#context"
CONTEXT_LINK = f'<{NGSI_LD_CONTEXT}>; rel="{LINK_REL}"; type="{JSONLD}"'
# the negotiated media type, kept on the request for the handler
MEDIA_KEY: Any = web.RequestKey("ngsi_ld_media", str) if hasattr(web, "RequestKey") else "ngsi_ld_media"
API_PREFIX = "/ngsi-ld/"
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s]+")
_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 406: "Not acceptable", 413: "Request too large", 500: "Internal error",
           503: "Service unavailable"}


class Problem(Exception):
    """Raised by a handler: answered as ProblemDetails."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}


def bad_request(detail: str) -> Problem:
    return Problem(400, "BadRequestData", detail)


def problem_response(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """A ProblemDetails response; `kind` is an NGSI-LD error type name, or a full URI for other problems."""
    type_uri = kind if ":" in kind else ERRORS + kind
    body = {"type": type_uri, "title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    response = web.Response(status=status, text=json.dumps(body), content_type=PROBLEM)
    response.headers.update(headers or {})
    return response


def is_uri(text: str) -> bool:
    return bool(_URI.fullmatch(text))


def negotiate(accept: str | None) -> str | None:
    """The response media type for an Accept header, or None when nothing acceptable is offered."""
    if accept is None or not accept.strip():
        return JSON
    offers: list[tuple[float, int, str]] = []
    for index, item in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in item.split(";")]
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0 and media:
            offers.append((-quality, index, media.lower()))
    for _, _, media in sorted(offers):
        if media in (JSON, JSONLD):
            return media
        if media in ("*/*", "application/*"):
            return JSON
    return None


def check_link_header(link: str | None) -> None:
    """A request `Link` header must be a well-formed JSON-LD context link. Its context is not fetched (the API's
    terms are the core context's default vocabulary: short names and their default-context URIs both match)."""
    if link is None:
        return
    if not re.fullmatch(r'\s*<[^<>\s]+>\s*(;\s*[A-Za-z]+\s*=\s*("[^"]*"|[^;,\s]+)\s*)*', link):
        raise bad_request(f"malformed Link header: {link!r}")


def render(data: Any, media: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON-LD: `@context` in the body (in every entity of a list). JSON: no `@context`, a Link header instead."""
    if media == JSONLD:
        if isinstance(data, list):
            data = [{**item, "@context": NGSI_LD_CONTEXT} if isinstance(item, dict) else item for item in data]
        elif isinstance(data, dict):
            data = {**data, "@context": NGSI_LD_CONTEXT}
        response = web.Response(status=status, text=json.dumps(data), content_type=JSONLD)
    else:
        data = [_without_context(item) for item in data] if isinstance(data, list) else _without_context(data)
        response = web.Response(status=status, text=json.dumps(data), content_type=JSON)
        response.headers["Link"] = CONTEXT_LINK
    response.headers.update(headers or {})
    return response


def _without_context(item: Any) -> Any:
    if isinstance(item, dict) and "@context" in item:
        return {k: v for k, v in item.items() if k != "@context"}
    return item


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_middleware(token: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Authentication and content negotiation for `/ngsi-ld/...`; ProblemDetails for every error on every route."""
    expected = token.encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(API_PREFIX):
            if expected is None:
                return problem_response(503, LINEGUARD_ERRORS + "ApiDisabled",
                                        "the NGSI-LD API is disabled: set LINEGUARD_NORMALIZER_API_TOKEN")
            given = request.headers.get("Authorization", "")
            scheme, _, credentials = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), expected):
                return problem_response(401, LINEGUARD_ERRORS + "Unauthorized",
                                        "missing or wrong bearer token (Authorization: Bearer <token>)",
                                        {"WWW-Authenticate": 'Bearer realm="ngsi-ld"'})
            media = negotiate(request.headers.get("Accept"))
            if media is None:
                return problem_response(406, LINEGUARD_ERRORS + "NotAcceptable",
                                        f"cannot answer {request.headers.get('Accept')!r}: this API offers "
                                        f"{JSON} (context in a Link header) and {JSONLD}")
            request[MEDIA_KEY] = media
        try:
            return await handler(request)
        except Problem as exc:
            return problem_response(exc.status, exc.kind, exc.detail, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 404:
                return problem_response(404, "ResourceNotFound", f"no route {request.path!r}")
            if exc.status == 405:
                allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
                return problem_response(405, "OperationNotSupported",
                                        f"{request.method} is not supported on {request.path!r}"
                                        + (f" (allowed: {allowed})" if allowed else ""),
                                        {"Allow": allowed} if allowed else None)
            return problem_response(exc.status, LINEGUARD_ERRORS + (exc.reason or "Error").replace(" ", ""),
                                    exc.text or exc.reason or "error")
        except Exception as exc:  # noqa: BLE001 - answered, logged; the service goes on
            event(log, "api_request_failed", level=logging.ERROR, path=request.path,
                  error=f"{type(exc).__name__}: {exc}"[:500])
            return problem_response(500, "InternalError", f"{type(exc).__name__}: the request failed")

    return middleware
