"""The model registry: versions (dataset, metrics, artifact, the jobs that made them) and aliases.

One JSON document, in a file or an S3 object, read by the trainer (which changes it) and by the advisor (which
follows its `production` alias without a restart). Aliases: `production` (what the advisor uses) and
`candidate` (the last model imported or registered). Every change appends an audit entry next to the document
(`<file>.audit.jsonl`, or one object per entry under `<key>.audit/` on S3, which has no append).

`promote` moves the candidate to production only when its metrics beat production's on the held-out test split
(and on the scenario suite when both have run it) with zero safety violations; `rollback` restores the version
production had before, in one command. Both keep the list of past production versions.

    {"versions": {"v3": {"version": "v3", "provider": "bedrock", "model_id": "arn:...:imported-model/abc",
                         "options": {"mode": "invoke"}, "dataset_id": "ds-...", "artifact": "s3://...",
                         "metrics": {"test": {...}, "scenarios": {...}}, "jobs": [...], "created_at": ...}},
     "aliases": {"production": "v2", "candidate": "v3"}, "production_history": ["v1"]}
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SCORED = (
    "valid_share",
    "category_accuracy",
    "root_cause_accuracy",
    "action_accuracy",
    "direction_accuracy",
    "citation_accuracy",
)


class RegistryError(ValueError):
    """A registry operation that must not happen (unknown version, a worse candidate, nothing to roll back)."""


class Store(Protocol):
    def load(self) -> tuple[dict[str, Any], str | None]: ...  # (document, version tag for change detection)
    def save(self, document: dict[str, Any]) -> None: ...
    def audit(self, entry: dict[str, Any]) -> None: ...
    def audit_entries(self) -> list[dict[str, Any]]: ...


def _empty() -> dict[str, Any]:
    return {"versions": {}, "aliases": {}, "production_history": []}


class FileStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.audit_path = self.path.with_name(self.path.name + ".audit.jsonl")

    def load(self) -> tuple[dict[str, Any], str | None]:
        try:
            stat = self.path.stat()
            return json.loads(self.path.read_text(encoding="utf-8")), f"{stat.st_mtime_ns}-{stat.st_size}"
        except FileNotFoundError:
            return _empty(), None

    def save(self, document: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
        os.replace(tmp, self.path)  # readers see the old document or the new one, never half of one

    def audit(self, entry: dict[str, Any]) -> None:
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        with self.audit_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")

    def audit_entries(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]


class S3Store:
    def __init__(self, uri: str, client: Any | None = None) -> None:
        self.bucket, _, self.key = uri.removeprefix("s3://").partition("/")
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.client = client

    def load(self) -> tuple[dict[str, Any], str | None]:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return _empty(), None
        return json.loads(reply["Body"].read()), reply.get("ETag")

    def save(self, document: dict[str, Any]) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key,
            ContentType="application/json",
            Body=json.dumps(document, indent=2, sort_keys=True).encode(),
        )

    def audit(self, entry: dict[str, Any]) -> None:
        name = f"{self.key}.audit/{entry['at_ms']:015d}-{entry['action']}-{os.urandom(3).hex()}.json"
        self.client.put_object(Bucket=self.bucket, Key=name, Body=json.dumps(entry, sort_keys=True).encode())

    def audit_entries(self) -> list[dict[str, Any]]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.key}.audit/"
        ):
            for item in page.get("Contents", []):
                out.append(
                    json.loads(self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read())
                )
        return sorted(out, key=lambda e: e["at_ms"])


def open_store(location: str, s3_client: Any | None = None) -> Store:
    return S3Store(location, s3_client) if location.startswith("s3://") else FileStore(location)


def score(metrics: dict[str, Any] | None) -> float | None:
    """One number to compare models on a split: the mean of the accuracies it has (None without metrics)."""
    if not metrics:
        return None
    values = [float(metrics[k]) for k in SCORED if isinstance(metrics.get(k), int | float)]
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]


def compare(candidate: dict[str, Any], production: dict[str, Any] | None) -> Decision:
    """Whether the candidate may replace production, and why (or why not)."""
    reasons: list[str] = []
    metrics = candidate.get("metrics") or {}
    test = metrics.get("test")
    if not test:
        return Decision(False, ["the candidate has no evaluation on the test split"])
    for split in ("test", "scenarios"):
        violations = (metrics.get(split) or {}).get("safety_violations", 0)
        if violations:
            reasons.append(f"{violations} safety violation(s) on the {split} split")
    if production is not None:
        theirs = production.get("metrics") or {}
        mine_score, their_score = score(test), score(theirs.get("test"))
        if their_score is not None and (mine_score is None or mine_score <= their_score):
            reasons.append(f"test score {mine_score} does not beat production's {their_score:.4f}")
        if metrics.get("scenarios") and theirs.get("scenarios"):
            mine_s, their_s = score(metrics["scenarios"]), score(theirs["scenarios"])
            if their_s is not None and (mine_s is None or mine_s < their_s):
                reasons.append(f"scenario score {mine_s} is below production's {their_s:.4f}")
    return Decision(not reasons, reasons or ["beats production" if production else "no production yet"])


class Registry:
    def __init__(self, store: Store, actor: str = "lineguard-train") -> None:
        self.store = store
        self.actor = actor

    def document(self) -> dict[str, Any]:
        return self.store.load()[0]

    def _change(self, action: str, document: dict[str, Any], **details: Any) -> None:
        self.store.save(document)
        self.store.audit(
            {
                "at_ms": int(time.time() * 1000),
                "action": action,
                "actor": self.actor,
                "aliases": dict(document["aliases"]),
                **details,
            }
        )

    def version(self, name: str) -> dict[str, Any]:
        found = self.document()["versions"].get(name)
        if found is None:
            raise RegistryError(f"no model version {name!r}")
        return found

    def resolve(self, alias: str) -> dict[str, Any] | None:
        document = self.document()
        name = document["aliases"].get(alias)
        return document["versions"].get(name) if name else None

    def register(
        self,
        version: str,
        provider: str,
        model_id: str,
        *,
        dataset_id: str | None = None,
        artifact: str | None = None,
        options: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        jobs: list[dict[str, Any]] | None = None,
        alias: str | None = "candidate",
    ) -> dict[str, Any]:
        document = self.document()
        if version in document["versions"]:
            raise RegistryError(f"model version {version!r} exists already (versions are immutable)")
        entry = {
            "version": version,
            "provider": provider,
            "model_id": model_id,
            "options": options or {},
            "dataset_id": dataset_id,
            "artifact": artifact,
            "metrics": metrics or {},
            "jobs": jobs or [],
            "created_at": int(time.time() * 1000),
        }
        document["versions"][version] = entry
        if alias:
            document["aliases"][alias] = version
        self._change("register", document, version=version, model_id=model_id, dataset_id=dataset_id)
        return entry

    def record_metrics(self, version: str, split: str, metrics: dict[str, Any]) -> None:
        document = self.document()
        if version not in document["versions"]:
            raise RegistryError(f"no model version {version!r}")
        document["versions"][version].setdefault("metrics", {})[split] = metrics
        self._change("metrics", document, version=version, split=split, score=score(metrics))

    def set_alias(self, alias: str, version: str) -> None:
        document = self.document()
        if version not in document["versions"]:
            raise RegistryError(f"no model version {version!r}")
        if alias == "production":
            raise RegistryError("production moves only through promote or rollback")
        document["aliases"][alias] = version
        self._change("alias", document, alias=alias, version=version)

    def promote(self, candidate_alias: str = "candidate", *, force: bool = False) -> Decision:
        document = self.document()
        name = document["aliases"].get(candidate_alias)
        if not name:
            raise RegistryError(f"no {candidate_alias!r} alias to promote")
        current = document["aliases"].get("production")
        if name == current:
            return Decision(False, [f"{name} is production already"])
        decision = compare(document["versions"][name], document["versions"].get(current) if current else None)
        if not decision.promote and not force:
            self.store.audit(
                {
                    "at_ms": int(time.time() * 1000),
                    "action": "promote_refused",
                    "actor": self.actor,
                    "version": name,
                    "production": current,
                    "reasons": decision.reasons,
                }
            )
            return decision
        if current:
            document["production_history"].append(current)
        document["aliases"]["production"] = name
        self._change(
            "promote",
            document,
            version=name,
            previous=current,
            reasons=decision.reasons,
            forced=force and not decision.promote,
        )
        return Decision(True, decision.reasons)

    def rollback(self) -> str:
        document = self.document()
        if not document["production_history"]:
            raise RegistryError("nothing to roll back to: production has no previous version")
        current = document["aliases"].get("production")
        previous = document["production_history"].pop()
        document["aliases"]["production"] = previous
        self._change("rollback", document, version=previous, previous=current)
        return previous


def alias_spec(entry: dict[str, Any]) -> dict[str, Any]:
    """A registry version as an entry of the advisor's model alias table."""
    return {
        "provider": entry["provider"],
        "model_id": entry["model_id"],
        "version": entry["version"],
        **(entry.get("options") or {}),
    }


class RegistryFollower:
    """What a service keeps to follow one alias: re-reads the registry when asked (once per window) and says
    whether the alias now points somewhere else. A registry that cannot be read keeps the last answer."""

    def __init__(self, store: Store, alias: str = "production") -> None:
        self.store = store
        self.alias = alias
        self.tag: str | None = None
        self.current: dict[str, Any] | None = None

    def check(self) -> dict[str, Any] | None:
        """The alias's alias-table entry when it changed since the last check; None when it did not."""
        try:
            document, tag = self.store.load()
        except Exception:  # noqa: BLE001 - an unreachable registry must not stop the advisor
            return None
        if tag is not None and tag == self.tag:
            return None
        self.tag = tag
        name = document.get("aliases", {}).get(self.alias)
        entry = document.get("versions", {}).get(name) if name else None
        spec = alias_spec(entry) if entry else None
        if spec == self.current:
            return None
        self.current = spec
        return spec
