"""One valid sample record per topic schema, generated from the schema itself (every field filled)."""

from __future__ import annotations

from typing import Any

from lineguard.avro import AvroSerde

_PRIMITIVE_SAMPLES = {"string": "s", "long": 1_700_000_000_000, "int": 3, "double": 1.5, "float": 0.5,
                      "boolean": True, "bytes": b"b"}


def sample(schema: Any, named: dict[str, Any] | None = None) -> Any:
    named = {} if named is None else named
    if isinstance(schema, list):
        non_null = [b for b in schema if b != "null"]
        return sample(non_null[0], named) if non_null else None
    if isinstance(schema, str):
        if schema in _PRIMITIVE_SAMPLES:
            return _PRIMITIVE_SAMPLES[schema]
        return sample(named[schema.rsplit(".", 1)[-1]], named)
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        return {f["name"]: sample(f["type"], named) for f in schema["fields"]}
    if kind == "array":
        return [sample(schema["items"], named)]
    if kind == "map":
        return {"k": sample(schema["values"], named)}
    if isinstance(kind, (list, dict)):
        return sample(kind, named)
    return sample(kind, named)


def samples(serde: AvroSerde) -> dict[str, dict]:
    return {topic: sample(serde.schema(topic)) for topic in serde.topics()}
