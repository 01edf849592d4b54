"""When an SFTP file counts as complete: marker names, and a final line without its newline never ingested."""

from __future__ import annotations

from services.ingest.sftp_poller import is_marker, is_temporary, marker_names, parse_csv, parse_sources


def source():
    return parse_sources([{"name": "plc", "host": "h", "username": "u", "directory": "/in", "device": "pk",
                           "timestamp": {"column": "t"}, "metrics": [{"column": "w", "unit": "g"}]}])[0]


def test_marker_and_temporary_names():
    assert marker_names("batch.csv") == ["batch.csv.done", "batch.csv.ok", "batch.done", "batch.ok"]
    assert is_marker("batch.csv.ok") and is_marker("batch.DONE") and not is_marker("batch.csv")
    assert is_temporary("batch.csv.part") and is_temporary("batch.csv.tmp") and not is_temporary("batch.csv")


def test_a_final_line_without_newline_is_dead_lettered_not_ingested():
    content = b"t,w\n2026-11-29T12:00:00Z,253.53\n2026-11-29T12:01:00Z,25"  # the writer paused mid-value
    parsed = parse_csv(source(), "/in/b.csv", content, "0" * 64, 1, None)
    assert [r.value["value"] for r in parsed.records] == [253.53]
    (letter,) = parsed.dead_letters
    assert letter.payload == b"2026-11-29T12:01:00Z,25" and letter.error_class == "IncompleteRow"
    assert "line 3 has no newline" in letter.reason and letter.position == "2"


def test_complete_files_with_crlf_or_lf_are_taken_whole():
    for newline in (b"\n", b"\r\n"):
        content = newline.join([b"t,w", b"2026-11-29T12:00:00Z,1.5", b"2026-11-29T12:01:00Z,2.5"]) + newline
        parsed = parse_csv(source(), "/in/b.csv", content, "0" * 64, 1, None)
        assert [r.value["value"] for r in parsed.records] == [1.5, 2.5] and not parsed.dead_letters
