"""SOP and manual sections, so a reference in the feed or the chat opens the section it cites."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from services.advisor.retrieval import Section, load_documents


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


class SopLibrary:
    def __init__(self, sections: list[Section]) -> None:
        self.by_doc: dict[str, list[Section]] = {}
        for section in sections:
            self.by_doc.setdefault(section.doc_id, []).append(section)

    @classmethod
    def from_folder(cls, folder: str | Path) -> SopLibrary:
        return cls(load_documents(folder) if Path(folder).is_dir() else [])

    def lookup(self, doc_id: str, section: str | None) -> dict[str, Any] | None:
        sections = self.by_doc.get(doc_id)
        if not sections:
            return None
        chosen = sections[0]
        if section:
            wanted = _norm(section)
            chosen = next((s for s in sections if _norm(s.section) == wanted), None) or next(
                (s for s in sections if wanted and (_norm(s.section).startswith(wanted)
                                                     or wanted.startswith(_norm(s.section)))), chosen)
        return {"doc_id": doc_id, "title": chosen.title, "section": chosen.section, "text": chosen.text,
                "sections": [s.section for s in sections]}
