"""Avro schema compatibility, by the resolution rules of the Avro specification.

`can_read(reader, writer)` lists why data written with `writer` cannot be read with `reader` (empty = it can).
FULL compatibility between two versions means each can read the other; FULL_TRANSITIVE means that holds for the
new version against every earlier one. `schemas/history/<topic>/vN.avsc` keeps every published version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class _Names:
    """Named types seen so far (records, enums, fixed), so references by name resolve."""

    def __init__(self) -> None:
        self.types: dict[str, dict] = {}

    def collect(self, schema: Any, namespace: str | None = None) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self.collect(branch, namespace)
        elif isinstance(schema, dict):
            kind = schema.get("type")
            if kind in ("record", "enum", "fixed", "error"):
                ns = schema.get("namespace", namespace)
                name = schema["name"]
                full = name if "." in name or not ns else f"{ns}.{name}"
                self.types[full] = schema
                self.types.setdefault(name, schema)
                for f in schema.get("fields", []):
                    self.collect(f["type"], ns)
            elif kind == "array":
                self.collect(schema["items"], namespace)
            elif kind == "map":
                self.collect(schema["values"], namespace)
            elif isinstance(kind, (dict, list)):
                self.collect(kind, namespace)

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return self.types.get(schema, self.types.get(schema.rsplit(".", 1)[-1], schema))
        if isinstance(schema, dict) and isinstance(schema.get("type"), str) and schema["type"] in PRIMITIVES \
                and len(schema) == 1:
            return schema["type"]
        if isinstance(schema, dict) and schema.get("type") in PRIMITIVES and "logicalType" in schema:
            return schema["type"]
        return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    return schema["type"] if isinstance(schema["type"], str) else "union"


def can_read(reader: Any, writer: Any) -> list[str]:
    """Reasons why `reader` cannot read data written with `writer`; empty when it can."""
    names_r, names_w = _Names(), _Names()
    names_r.collect(reader)
    names_w.collect(writer)
    return _check(reader, writer, names_r, names_w, "", set())


def _check(reader: Any, writer: Any, nr: _Names, nw: _Names, path: str, seen: set[tuple[str, str]]) -> list[str]:
    reader, writer = nr.resolve(reader), nw.resolve(writer)
    rk, wk = _kind(reader), _kind(writer)
    where = path or "<root>"
    if wk == "union":
        problems = []
        for branch in writer:
            problems += _check(reader, branch, nr, nw, path, seen)
        return problems
    if rk == "union":
        for branch in reader:
            if not _check(branch, writer, nr, nw, path, seen):
                return []
        return [f"{where}: writer type {wk} matches no branch of the reader's union"]
    if wk in PRIMITIVES or rk in PRIMITIVES:
        if wk in PRIMITIVES and rk in PROMOTIONS.get(wk, {wk}):
            return []
        return [f"{where}: writer type {wk} cannot be read as {rk}"]
    if rk != wk:
        return [f"{where}: writer type {wk} cannot be read as {rk}"]
    if rk == "array":
        return _check(reader["items"], writer["items"], nr, nw, f"{path}[]", seen)
    if rk == "map":
        return _check(reader["values"], writer["values"], nr, nw, f"{path}{{}}", seen)
    if rk == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            return [f"{where}: reader enum lacks symbols {sorted(missing)} and has no default"]
        return []
    if rk == "fixed":
        return [] if reader["size"] == writer["size"] else [f"{where}: fixed size {writer['size']} != {reader['size']}"]
    # records
    key = (json.dumps(reader, sort_keys=True)[:200], json.dumps(writer, sort_keys=True)[:200])
    if key in seen:
        return []
    seen = seen | {key}
    problems: list[str] = []
    writer_fields = {f["name"]: f for f in writer["fields"]}
    for field in reader["fields"]:
        names = [field["name"], *field.get("aliases", [])]
        match = next((writer_fields[n] for n in names if n in writer_fields), None)
        fpath = f"{path}.{field['name']}" if path else field["name"]
        if match is None:
            if "default" not in field:
                problems.append(f"{fpath}: the reader's field is missing in the writer and has no default")
            continue
        problems += _check(field["type"], match["type"], nr, nw, fpath, seen)
    return problems


def full_compatibility(new: Any, old: Any) -> list[str]:
    """Problems that break FULL compatibility between two versions (both directions)."""
    return ([f"new cannot read old: {p}" for p in can_read(new, old)]
            + [f"old cannot read new: {p}" for p in can_read(old, new)])


def check_history(schemas_dir: Path) -> dict[str, list[str]]:
    """FULL_TRANSITIVE: each topic's current schema against every version in its history."""
    results: dict[str, list[str]] = {}
    for current in sorted(schemas_dir.glob("*.avsc")):
        topic = current.name[: -len(".avsc")]
        new = json.loads(current.read_text())
        problems: list[str] = []
        history = sorted((schemas_dir / "history" / topic).glob("v*.avsc"), key=lambda p: int(p.stem[1:]))
        if not history:
            problems.append(f"no history: copy the schema to schemas/history/{topic}/v1.avsc")
        for version in history:
            old = json.loads(version.read_text())
            problems += [f"{version.name}: {p}" for p in full_compatibility(new, old)]
        if history and json.loads(history[-1].read_text()) != new:
            problems.append(f"the current schema differs from {history[-1].name}: "
                            f"add it to the history as v{len(history) + 1}.avsc")
        results[topic] = problems
    return results
