"""The trainer's settings: environment variables (LINEGUARD_TRAINER_*), as for every service."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lineguard.settings import Settings, env_field


@dataclasses.dataclass(frozen=True)
class TrainerSettings(Settings):
    service_name: str = env_field("trainer", help="Service name in logs and metrics.")
    trainer_docs: Path = env_field(
        Path("examples/cookie-line/docs"),
        env="LINEGUARD_TRAINER_DOCS",
        help="Folder (or s3://bucket/prefix/) with the SOPs and manuals.",
    )
    trainer_out: Path = env_field(
        Path("var/trainer/dataset"),
        env="LINEGUARD_TRAINER_OUT",
        help="Where prepare writes its stages, the JSONL datasets and the data card.",
    )
    trainer_generator: str = env_field(
        "scripted",
        env="LINEGUARD_TRAINER_GENERATOR",
        help="scripted, or an advisor model alias (advisor-local, advisor-bedrock).",
    )
    trainer_history: str = env_field(
        "none",
        env="LINEGUARD_TRAINER_HISTORY",
        help="none, topics (recommendations.v1 + feedback.v1 from the start), or a "
        "folder with recommendations.jsonl and feedback.jsonl (a lake export).",
    )
    trainer_registry: str = env_field(
        "var/trainer/registry.json",
        env="LINEGUARD_TRAINER_REGISTRY",
        help="The model registry: a file path or s3://bucket/key.json.",
    )
    advisor_model_aliases: str | None = env_field(
        # the advisor's own variable: one alias table serves the service and its trainer
        None, env="LINEGUARD_MODEL_ALIASES", help="The advisor's alias table (JSON or a .json file)."
    )
