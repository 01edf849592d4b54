"""`lineguard-train`: the learning loop's stages as commands (a Kubernetes Job or CronJob runs the same).

    lineguard-train prepare        documents + votes -> train/test JSONL (Bedrock and SageMaker) + data card
    lineguard-train finetune       a Bedrock customization job or a SageMaker training job on the dataset
    lineguard-train import         Bedrock Custom Model Import of the tuned weights -> a registry version
    lineguard-train evaluate       a model alias over the test split -> JSON + Markdown report
    lineguard-train promote        candidate -> production, only when it beats production with no safety violation
    lineguard-train rollback       production -> the previous production version
    lineguard-train registry       print the registry (versions, aliases)
Settings come from LINEGUARD_TRAINER_* environment variables; flags override them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from lineguard.plant import default_plant_path, load_plant
from services.trainer.settings import TrainerSettings


def _history_source(spec: str, settings: TrainerSettings):  # type: ignore[no-untyped-def]
    from services.trainer import history

    if spec in ("", "none"):
        return None
    if spec == "topics":
        return lambda: history.read_topics(settings)
    folder = Path(spec)
    return lambda: (history.read_jsonl(folder / "recommendations.jsonl") if (folder / "recommendations.jsonl")
                    .exists() else [], history.read_jsonl(folder / "feedback.jsonl")
                    if (folder / "feedback.jsonl").exists() else [])


def cmd_prepare(args: argparse.Namespace, settings: TrainerSettings) -> int:
    from services.trainer.generate import make_generator
    from services.trainer.pipeline import Prepare, PrepareOptions

    docs = str(args.docs or settings.trainer_docs)
    if docs.startswith("s3://"):
        from services.trainer.extract import download_s3_prefix

        docs = str(download_s3_prefix(docs, Path(tempfile.mkdtemp(prefix="lineguard-docs-"))))
    options = PrepareOptions(Path(docs), Path(args.out or settings.trainer_out),
                             args.generator or settings.trainer_generator, args.per_section, args.test_share,
                             history=_history_source(args.history or settings.trainer_history, settings))
    plant = load_plant(settings.plant_file or default_plant_path())
    result = Prepare(options, plant, lambda: make_generator(options.generator_name,
                                                              settings.advisor_model_aliases)).run()
    card = result.card
    print(json.dumps({"out": str(result.out), "dataset_id": card["dataset_id"], "ran": result.ran,
                      "train": card["train"]["examples"], "test": card["test"]["examples"],
                      "dropped": card["dropped_by_reason"], "skipped": len(card["files_skipped"]),
                      "review": card["review_items"]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineguard-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="build the dataset")
    p.add_argument("--docs", help="documents folder or s3:// prefix")
    p.add_argument("--out", help="output folder")
    p.add_argument("--generator", help="scripted or an advisor model alias")
    p.add_argument("--history", help="none, topics, or a folder with recommendations.jsonl and feedback.jsonl")
    p.add_argument("--per-section", type=int, default=2)
    p.add_argument("--test-share", type=float, default=0.25)
    p.set_defaults(func=cmd_prepare)
    for extra in EXTRA_COMMANDS:
        extra(sub)
    return parser


EXTRA_COMMANDS: list[Any] = []  # registry, jobs and evaluation commands register themselves below


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = TrainerSettings.from_env()
    try:
        return int(args.func(args, settings))
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"lineguard-train {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
