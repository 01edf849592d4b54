import json

import fastavro
import pytest
from schema_samples import samples

from lineguard.avro import (
    AvroSerde,
    CorruptPayloadError,
    RecordMismatchError,
    UnknownSchemaError,
    single_object_fingerprint,
)
from lineguard.avro_compat import can_read, check_history, full_compatibility
from lineguard.catalog import load_catalog


@pytest.fixture(scope="module")
def serde():
    return AvroSerde()


def test_every_catalog_topic_has_a_schema_with_docs_and_its_key_field(serde):
    catalog = load_catalog()
    for spec in catalog.topics.values():
        if spec.is_dlq or spec.schema is None:  # dead letters and service-internal state: raw bytes
            assert not spec.is_dlq or spec.schema is None
            continue
        schema = serde.schema(spec.name)
        assert schema.get("doc"), spec.name
        fields = {f["name"]: f for f in schema["fields"]}
        assert spec.key_field in fields, f"{spec.name}: key field {spec.key_field} not in schema"
        assert all(f.get("doc") for f in schema["fields"]), f"{spec.name}: a field has no doc"


def test_single_object_round_trip_for_every_schema(serde):
    for topic, record in samples(serde).items():
        data = serde.encode(topic, record)
        assert data[:2] == b"\xc3\x01"
        assert data[2:10] == single_object_fingerprint(serde.parsed_schema(topic))
        assert serde.decode(topic, data) == record, topic


def test_single_object_header_matches_the_avro_spec_fingerprint(serde):
    # The fingerprint is CRC-64-AVRO of the canonical form, little-endian, per the Avro spec.
    canonical = fastavro.schema.to_parsing_canonical_form(serde.parsed_schema("feedback.v1"))
    expected = fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
    assert serde.encode("feedback.v1", samples(serde)["feedback.v1"])[2:10].hex() == expected


@pytest.mark.parametrize(("payload", "error"), [
    (b"", CorruptPayloadError),
    (b"garbage that is not avro", CorruptPayloadError),
    (b"\xc3\x01\x00", CorruptPayloadError),
    (b"\xc3\x01" + b"\x11" * 8 + b"body", UnknownSchemaError),
    (b"\x00\x00\x00\x00\x07body", UnknownSchemaError),  # Confluent format, no registry configured
    (b"\x00\x01", CorruptPayloadError),
])
def test_bad_payloads_raise_typed_errors(serde, payload, error):
    with pytest.raises(error):
        serde.decode("raw.telemetry.v1", payload)


def test_truncated_and_trailing_bodies_are_corrupt(serde):
    good = serde.encode("raw.telemetry.v1", samples(serde)["raw.telemetry.v1"])
    with pytest.raises(CorruptPayloadError):
        serde.decode("raw.telemetry.v1", good[:-5])
    with pytest.raises(CorruptPayloadError, match="trailing"):
        serde.decode("raw.telemetry.v1", good + b"\x00\x00")


def test_record_that_does_not_fit_names_the_field(serde):
    record = samples(serde)["raw.telemetry.v1"]
    record["observed_at"] = "yesterday"
    with pytest.raises(RecordMismatchError, match=r"RawReading\.observed_at: expected long, got 'yesterday'"):
        serde.encode("raw.telemetry.v1", record)
    with pytest.raises(RecordMismatchError, match="unknown field"):
        serde.check("raw.telemetry.v1", {**samples(serde)["raw.telemetry.v1"], "colour": "red"})


def test_confluent_wire_format_with_a_registry():
    serde = AvroSerde(registry_url="mock://unit-tests")
    assert serde.wire_format == "confluent"
    record = samples(serde)["recommendations.v1"]
    data = serde.encode("recommendations.v1", record)
    assert data[0] == 0 and len(data) > 5
    assert serde.decode("recommendations.v1", data) == record
    # The reader detects the format from the first byte: single-object payloads still decode.
    assert serde.decode("recommendations.v1", AvroSerde().encode("recommendations.v1", record)) == record


def test_records_written_with_an_older_schema_version_still_decode(tmp_path):
    (tmp_path / "history" / "demo.v1").mkdir(parents=True)
    old = {"type": "record", "name": "Demo", "fields": [{"name": "a", "type": "string", "doc": "a"}]}
    new = {"type": "record", "name": "Demo", "fields": [
        {"name": "a", "type": "string", "doc": "a"},
        {"name": "b", "type": ["null", "long"], "default": None, "doc": "added later"}]}
    (tmp_path / "history" / "demo.v1" / "v1.avsc").write_text(json.dumps(old))
    (tmp_path / "demo.v1.avsc").write_text(json.dumps(new))
    old_serde_dir = tmp_path / "old"
    old_serde_dir.mkdir()
    (old_serde_dir / "demo.v1.avsc").write_text(json.dumps(old))
    written = AvroSerde(old_serde_dir).encode("demo.v1", {"a": "x"})
    assert AvroSerde(tmp_path).decode("demo.v1", written) == {"a": "x", "b": None}


def test_shipped_schemas_are_full_transitive_compatible_with_their_history():
    from lineguard.avro import default_schemas_dir

    problems = {topic: p for topic, p in check_history(default_schemas_dir()).items() if p}
    assert problems == {}


BASE = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}


@pytest.mark.parametrize(("new", "compatible"), [
    ({**BASE, "fields": [*BASE["fields"], {"name": "b", "type": ["null", "int"], "default": None}]}, True),
    ({**BASE, "fields": [*BASE["fields"], {"name": "b", "type": "int"}]}, False),  # no default
    ({**BASE, "fields": []}, False),  # removed a field without default
    ({**BASE, "fields": [{"name": "a", "type": "int"}]}, False),  # type change
    ({**BASE, "fields": [{"name": "a", "type": ["null", "string"], "default": None}]}, False),  # old can't read null
])
def test_compatibility_rules(new, compatible):
    assert (full_compatibility(new, BASE) == []) is compatible


def test_promotions_and_enums():
    assert can_read("long", "int") == []
    assert can_read("int", "long") != []
    enum_old = {"type": "enum", "name": "E", "symbols": ["A", "B"]}
    enum_new = {"type": "enum", "name": "E", "symbols": ["A"]}
    assert can_read(enum_new, enum_old) != []
    assert can_read({**enum_new, "default": "A"}, enum_old) == []


def test_check_history_flags_an_incompatible_change(tmp_path):
    (tmp_path / "history" / "t.v1").mkdir(parents=True)
    (tmp_path / "history" / "t.v1" / "v1.avsc").write_text(json.dumps(BASE))
    (tmp_path / "t.v1.avsc").write_text(json.dumps({**BASE, "fields": [{"name": "a", "type": "int"}]}))
    assert check_history(tmp_path)["t.v1"]
