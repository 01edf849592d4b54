"""The NGSI-LD API (ETSI GS CIM 009, read side): the line's structure, latest values and history.

    GET /ngsi-ld/v1/entities?type=&id=&idPattern=&q=&attrs=&pick=&omit=&options=&format=&count=&limit=&offset=
    GET /ngsi-ld/v1/entities/{id}?attrs=&pick=&omit=&options=
    GET /ngsi-ld/v1/types[?details=true]            GET /ngsi-ld/v1/types/{type}
    GET /ngsi-ld/v1/attributes[?details=true]       GET /ngsi-ld/v1/attributes/{attr}
    GET /ngsi-ld/v1/temporal/entities/{id}?attrs=&timerel=&timeAt=&endTimeAt=&lastN=&aggrMethods=&aggrPeriodDuration=
                                          &options=temporalValues|aggregatedValues
    GET /ngsi-ld/v1/temporal/entities?type=&id=&attrs=&timerel=...   (the same, for several entities)
    GET /ngsi-ld/v1/entities/{id}/upstream | downstream    machines upstream / downstream (Lineguard's own)
    GET /ngsi-ld/v1/graph                                  everything, as one JSON-LD @graph (Lineguard's own)

Content negotiation, the Link header, ProblemDetails and bearer auth: `ngsi_http`. The query language: `ngsi_query`.
History: `temporal` (the lake through DuckDB, plus the recent observations in memory). Machines carry the latest
value of every attribute seen (`observedAt` in ISO 8601).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import re
from typing import Any

from aiohttp import web

from lineguard.plant import NGSI_LD_CONTEXT, AssetGraph
from services.normalizer.lake import LakeStore
from services.normalizer.mapping import Normalizer
from services.normalizer.ngsi_http import (
    MEDIA_KEY,
    Problem,
    api_middleware,
    bad_request,
    check_link_header,
    is_uri,
    render,
)
from services.normalizer.ngsi_query import (
    DEFAULT_CONTEXT,
    QuerySyntaxError,
    parse_datetime,
    parse_q,
    short_name,
)
from services.normalizer.temporal import (
    AGGREGATES,
    LakeHistory,
    TemporalQuery,
    TemporalQueryError,
    TooManyResults,
    interval,
    memory_table,
    parse_duration_ms,
    run_query,
)

_RESERVED = {"id", "type", "@context", "scope", "createdAt", "modifiedAt"}
_OPTIONS = {"keyValues", "simplified", "concise", "normalized", "sysAttrs", "temporalValues", "aggregatedValues"}
_FORMATS = {"keyValues": "keyValues", "simplified": "keyValues", "concise": "concise", "normalized": "normalized"}
_ATTR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def concise(entity: dict[str, Any]) -> dict[str, Any]:
    """The NGSI-LD concise form: no `type` on attributes; a Property with a value alone is that value."""
    out: dict[str, Any] = {}
    for name, attr in entity.items():
        if name in _RESERVED or not isinstance(attr, dict):
            out[name] = attr
            continue
        members = {k: v for k, v in attr.items() if k != "type"}
        if attr.get("type") == "Property" and set(members) == {"value"} and not isinstance(members["value"], dict):
            out[name] = members["value"]
        else:
            out[name] = members
    return out


def _names(raw: str | None, what: str) -> list[str] | None:
    """A comma list of attribute names (short or default-context URIs); None when the parameter is absent."""
    if raw is None:
        return None
    names = [short_name(n.strip()) for n in raw.split(",") if n.strip()]
    if not names:
        raise bad_request(f"{what} is empty")
    for name in names:
        if not _ATTR_NAME.fullmatch(name) and name not in ("id", "type"):
            raise bad_request(f"{what}: {name!r} is not an attribute name")
    return names


def _time(raw: str | None, what: str) -> int | None:
    if raw is None:
        return None
    parsed = parse_datetime(raw.replace(" ", "+"))  # an unencoded '+' of an offset arrives as a space
    if parsed is None:
        raise bad_request(f"{what}={raw!r} is not an ISO 8601 date-time (e.g. 2025-11-29T07:00:00Z)")
    return int(parsed.timestamp() * 1000)


def _format(request: web.Request, allowed: set[str] = _OPTIONS) -> tuple[str, set[str]]:
    """(representation: normalized | keyValues | concise, the other options) from `options` and `format`."""
    options = {o.strip() for o in request.query.get("options", "").split(",") if o.strip()}
    unknown = options - allowed
    if unknown:
        raise bad_request(f"options: unknown {', '.join(sorted(unknown))} (known: {', '.join(sorted(allowed))})")
    formats = {_FORMATS[o] for o in options if o in _FORMATS}
    if "format" in request.query:
        if request.query["format"] not in _FORMATS:
            raise bad_request(f"format={request.query['format']!r}: expected normalized, keyValues or concise")
        formats.add(_FORMATS[request.query["format"]])
    if len(formats) > 1:
        raise bad_request(f"conflicting representations requested: {', '.join(sorted(formats))}")
    return (formats.pop() if formats else "normalized"), options


class AssetGraphApi:
    def __init__(self, normalizer: Normalizer, token: str | None = None, lake: LakeStore | None = None,
                 max_temporal_instances: int = 10_000) -> None:
        self.normalizer = normalizer
        self.graph: AssetGraph = normalizer.graph
        self.token = token
        self.history = LakeHistory(lake)
        self.max_temporal_instances = max_temporal_instances
        self._entities = {entity["id"]: entity for entity in self.graph.entities()}
        self._sensor_machine = {sensor.id: sensor.machine_entity_id for sensor in normalizer.plant.sensors()}
        self._machine_line = {machine.entity_id: machine.line_id for machine in normalizer.plant.machines()}

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
        representation, _ = _format(request)
        if representation == "keyValues":
            return key_values(entity)
        if representation == "concise":
            return concise(entity)
        return entity

    @staticmethod
    def _project(entity: dict[str, Any], attrs: list[str] | None, pick: list[str] | None,
                 omit: list[str] | None) -> dict[str, Any]:
        keep = {k: v for k, v in entity.items()
                if k in ("id", "type", "@context") or attrs is None or k in attrs}
        if pick is not None:
            keep = {k: v for k, v in keep.items() if k in pick or k == "@context"}
        if omit is not None:
            keep = {k: v for k, v in keep.items() if k not in omit}
        return keep

    def _walk_start(self, entity_id: str) -> str | None:
        base = self._entities.get(entity_id)
        if base is None:
            return None
        if base["type"] == "Machine":
            return entity_id
        return self._sensor_machine.get(entity_id)

    def _entity_or_problem(self, entity_id: str) -> dict[str, Any]:
        if not is_uri(entity_id):
            raise bad_request(f"{entity_id!r} is not a URI (entity ids look like urn:ngsi-ld:Machine:line1-oven)")
        entity = self.entity(entity_id)
        if entity is None:
            raise Problem(404, "ResourceNotFound", f"no entity {entity_id!r} in the plant model")
        return entity

    @staticmethod
    def _media(request: web.Request) -> str:
        return request.get(MEDIA_KEY, "application/json")

    # --- entities -----------------------------------------------------------------------------------------------

    def _selection(self, request: web.Request, attrs_filter: bool = True) -> list[str]:
        """The ids of the entities that match type, id, idPattern, q and attrs (in the plant model's order);
        without `attrs_filter`, attrs only selects what is shown (the temporal query: history, not latest values,
        says which entities have an attribute)."""
        query = request.query
        check_link_header(request.headers.get("Link"))
        # an entity type selection: names joined by ',' or '|' (either matches); ';' (both) never matches one type
        raw_types = query.get("type")
        if raw_types is not None and (";" in raw_types or "(" in raw_types):
            raise bad_request("type: only ',' and '|' selections are supported (an entity has one type here)")
        types = _names(raw_types.replace("|", ",") if raw_types is not None else None, "type")
        ids = [i.strip() for i in query.get("id", "").split(",") if i.strip()] if "id" in query else None
        if ids is not None:
            for i in ids:
                if not is_uri(i):
                    raise bad_request(f"id: {i!r} is not a URI")
        pattern = None
        if "idPattern" in query:
            try:
                pattern = re.compile(query["idPattern"])
            except re.error as exc:
                raise bad_request(f"idPattern: invalid regular expression: {exc}") from None
        predicate = None
        if "q" in query:
            try:
                predicate = parse_q(query["q"])
            except QuerySyntaxError as exc:
                raise bad_request(str(exc)) from None
        attrs = _names(query.get("attrs"), "attrs")
        if types is None and ids is None and pattern is None and predicate is None and attrs is None:
            raise bad_request("give at least one of type, id, idPattern, q or attrs (e.g. ?type=Machine), "
                              "as NGSI-LD requires")
        matched = []
        for eid, base in self._entities.items():
            if types is not None and base["type"] not in types:
                continue
            if ids is not None and eid not in ids:
                continue
            if pattern is not None and not pattern.fullmatch(eid):
                continue
            if predicate is not None or (attrs is not None and attrs_filter):
                entity = self.entity(eid)
                assert entity is not None
                if predicate is not None and not predicate(entity):
                    continue
                if attrs is not None and attrs_filter and not any(a in entity for a in attrs):
                    continue
            matched.append(eid)
        return matched

    def _projection(self, request: web.Request) -> tuple[list[str] | None, list[str] | None, list[str] | None]:
        attrs = _names(request.query.get("attrs"), "attrs")
        pick = _names(request.query.get("pick"), "pick")
        omit = _names(request.query.get("omit"), "omit")
        if pick is not None and omit is not None:
            raise bad_request("pick and omit cannot be given together")
        return attrs, pick, omit

    async def list_entities(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            raise bad_request("limit and offset must be integers") from None
        if not 0 <= limit <= 1000 or offset < 0:
            raise bad_request("limit must be 0..1000 and offset >= 0")
        count = request.query.get("count", "false")
        if count not in ("true", "false"):
            raise bad_request("count must be true or false")
        attrs, pick, omit = self._projection(request)
        _format(request)
        matched = self._selection(request)
        page = matched[offset:offset + limit]
        body = [self._render(self._project(self.entity(eid), attrs, pick, omit), request)  # type: ignore[arg-type]
                for eid in page]
        headers = {"NGSILD-Results-Count": str(len(matched))} if count == "true" else None
        return render(body, self._media(request), headers=headers)

    async def get_entity(self, request: web.Request) -> web.Response:
        check_link_header(request.headers.get("Link"))
        entity = self._entity_or_problem(request.match_info["entity_id"])
        attrs, pick, omit = self._projection(request)
        return render(self._render(self._project(entity, attrs, pick, omit), request), self._media(request))

    async def walk(self, request: web.Request) -> web.Response:
        entity_id = request.match_info["entity_id"]
        direction = request.match_info["direction"]
        self._entity_or_problem(entity_id)
        start = self._walk_start(entity_id)
        if start is None:
            raise bad_request(f"{entity_id!r} is not a machine or sensor: only those have upstream and downstream")
        ids = self.graph.upstream(start) if direction == "upstream" else self.graph.downstream(start)
        entities = [self._render(_strip_context(self.entity(eid)), request) for eid in ids]
        return render({"id": entity_id, "direction": direction, "from": start, "entities": entities},
                      self._media(request))

    async def whole_graph(self, request: web.Request) -> web.Response:
        entities = [self._render(_strip_context(self.entity(eid)), request) for eid in self._entities]
        return render({"@graph": entities}, self._media(request))

    # --- types and attributes -------------------------------------------------------------------------------------

    def _catalogue(self) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
        """type -> entity ids; attribute -> {types, kinds (Property/Relationship), count of entities}."""
        types: dict[str, list[str]] = {}
        attributes: dict[str, dict[str, Any]] = {}
        for eid in self._entities:
            entity = self.entity(eid)
            assert entity is not None
            types.setdefault(entity["type"], []).append(eid)
            for name, attr in entity.items():
                if name in _RESERVED or not isinstance(attr, dict):
                    continue
                info = attributes.setdefault(name, {"types": set(), "kinds": set(), "count": 0})
                info["types"].add(entity["type"])
                info["kinds"].add(attr.get("type", "Property"))
                info["count"] += 1
        return types, attributes

    async def list_types(self, request: web.Request) -> web.Response:
        types, attributes = self._catalogue()
        if request.query.get("details") == "true":
            body: Any = [{"id": DEFAULT_CONTEXT + name, "type": "EntityType", "typeName": name,
                          "attributeNames": sorted(a for a, info in attributes.items() if name in info["types"])}
                         for name in sorted(types)]
        else:
            body = {"id": "urn:ngsi-ld:EntityTypeList:lineguard", "type": "EntityTypeList",
                    "typeList": sorted(types)}
        return render(body, self._media(request))

    async def get_type(self, request: web.Request) -> web.Response:
        name = short_name(request.match_info["type"])
        types, attributes = self._catalogue()
        if name not in types:
            raise Problem(404, "ResourceNotFound", f"no entity of type {name!r}")
        details = [{"id": DEFAULT_CONTEXT + a, "type": "Attribute", "attributeName": a,
                    "attributeTypes": sorted(info["kinds"])}
                   for a, info in sorted(attributes.items()) if name in info["types"]]
        return render({"id": DEFAULT_CONTEXT + name, "type": "EntityTypeInfo", "typeName": name,
                       "entityCount": len(types[name]), "attributeDetails": details}, self._media(request))

    async def list_attributes(self, request: web.Request) -> web.Response:
        _, attributes = self._catalogue()
        if request.query.get("details") == "true":
            body: Any = [{"id": DEFAULT_CONTEXT + a, "type": "Attribute", "attributeName": a,
                          "typeNames": sorted(info["types"])} for a, info in sorted(attributes.items())]
        else:
            body = {"id": "urn:ngsi-ld:AttributeList:lineguard", "type": "AttributeList",
                    "attributeList": sorted(attributes)}
        return render(body, self._media(request))

    async def get_attribute(self, request: web.Request) -> web.Response:
        name = short_name(request.match_info["attr"])
        _, attributes = self._catalogue()
        info = attributes.get(name)
        if info is None:
            raise Problem(404, "ResourceNotFound", f"no attribute {name!r}")
        return render({"id": DEFAULT_CONTEXT + name, "type": "Attribute", "attributeName": name,
                       "attributeCount": info["count"], "attributeTypes": sorted(info["kinds"]),
                       "typeNames": sorted(info["types"])}, self._media(request))

    # --- temporal -------------------------------------------------------------------------------------------------

    def _temporal_params(self, request: web.Request) -> dict[str, Any]:
        query = request.query
        check_link_header(request.headers.get("Link"))
        timeproperty = query.get("timeproperty", "observedAt")
        if timeproperty != "observedAt":
            raise bad_request(f"timeproperty={timeproperty!r}: only observedAt is kept in history")
        try:
            window = interval(query.get("timerel"), _time(query.get("timeAt"), "timeAt"),
                              _time(query.get("endTimeAt"), "endTimeAt"))
        except TemporalQueryError as exc:
            raise bad_request(str(exc)) from None
        last_n = None
        if "lastN" in query:
            if not query["lastN"].isdigit() or int(query["lastN"]) < 1:
                raise bad_request("lastN must be a positive integer")
            last_n = int(query["lastN"])
        representation, options = _format(request)
        methods = None
        if "aggrMethods" in query:
            methods = [m.strip() for m in query["aggrMethods"].split(",") if m.strip()]
            unknown = [m for m in methods if m not in AGGREGATES]
            if not methods or unknown:
                raise bad_request(f"aggrMethods: unknown {', '.join(unknown) or '(empty)'} "
                                  f"(known: {', '.join(AGGREGATES)})")
        if "aggregatedValues" in options and methods is None:
            raise bad_request("options=aggregatedValues needs aggrMethods")
        period = 0
        if "aggrPeriodDuration" in query:
            if methods is None:
                raise bad_request("aggrPeriodDuration needs aggrMethods")
            try:
                period = parse_duration_ms(query["aggrPeriodDuration"])
            except TemporalQueryError as exc:
                raise bad_request(str(exc)) from None
        return {"window": window, "last_n": last_n, "methods": methods, "period": period,
                "attrs": _names(query.get("attrs"), "attrs"), "simplified": "temporalValues" in options,
                "representation": representation}

    def _temporal_entity(self, entity_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """One entity's history (blocking: lake reads and DuckDB), in the representation asked for."""
        base = self._entities[entity_id]
        line_id = self._machine_line.get(entity_id)
        out: dict[str, Any] = {"id": entity_id, "type": base["type"]}
        if line_id is None:  # only machines carry observations
            return out
        query = TemporalQuery(entity_id, line_id, params["attrs"], params["window"], params["last_n"],
                              params["methods"], params["period"], self.max_temporal_instances)
        recent = {attribute: rows.copy() for (eid, attribute), rows in list(self.normalizer.recent.items())
                  if eid == entity_id and (query.attrs is None or attribute in query.attrs)}
        lake = self.history.read(line_id, entity_id, query.window) if self.history.store is not None else None
        memory = memory_table(entity_id, recent, query.window)
        result = run_query(query, lake if lake is not None else memory.schema.empty_table(), memory)
        if query.aggr_methods:
            for attribute, methods in result.items():
                out[attribute] = {"type": "Property", **{m: [[v, _iso(s), _iso(e)] for v, s, e in values]
                                                         for m, values in methods.items()}}
            return out
        for attribute, instances in result.items():
            if params["simplified"] or params["representation"] == "keyValues":
                out[attribute] = {"type": "Property", "values": [[v, _iso(t)] for t, v, _, _ in instances]}
                continue
            rendered = []
            for t, value, unit_code, oid in instances:
                instance: dict[str, Any] = {"type": "Property", "value": value, "observedAt": _iso(t),
                                            "instanceId": f"urn:lineguard:observation:{oid}"}
                if unit_code:
                    instance["unitCode"] = unit_code
                if params["representation"] == "concise":
                    instance.pop("type")
                rendered.append(instance)
            out[attribute] = rendered
        return out

    async def temporal_entity(self, request: web.Request) -> web.Response:
        entity_id = request.match_info["entity_id"]
        self._entity_or_problem(entity_id)
        params = self._temporal_params(request)
        try:
            body = await asyncio.to_thread(self._temporal_entity, entity_id, params)
        except TooManyResults as exc:
            raise Problem(403, "TooManyResults", str(exc)) from None
        return render(body, self._media(request))

    async def temporal_query(self, request: web.Request) -> web.Response:
        params = self._temporal_params(request)
        ids = self._selection(request, attrs_filter=False)
        if len(ids) > 100:
            raise Problem(403, "TooManyResults", f"{len(ids)} entities match: narrow type, id or idPattern")

        def run() -> list[dict[str, Any]]:
            return [self._temporal_entity(eid, params) for eid in ids]

        try:
            body = await asyncio.to_thread(run)
        except TooManyResults as exc:
            raise Problem(403, "TooManyResults", str(exc)) from None
        return render(body, self._media(request))

    def add_routes(self, app: web.Application) -> None:
        """The API's routes, plus its middleware (auth, content negotiation, ProblemDetails on every route)."""
        app.middlewares.append(api_middleware(self.token))
        app.router.add_get("/ngsi-ld/v1/entities", self.list_entities)
        app.router.add_get("/ngsi-ld/v1/entities/{entity_id}/{direction:upstream|downstream}", self.walk)
        app.router.add_get("/ngsi-ld/v1/entities/{entity_id}", self.get_entity)
        app.router.add_get("/ngsi-ld/v1/graph", self.whole_graph)
        app.router.add_get("/ngsi-ld/v1/types", self.list_types)
        app.router.add_get("/ngsi-ld/v1/types/{type:.+}", self.get_type)
        app.router.add_get("/ngsi-ld/v1/attributes", self.list_attributes)
        app.router.add_get("/ngsi-ld/v1/attributes/{attr:.+}", self.get_attribute)
        app.router.add_get("/ngsi-ld/v1/temporal/entities", self.temporal_query)
        app.router.add_get("/ngsi-ld/v1/temporal/entities/{entity_id}", self.temporal_entity)


def _strip_context(entity: dict[str, Any] | None) -> dict[str, Any]:
    assert entity is not None
    entity.pop("@context", None)
    return entity
