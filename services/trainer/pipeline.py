"""`prepare`: extract -> generate -> validate -> history -> split -> publish, each stage idempotent and resumable.

Every stage writes its output under the work folder and a marker `stages/<stage>.json` with the fingerprint of
its inputs (the previous stage's output and the options that matter). A stage whose fingerprint matches its
marker is skipped, so a rerun after a crash resumes where it stopped, and a rerun with nothing new costs nothing.
The generate stage also keeps one file per section (keyed by the section's text and the generator), so an
interrupted run over a slow or paid model never asks twice for a section it already has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineguard.logs import event, get_logger
from lineguard.plant import PlantModel
from services.advisor.models import ModelProvider
from services.advisor.retrieval import Retriever
from services.trainer import dataset
from services.trainer.advisor_exemplars import load_windows, record_exemplars, window_exemplars
from services.trainer.extract import SourceSection, extract_folder
from services.trainer.generate import generate_for_section
from services.trainer.history import history_examples
from services.trainer.validate import check_example, reason_class

log = get_logger(__name__)
STAGES = ("extract", "generate", "validate", "history", "split", "publish")


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    """Write-then-rename: a crash never leaves a half-written stage output that a rerun would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class PrepareOptions:
    docs: Path
    out: Path
    generator_name: str = "scripted"
    per_section: int = 2
    test_share: float = 0.25
    seed: str = "lineguard"
    history: Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]] | None = None  # (recs, feedback)
    windows: Path | None = None  # recorded windows -> exemplars for the advisor's own prompts


@dataclass
class PrepareResult:
    out: Path
    card: dict[str, Any]
    ran: list[str] = field(default_factory=list)  # stages that did work (the rest were up to date)


