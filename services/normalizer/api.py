"""The asset graph API: the line's structure and latest values as NGSI-LD entities (JSON-LD).

    GET /ngsi-ld/v1/entities?type=Machine[,Sensor]&id=...&options=keyValues&limit=&offset=
    GET /ngsi-ld/v1/entities/{id}
    GET /ngsi-ld/v1/entities/{id}/upstream      machines upstream of it, nearest first
    GET /ngsi-ld/v1/entities/{id}/downstream
    GET /ngsi-ld/v1/graph                       everything, as one JSON-LD @graph

Shapes follow NGSI-LD (ETSI GS CIM 009): normalized entities by default, `options=keyValues` for the simplified
form, errors as ProblemDetails. Machines carry the latest value of every attribute seen (`observedAt` in ISO 8601).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

from aiohttp import web

from lineguard.plant import NGSI_LD_CONTEXT, AssetGraph
from services.normalizer.mapping import Normalizer

JSONLD = "application/ld+json"
_ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
_RESERVED = {"id", "type", "@context", "scope", "createdAt", "modifiedAt"}


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _problem(status: int, kind: str, title: str, detail: str) -> web.Response:
    body = {"type": _ERRORS + kind, "title": title, "status": status, "detail": detail}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data), content_type=JSONLD)


def key_values(entity: dict[str, Any]) -> dict[str, Any]:
    """The NGSI-LD simplified (keyValues) form of a normalized entity."""
    out: dict[str, Any] = {}
    for name, attr in entity.items():
        if name in _RESERVED or not isinstance(attr, dict):
            out[name] = attr
        elif attr.get("type") == "Relationship":
            out[name] = attr.get("object")
        else:
            out[name] = attr.get("value")
    return out


class AssetGraphApi:
    def __init__(self, normalizer: Normalizer) -> None:
        self.normalizer = normalizer
        self.graph: AssetGraph = normalizer.graph
        self._entities = {entity["id"]: entity for entity in self.graph.entities()}
        self._sensor_machine = {sensor.id: sensor.machine_entity_id for sensor in normalizer.plant.sensors()}

    # --- entity assembly --------------------------------------------------------------------------------------

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        """The entity with the latest value of every attribute seen, normalized form with @context."""
        base = self._entities.get(entity_id)
        if base is None:
            return None
        out = copy.deepcopy(base)
        latest = self.normalizer.latest.get(entity_id)
        if latest:
            for attribute, (value, unit_code, observed_at) in list(latest.items()):  # a snapshot: the consumer
                if attribute in _RESERVED or attribute in base:                     # thread keeps updating it
                    continue
                prop: dict[str, Any] = {"type": "Property", "value": value, "observedAt": _iso(observed_at)}
                if unit_code:
                    prop["unitCode"] = unit_code
                out[attribute] = prop
        out["@context"] = NGSI_LD_CONTEXT
        return out

    def _render(self, entity: dict[str, Any], request: web.Request) -> dict[str, Any]:
        options = request.query.get("options", "")
        return key_values(entity) if "keyValues" in options.split(",") else entity

    def _walk_start(self, entity_id: str) -> str | None:
        base = self._entities.get(entity_id)
        if base is None:
            return None
        if base["type"] == "Machine":
            return entity_id
        return self._sensor_machine.get(entity_id)

    # --- handlers ---------------------------------------------------------------------------------------------

    async def list_entities(self, request: web.Request) -> web.Response:
        types = {t for t in request.query.get("type", "").split(",") if t}
        ids = {i for i in request.query.get("id", "").split(",") if i}
        if not types and not ids:
            return _problem(400, "BadRequestData", "Bad request",
                            "give at least one of 'type' or 'id' (e.g. ?type=Machine), as NGSI-LD requires")
        try:
            limit = int(request.query.get("limit", "100"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return _problem(400, "BadRequestData", "Bad request", "limit and offset must be integers")
        if not 0 <= limit <= 1000 or offset < 0:
            return _problem(400, "BadRequestData", "Bad request", "limit must be 0..1000 and offset >= 0")
        matched = [eid for eid, e in self._entities.items()
                   if (not types or e["type"] in types) and (not ids or eid in ids)]
        page = matched[offset:offset + limit]
        body = [self._render(self.entity(eid), request) for eid in page]  # type: ignore[arg-type]
        response = _json(body)
        response.headers["NGSILD-Results-Count"] = str(len(matched))
        return response

    async def get_entity(self, request: web.Request) -> web.Response:
        entity_id = request.match_info["entity_id"]
        entity = self.entity(entity_id)
        if entity is None:
            return _problem(404, "ResourceNotFound", "Entity not found", f"no entity {entity_id!r} in the plant model")
        return _json(self._render(entity, request))

    async def walk(self, request: web.Request) -> web.Response:
        entity_id = request.match_info["entity_id"]
        direction = request.match_info["direction"]
        if entity_id not in self._entities:
            return _problem(404, "ResourceNotFound", "Entity not found", f"no entity {entity_id!r} in the plant model")
        start = self._walk_start(entity_id)
        if start is None:
            return _problem(400, "BadRequestData", "Bad request",
                            f"{entity_id!r} is not a machine or sensor: only those have upstream and downstream")
        ids = self.graph.upstream(start) if direction == "upstream" else self.graph.downstream(start)
        entities = [self._render(self.entity(eid), request) for eid in ids]  # type: ignore[arg-type]
        return _json({"@context": NGSI_LD_CONTEXT, "id": entity_id, "direction": direction, "from": start,
                      "entities": entities})

    async def whole_graph(self, request: web.Request) -> web.Response:
        entities = []
        for eid in self._entities:
            entity = self.entity(eid)
            assert entity is not None
            entity.pop("@context", None)
            entities.append(self._render(entity, request))
        return _json({"@context": NGSI_LD_CONTEXT, "@graph": entities})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ngsi-ld/v1/entities", self.list_entities)
        app.router.add_get("/ngsi-ld/v1/entities/{entity_id}/{direction:upstream|downstream}", self.walk)
        app.router.add_get("/ngsi-ld/v1/entities/{entity_id}", self.get_entity)
        app.router.add_get("/ngsi-ld/v1/graph", self.whole_graph)
