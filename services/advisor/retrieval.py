"""SOPs and manuals: loading (Markdown, text, CSV, PDF) into sections, and a BM25 retriever over them.

Conventions for the documents (examples/cookie-line/docs/):
- Markdown: `# <DOC-ID> <title>` on the first heading, sections at `## ` headings.
- Text: the doc id on the first line, `TITLE: ...`, sections at numbered upper-case headings (`3. CORRECTIVE ...`).
- CSV: the doc id is the file name; every row is a section, its id in the `section` column.
- PDF: the doc id and title in the document's Title (`<DOC-ID> <title>`), sections at numbered headings.
A file that cannot be read is skipped with a warning, never fatal: the advisor must start without its manuals.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lineguard.logs import event, get_logger

log = get_logger(__name__)

DOC_ID = re.compile(r"^[A-Z]{2,}(?:-[A-Z0-9]+)+$")
_TOKEN = re.compile(r"[a-z0-9]+")
_STOP_WORDS = """a an and are as at be by for from in into is it its of on or than that the their then there these
this to was were when which while will with without do does not no so if such also each per"""
_STOP = frozenset(_STOP_WORDS.split())


@dataclass(frozen=True)
class Section:
    doc_id: str
    section: str
    title: str  # the document's title
    text: str
    path: str

    @property
    def ref(self) -> dict[str, str]:
        return {"doc_id": self.doc_id, "section": self.section, "title": self.title}


@dataclass(frozen=True)
class Hit:
    section: Section
    score: float


def tokenize(text: str) -> list[str]:
    out = []
    for token in _TOKEN.findall(text.lower()):
        if token in _STOP:
            continue
        if len(token) > 4 and token.endswith("s") and not token.endswith("ss"):
            token = token[:-1]  # a light plural strip: cookies -> cookie, zones -> zone
        out.append(token)
    return out


def _split_id_title(heading: str, fallback_id: str) -> tuple[str, str]:
    first, _, rest = heading.strip().partition(" ")
    if DOC_ID.match(first):
        return first, rest.strip() or first
    return fallback_id, heading.strip()


def parse_markdown(text: str, path: str) -> list[Section]:
    doc_id, title = Path(path).stem, Path(path).stem
    sections: list[Section] = []
    current, body = "", []
    for line in text.splitlines():
        if line.startswith("# ") and not sections and not current:
            doc_id, title = _split_id_title(line[2:], Path(path).stem)
            continue
        if line.startswith("## "):
            if current:
                sections.append(Section(doc_id, current, title, "\n".join(body).strip(), path))
            current, body = line[3:].strip(), []
            continue
        body.append(line)
    if current or "".join(body).strip():
        sections.append(Section(doc_id, current or "1", title, "\n".join(body).strip(), path))
    return sections


_NUMBERED = re.compile(r"^(\d+)\.\s+(.+)$")


def _numbered_sections(lines: list[str], doc_id: str, title: str, path: str, upper_only: bool) -> list[Section]:
    sections: list[Section] = []
    current, body = "", []
    intro: list[str] = []
    for line in lines:
        match = _NUMBERED.match(line.strip())
        heading = match.group(2) if match else ""
        if match and (not upper_only or heading.upper() == heading) and len(heading) < 70 and not heading.endswith("."):
            if current:
                sections.append(Section(doc_id, current, title, " ".join(body).strip(), path))
            current, body = line.strip(), []
            continue
        (body if current else intro).append(line.strip())
    if current:
        sections.append(Section(doc_id, current, title, " ".join(body).strip(), path))
    if " ".join(intro).strip():
        sections.insert(0, Section(doc_id, "0. Scope", title, " ".join(intro).strip(), path))
    return sections


def parse_text(text: str, path: str) -> list[Section]:
    lines = text.splitlines()
    doc_id, title = Path(path).stem, Path(path).stem
    header_end = 0
    for i, line in enumerate(lines[:8]):
        stripped = line.strip()
        if i == 0 and DOC_ID.match(stripped):
            doc_id = stripped
            header_end = 1
        elif stripped.upper().startswith("TITLE:"):
            title = stripped.split(":", 1)[1].strip()
            header_end = i + 1
    return _numbered_sections(lines[header_end:], doc_id, title, path, upper_only=True)


def parse_csv(text: str, path: str) -> list[Section]:
    doc_id = Path(path).stem
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "section" not in reader.fieldnames:
        raise ValueError(f"{path}: a CSV document needs a 'section' column (has: {reader.fieldnames})")
    title = "Line 1 troubleshooting matrix" if doc_id.startswith("TRB") else doc_id
    sections = []
    for row in reader:
        body = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in row.items() if k != "section" and v)
        sections.append(Section(doc_id, row["section"], title, body, path))
    return sections


def parse_pdf(data: bytes, path: str) -> list[Section]:
    from pypdf import PdfReader  # imported here: only PDFs need it

    reader = PdfReader(io.BytesIO(data))
    text = "\n".join(page.extract_text() or "" for page in reader.pages)
    heading = (reader.metadata.title if reader.metadata and reader.metadata.title else "") or ""
    doc_id, title = _split_id_title(heading, Path(path).stem) if heading else (Path(path).stem, Path(path).stem)
    lines = text.splitlines()
    if lines and lines[0].strip() == heading.strip():
        lines = lines[1:]
    return _numbered_sections(lines, doc_id, title, path, upper_only=False)


def load_documents(folder: str | Path) -> list[Section]:
    folder = Path(folder)
    sections: list[Section] = []
    if not folder.is_dir():
        event(log, "documents_missing", level=logging.WARNING, folder=str(folder))
        return sections
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        try:
            if suffix == ".md":
                sections += parse_markdown(path.read_text(encoding="utf-8"), str(path))
            elif suffix == ".txt":
                sections += parse_text(path.read_text(encoding="utf-8"), str(path))
            elif suffix == ".csv":
                sections += parse_csv(path.read_text(encoding="utf-8"), str(path))
            elif suffix == ".pdf":
                sections += parse_pdf(path.read_bytes(), str(path))
        except Exception as exc:  # noqa: BLE001 - one bad manual must not stop the advisor
            event(log, "document_unreadable", level=logging.WARNING, path=str(path), error=str(exc))
    return sections


class Retriever:
    """Okapi BM25 over document sections (title and section heading count twice)."""

    def __init__(self, sections: list[Section], k1: float = 1.4, b: float = 0.75) -> None:
        self.sections = sections
        self.k1, self.b = k1, b
        self._docs: list[Counter[str]] = []
        self._lengths: list[int] = []
        document_frequency: Counter[str] = Counter()
        for section in sections:
            tokens = tokenize(f"{section.title} {section.section} " * 2 + section.text)
            counts = Counter(tokens)
            self._docs.append(counts)
            self._lengths.append(len(tokens))
            document_frequency.update(counts.keys())
        n = max(1, len(sections))
        self._avg_length = sum(self._lengths) / n if sections else 1.0
        self._idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5)) for t, df in document_frequency.items()}

    @classmethod
    def from_folder(cls, folder: str | Path) -> Retriever:
        return cls(load_documents(folder))

    def search(self, query: str, limit: int = 4, min_score: float = 0.5) -> list[Hit]:
        terms = tokenize(query)
        if not terms or not self.sections:
            return []
        scores: list[tuple[float, int]] = []
        for index, counts in enumerate(self._docs):
            score = 0.0
            norm = self.k1 * (1 - self.b + self.b * self._lengths[index] / self._avg_length)
            for term in terms:
                tf = counts.get(term)
                if tf:
                    score += self._idf[term] * tf * (self.k1 + 1) / (tf + norm)
            if score >= min_score:
                scores.append((score, index))
        scores.sort(key=lambda item: (-item[0], item[1]))
        return [Hit(self.sections[i], round(s, 4)) for s, i in scores[:limit]]

    def documents(self) -> dict[str, str]:
        """doc id -> title."""
        return {s.doc_id: s.title for s in self.sections}