class Prepare:
    def __init__(
        self, options: PrepareOptions, plant: PlantModel, generator: Callable[[], ModelProvider]
    ) -> None:
        self.o = options
        self.plant = plant
        self._generator_factory = generator
        self._generator: ModelProvider | None = None
        self.ran: list[str] = []

    # --- the stage machinery --------------------------------------------------------------------------------

    def _stage(self, name: str, inputs: Any, run: Callable[[], Any]) -> Any:
        marker = self.o.out / "stages" / f"{name}.json"
        output = self.o.out / "work" / f"{name}.json"
        fingerprint = digest(inputs)
        if marker.exists() and output.exists() and read_json(marker).get("fingerprint") == fingerprint:
            return read_json(output)
        result = run()
        write_atomic(output, json.dumps(result, sort_keys=True, ensure_ascii=False))
        if isinstance(result, dict) and result.get("errors"):
            marker.unlink(
                missing_ok=True
            )  # incomplete (a model call failed): the next run retries what failed
        else:
            write_atomic(marker, json.dumps({"fingerprint": fingerprint, "output": digest(result)}))
        self.ran.append(name)
        event(log, "stage_done", stage=name, fingerprint=fingerprint)
        return result

    def generator(self) -> ModelProvider:
        if self._generator is None:
            self._generator = self._generator_factory()
        return self._generator

    # --- the stages ---------------------------------------------------------------------------------------

    def run(self) -> PrepareResult:
        files = (
            sorted(
                (str(p.relative_to(self.o.docs)), p.stat().st_size, p.stat().st_mtime_ns)
                for p in self.o.docs.rglob("*")
                if p.is_file()
            )
            if self.o.docs.is_dir()
            else []
        )
        extracted = self._stage("extract", {"docs": str(self.o.docs), "files": files}, self._extract)
        sections = {
            s["doc_id"] + "#" + s["section"]: SourceSection.from_dict(s) for s in extracted["sections"]
        }
        generated = self._stage(
            "generate",
            {
                "sections": digest(extracted["sections"]),
                "generator": self.o.generator_name,
                "n": self.o.per_section,
            },
            lambda: self._generate(list(sections.values())),
        )
        validated = self._stage(
            "validate",
            {"candidates": digest(generated), "limits": self._limits()},
            lambda: self._validate(generated["candidates"], sections),
        )
        recs, feedback = self.o.history() if self.o.history else ([], [])
        recs = self._archive(recs, feedback)
        history = self._stage(
            "history",
            {
                "recs": digest(recs),
                "feedback": digest(feedback),
                "sections": digest(sorted(sections)),
                "limits": self._limits(),
            },
            lambda: self._history(recs, feedback, sections),
        )
        window_files = (sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                               for p in self.o.windows.glob("*.json")) if self.o.windows else [])
        windows = self._stage(
            "windows",
            {"files": window_files, "docs": digest(extracted["sections"]), "limits": self._limits()},
            self._windows,
        )
        examples = validated["kept"] + history["examples"]
        splits = self._stage(
            "split",
            {"examples": digest(examples), "share": self.o.test_share, "seed": self.o.seed},
            lambda: dict(
                zip(("train", "test"), dataset.split(examples, self.o.test_share, self.o.seed), strict=True)
            ),
        )
        card = self._stage(
            "publish",
            {
                "splits": digest(splits),
                "history": digest(history),
                "extracted": digest(extracted),
                "validated": digest(validated),
                "windows": digest(windows),
            },
            lambda: self._publish(extracted, generated, validated, history, splits, windows),
        )
        return PrepareResult(self.o.out, card, list(self.ran))

    def _limits(self) -> str:
        """The plant's setpoint limits: a change of limits revalidates every example."""
        return digest(
            sorted(
                (m.line_id, m.id, name, sp.min, sp.max, sp.max_step, sp.default)
                for m in self.plant.machines()
                for name, sp in m.setpoints.items()
            )
        )

    def _archive(self, recs: list[dict[str, Any]], feedback: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Voted recommendations are kept here: recommendations.v1 keeps 30 days, feedback.v1 forever, so a vote
        must not lose its recommendation when the topic's retention deletes it."""
        path = self.o.out / "history" / "recommendations.json"
        known = {r["id"]: r for r in (read_json(path) if path.exists() else [])}
        known.update({r["id"]: r for r in recs if isinstance(r, dict) and r.get("id")})
        voted = {str(f.get("recommendation_id")) for f in feedback if isinstance(f, dict)}
        kept = [known[i] for i in sorted(known) if i in voted]
        if kept or path.exists():
            write_atomic(path, json.dumps(kept, sort_keys=True, ensure_ascii=False, default=str))
        return kept

    def _extract(self) -> dict[str, Any]:
        sections, skipped = extract_folder(self.o.docs)
        for item in skipped:
            event(log, "document_skipped", level=logging.WARNING, path=item.path, reason=item.reason)
        return {
            "sections": [s.to_dict() for s in sections],
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        }

    def _generate(self, sections: list[SourceSection]) -> dict[str, Any]:
        cache = self.o.out / "work" / "generate"
        candidates: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for section in sections:
            path = cache / f"{digest([section.to_dict(), self.o.generator_name, self.o.per_section])}.json"
            if path.exists():
                found = read_json(path)
            else:
                examples, error = generate_for_section(self.generator(), section, self.o.per_section)
                found = {"examples": examples, "error": error}
                if error is None:  # a failed call is retried by the next run, never cached
                    write_atomic(path, json.dumps(found, sort_keys=True, ensure_ascii=False))
            candidates += found["examples"]
            if found["error"]:
                errors.append({"section": section.key, "error": found["error"]})
        return {"candidates": candidates, "errors": errors}

    def _validate(
        self, candidates: list[dict[str, Any]], sections: dict[str, SourceSection]
    ) -> dict[str, Any]:
        kept, dropped = [], []
        for example in candidates:
            errors = check_example(example, sections, self.plant)
            if errors:
                dropped.append(
                    {
                        "id": example.get("id"),
                        "source": "sop",
                        "group": example.get("group"),
                        "reason": reason_class(errors[0]),
                        "reasons": errors,
                    }
                )
            else:
                kept.append(example)
        return {"kept": kept, "dropped": dropped}

    def _history(
        self, recs: list[dict[str, Any]], feedback: list[dict[str, Any]], sections: dict[str, SourceSection]
    ) -> dict[str, Any]:
        examples, review, dropped = history_examples(recs, feedback)
        kept: list[dict[str, Any]] = []
        for example in examples:
            # the operators' vote stands in for textual support; citations, prose and safety are still checked
            errors = check_example(example, sections, self.plant, check_support=False)
            if errors:
                dropped.append(
                    {
                        "id": example["id"],
                        "source": "history",
                        "group": example["group"],
                        "reason": reason_class(errors[0]),
                        "reasons": errors,
                    }
                )
            else:
                kept.append(example)
        by_id = {r.get("id"): r for r in recs if isinstance(r, dict)}
        # an upvoted recommendation also teaches the advisor's own prompt (its brief -> its published words)
        advisor = record_exemplars([by_id[e["recommendation_id"]] for e in kept if e["recommendation_id"] in by_id])
        return {"examples": kept, "review": review, "dropped": dropped, "advisor_exemplars": advisor}

    def _windows(self) -> dict[str, Any]:
        if not self.o.windows:
            return {"exemplars": [], "dropped": []}
        retriever = Retriever.from_folder(self.o.docs)
        kept, dropped = window_exemplars(load_windows(self.o.windows), self.plant, retriever)
        return {"exemplars": kept, "dropped": dropped}

    def _publish(
        self,
        extracted: dict[str, Any],
        generated: dict[str, Any],
        validated: dict[str, Any],
        history: dict[str, Any],
        splits: dict[str, Any],
        windows: dict[str, Any],
    ) -> dict[str, Any]:
        sections = {
            s["doc_id"] + "#" + s["section"]: SourceSection.from_dict(s) for s in extracted["sections"]
        }
        train = [dataset.with_context(e, sections) for e in splits["train"]]
        test = [dataset.with_context(e, sections) for e in splits["test"]]
        files = {
            "train.jsonl": dataset.dumps_lines([dataset.bedrock_record(e) for e in train]),
            "test.jsonl": dataset.dumps_lines([dataset.bedrock_record(e) for e in test]),
            "sagemaker/train.jsonl": dataset.dumps_lines([dataset.sagemaker_record(e) for e in train]),
            "sagemaker/test.jsonl": dataset.dumps_lines([dataset.sagemaker_record(e) for e in test]),
            # the examples with their ids, groups and sources: what evaluate and the exemplar prompts read
            "examples/train.jsonl": dataset.dumps_lines(train),
            "examples/test.jsonl": dataset.dumps_lines(test),
            "review.jsonl": dataset.dumps_lines(history["review"]),
            # the learning step for the advisor's window prompts (alias option "exemplars")
            "advisor_exemplars.jsonl": dataset.dumps_lines(
                windows["exemplars"] + history.get("advisor_exemplars", [])),
        }
        dataset_id = "ds-" + digest([files["train.jsonl"], files["test.jsonl"]])[:12]
        candidates = (
            generated["candidates"]
            + history["examples"]
            + [d for d in history["dropped"] if d.get("source") == "history"]
        )
        card = dataset.data_card(
            sections=len(extracted["sections"]),
            skipped=extracted["skipped"],
            candidates=candidates,
            dropped=validated["dropped"] + history["dropped"],
            train=train,
            test=test,
            review=history["review"],
            generator=self.o.generator_name,
            dataset_id=dataset_id,
            section_errors=generated["errors"],
        )
        card["advisor_exemplars"] = {"windows": len(windows["exemplars"]),
                                     "history": len(history.get("advisor_exemplars", [])),
                                     "dropped": windows["dropped"]}
        for name, text in files.items():
            write_atomic(self.o.out / name, text)
        write_atomic(self.o.out / "data_card.json", json.dumps(card, indent=2, sort_keys=True))
        write_atomic(self.o.out / "data_card.md", dataset.card_markdown(card))
        return card
