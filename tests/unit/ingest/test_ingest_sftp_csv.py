"""SFTP source mappings and the CSV parser: types, zones, formats, bad rows with reasons, fuzzed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineguard.avro import AvroSerde
from services.ingest.settings import IngestSettings
from services.ingest.sftp_poller import (
    Ledger,
    SourceConfigError,
    is_temporary,
    load_sources,
    parse_csv,
    parse_sources,
)

SERDE = AvroSerde(None, None, None, "")
EMBEDDED = Path(__file__).resolve().parents[3] / "services" / "ingest" / "sftp-sources.embedded.yaml"


def source(**overrides):
    raw = {"name": "plc", "host": "h", "username": "u", "directory": "/in", "device": "line1-packaging",
           "timestamp": {"column": "when", "format": "%d.%m.%Y %H:%M", "timezone": "Europe/Berlin"},
           "metrics": [{"column": "packs", "type": "int"}, {"column": "weight", "metric": "mean_pack_weight",
                                                            "unit": "g"}, {"column": "ok", "type": "bool"}],
           "delimiter": ";", "decimal_comma": True, **overrides}
    return parse_sources([raw])[0]


def test_the_embedded_sources_file_loads():
    (packaging,) = load_sources(EMBEDDED)
    assert packaging.directory == "/reports" and packaging.metrics[2].metric == "mean_pack_weight"


def test_rows_become_readings_in_the_configured_zone_and_format():
    content = "when;packs;weight;ok\r\n29.11.2026 13:05;30;252,14;ja\r\n29.11.2026 13:10;31;1.251,5;1\r\n"
    parsed = parse_csv(source(), "/in/a.csv", content.encode(), "ab" * 32, 5, "pod")
    assert parsed.rows == 2 and len(parsed.dead_letters) == 1  # "ja" is not a boolean
    assert "row 1: ok: expected a boolean" in parsed.dead_letters[0].reason
    values = {(r.value["metric"], r.value["value"]) for r in parsed.records}
    assert values == {("packs", 31.0), ("mean_pack_weight", 1251.5), ("ok", True)}
    assert {r.value["observed_at"] for r in parsed.records} == {1795954200000}  # 13:10 CET = 12:10Z
    assert parsed.records[0].id == f"sftp:plc:a.csv:{'ab' * 8}:2:packs"


def test_missing_columns_and_undecodable_files_are_dead_lettered_whole():
    parsed = parse_csv(source(), "/in/b.csv", b"when;packs\r\n1;2\r\n", "0" * 64, 5, None)
    assert parsed.records == [] and "missing column(s) ok, weight" in parsed.dead_letters[0].reason
    parsed = parse_csv(source(), "/in/c.csv", b"\xff\xfe\x00bad", "0" * 64, 5, None)
    assert "not utf-8 text" in parsed.dead_letters[0].reason


def test_invalid_source_configs_name_the_problem():
    with pytest.raises(SourceConfigError, match="unknown timezone"):
        source(timestamp={"column": "when", "timezone": "Mars/Olympus"})
    with pytest.raises(SourceConfigError, match="'directory' is required"):
        source(directory="")
    with pytest.raises(SourceConfigError, match="type must be one of"):
        source(metrics=[{"column": "x", "type": "complex"}])


def test_temporary_names_are_skipped():
    assert all(is_temporary(n) for n in (".a.csv.part", "a.csv.part", "a.tmp", "a.csv~", "a.filepart"))
    assert not is_temporary("packaging_line1-B00001.csv")


def test_ledger_survives_a_reload(tmp_path: Path):
    ledger = Ledger(tmp_path / "sub" / "ledger.jsonl")
    ledger.add({"source": "s", "name": "a.csv", "size": 3, "sha256": "x"})
    (tmp_path / "sub" / "ledger.jsonl").write_text((tmp_path / "sub" / "ledger.jsonl").read_text() + "{broken\n")
    again = Ledger(tmp_path / "sub" / "ledger.jsonl")
    assert ("s", "a.csv", 3, "x") in again and len(again.entries) == 1
    assert json.loads((tmp_path / "sub" / "ledger.jsonl").read_text().splitlines()[0])["name"] == "a.csv"


def test_settings_from_the_environment_keep_secrets_out_of_logs():
    settings = IngestSettings.from_env(environ={"LINEGUARD_PUSH_TOKENS": "t1,t2", "LINEGUARD_TTS_SECRET": "s",
                                                "LINEGUARD_MQTT_URL": "mqtt://u:p@broker:1883"})
    assert settings.push_tokens == ["t1", "t2"] and settings.http_port == 8081
    shown = json.dumps(settings.redacted())
    assert "t1" not in shown and "u:p" not in shown and '"s"' not in shown


@settings(max_examples=150, deadline=None)
@given(content=st.one_of(st.binary(max_size=300), st.lists(st.lists(
    st.one_of(st.text(max_size=8), st.sampled_from(["29.11.2026 13:05", "30", "1,5", "true"])), max_size=5),
    max_size=6).map(lambda rows: "\n".join(";".join(r) for r in [["when", "packs", "weight", "ok"], *rows]).encode())))
def test_fuzzed_files_give_valid_readings_or_reasoned_dead_letters(content):
    parsed = parse_csv(source(), "/in/f.csv", content, "0" * 64, 1, None)
    for record in parsed.records:
        SERDE.encode(record.topic, record.value)
    assert all(letter.reason for letter in parsed.dead_letters)
    assert parsed.records or parsed.dead_letters or parsed.rows > 0


def test_ledger_keeps_the_newest_entries_only(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.jsonl", max_entries=3)
    for i in range(5):
        ledger.add({"source": "s", "name": f"{i}.csv", "size": 1, "sha256": "x"})
    assert [e["name"] for e in Ledger(tmp_path / "ledger.jsonl").entries] == ["2.csv", "3.csv", "4.csv"]
    assert ("s", "0.csv", 1, "x") not in ledger and ("s", "4.csv", 1, "x") in ledger
