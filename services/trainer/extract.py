"""Extract: every document of a folder (or S3 prefix, copied down first) into sections with doc id, section, page.

The parsing is the advisor's (services/advisor/retrieval.py), so the trainer and the advisor see the same
sections and a citation valid for one is valid for the other. Unlike the advisor, which only logs an unreadable
manual, the extract stage reports every file it skipped and why (the data card lists them); nothing here raises.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.advisor.retrieval import Section, parse_csv, parse_markdown, parse_pdf, parse_text

SUPPORTED = (".md", ".txt", ".csv", ".pdf")


@dataclass(frozen=True)
class SourceSection:
    doc_id: str
    section: str
    title: str
    text: str
    path: str
    page: int | None  # 1-based page of the section's heading (PDF only)
    kind: str  # md | txt | csv | pdf

    @property
    def key(self) -> str:
        """The citation form the advisor uses (`<doc id>#<section>`), also the leakage group of its examples."""
        return f"{self.doc_id}#{self.section}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceSection:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def _pdf_pages(data: bytes, sections: list[Section]) -> dict[str, int]:
    """section heading -> the first page whose text holds it."""
    from pypdf import PdfReader

    pages = [page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages]
    found: dict[str, int] = {}
    for section in sections:
        for number, text in enumerate(pages, start=1):
            if section.section in text:
                found[section.section] = number
                break
    return found


def _looks_binary(data: bytes) -> bool:
    return b"\x00" in data[:4096]


def extract_file(path: Path) -> tuple[list[SourceSection], Skipped | None]:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        return [], Skipped(str(path), f"unsupported file type {suffix or '(none)'}")
    try:
        data = path.read_bytes()
        if not data.strip():
            return [], Skipped(str(path), "empty file")
        if suffix != ".pdf" and _looks_binary(data):
            return [], Skipped(str(path), "binary content in a text document")
        pages: dict[str, int] = {}
        if suffix == ".pdf":
            sections = parse_pdf(data, str(path))
            pages = _pdf_pages(data, sections)
        else:
            text = data.decode("utf-8")
            parse = {".md": parse_markdown, ".txt": parse_text, ".csv": parse_csv}[suffix]
            sections = parse(text, str(path))
    except Exception as exc:  # noqa: BLE001 - one bad document is reported, never fatal
        return [], Skipped(str(path), f"{type(exc).__name__}: {str(exc)[:200]}")
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        return [], Skipped(str(path), "no sections with text")
    return [
        SourceSection(s.doc_id, s.section, s.title, s.text, s.path, pages.get(s.section), suffix[1:])
        for s in sections
    ], None


def extract_folder(folder: str | Path) -> tuple[list[SourceSection], list[Skipped]]:
    folder = Path(folder)
    if not folder.is_dir():
        return [], [Skipped(str(folder), "not a folder")]
    sections: list[SourceSection] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".py":  # the docs folder holds its PDF's generator script; it is not a document
            continue
        found, problem = extract_file(path)
        if problem:
            skipped.append(problem)
        for section in found:
            if section.key in seen:  # two files claiming one doc id and section: the first one wins
                skipped.append(Skipped(section.path, f"duplicate section {section.key}"))
                continue
            seen.add(section.key)
            sections.append(section)
    return sections, skipped


def download_s3_prefix(uri: str, target: Path, client: Any | None = None) -> Path:
    """s3://bucket/prefix/ -> a local copy under `target` (the stages then read a folder)."""
    if client is None:
        import boto3

        client = boto3.client("s3")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    target.mkdir(parents=True, exist_ok=True)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            name = item["Key"][len(prefix) :].lstrip("/")
            if not name or name.endswith("/"):
                continue
            out = target / name
            out.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(out))
    return target
