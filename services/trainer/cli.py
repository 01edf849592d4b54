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
    return lambda: (
        history.read_jsonl(folder / "recommendations.jsonl")
        if (folder / "recommendations.jsonl").exists()
        else [],
        history.read_jsonl(folder / "feedback.jsonl") if (folder / "feedback.jsonl").exists() else [],
    )


def cmd_prepare(args: argparse.Namespace, settings: TrainerSettings) -> int:
    from services.trainer.generate import make_generator
    from services.trainer.pipeline import Prepare, PrepareOptions

    docs = str(args.docs or settings.trainer_docs)
    if docs.startswith("s3://"):
        from services.trainer.extract import download_s3_prefix

        docs = str(download_s3_prefix(docs, Path(tempfile.mkdtemp(prefix="lineguard-docs-"))))
    options = PrepareOptions(
        Path(docs),
        Path(args.out or settings.trainer_out),
        args.generator or settings.trainer_generator,
        args.per_section,
        args.test_share,
        history=_history_source(args.history or settings.trainer_history, settings),
        windows=Path(args.windows) if getattr(args, "windows", None) else None,
    )
    plant = load_plant(settings.plant_file or default_plant_path())
    result = Prepare(
        options, plant, lambda: make_generator(options.generator_name, settings.advisor_model_aliases)
    ).run()
    card = result.card
    print(
        json.dumps(
            {
                "out": str(result.out),
                "dataset_id": card["dataset_id"],
                "ran": result.ran,
                "train": card["train"]["examples"],
                "test": card["test"]["examples"],
                "dropped": card["dropped_by_reason"],
                "skipped": len(card["files_skipped"]),
                "review": card["review_items"],
            }
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lineguard-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="build the dataset")
    p.add_argument("--docs", help="documents folder or s3:// prefix")
    p.add_argument("--out", help="output folder")
    p.add_argument("--generator", help="scripted or an advisor model alias")
    p.add_argument(
        "--history", help="none, topics, or a folder with recommendations.jsonl and feedback.jsonl"
    )
    p.add_argument("--per-section", type=int, default=2)
    p.add_argument("--test-share", type=float, default=0.25)
    p.add_argument("--windows", help="recorded windows (folder of JSON) -> advisor_exemplars.jsonl")
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
    except (
        ValueError,
        RuntimeError,
        FileNotFoundError,
    ) as exc:  # RegistryError, JobFailed: a message, exit 2
        print(f"lineguard-train {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())


# --- registry, jobs ---------------------------------------------------------------------------------------------


def _registry(args: argparse.Namespace, settings: TrainerSettings):  # type: ignore[no-untyped-def]
    from lineguard.model_registry import Registry, open_store

    return Registry(open_store(getattr(args, "registry", None) or settings.trainer_registry))


def cmd_registry(args: argparse.Namespace, settings: TrainerSettings) -> int:
    print(json.dumps(_registry(args, settings).document(), indent=2, sort_keys=True))
    return 0


def cmd_register(args: argparse.Namespace, settings: TrainerSettings) -> int:
    options = json.loads(args.options) if args.options else {}
    entry = _registry(args, settings).register(
        args.version,
        args.provider,
        args.model_id,
        dataset_id=args.dataset_id,
        artifact=args.artifact,
        options=options,
    )
    print(json.dumps(entry, sort_keys=True))
    return 0


def cmd_promote(args: argparse.Namespace, settings: TrainerSettings) -> int:
    decision = _registry(args, settings).promote(args.alias, force=args.force)
    print(json.dumps({"promoted": decision.promote, "reasons": decision.reasons}))
    return 0 if decision.promote else 1


def cmd_rollback(args: argparse.Namespace, settings: TrainerSettings) -> int:
    print(json.dumps({"production": _registry(args, settings).rollback()}))
    return 0


def cmd_finetune(args: argparse.Namespace, settings: TrainerSettings) -> int:
    import boto3

    from services.trainer import jobs

    registry = _registry(args, settings)
    if args.service == "bedrock":
        record = jobs.bedrock_customization(
            boto3.client("bedrock"),
            job_name=args.job_name,
            custom_model_name=args.model_name,
            role_arn=args.role_arn,
            base_model=args.base_model,
            train_s3=f"{args.dataset_s3.rstrip('/')}/train.jsonl",
            validation_s3=f"{args.dataset_s3.rstrip('/')}/test.jsonl",
            output_s3=args.output_s3,
            registry=registry,
        )
    else:
        record = jobs.sagemaker_training(
            boto3.client("sagemaker"),
            job_name=args.job_name,
            role_arn=args.role_arn,
            image=args.image,
            train_s3=f"{args.dataset_s3.rstrip('/')}/sagemaker/train.jsonl",
            test_s3=f"{args.dataset_s3.rstrip('/')}/sagemaker/test.jsonl",
            output_s3=args.output_s3,
            registry=registry,
        )
    print(json.dumps(record.to_dict(), default=str))
    return 0


def cmd_import(args: argparse.Namespace, settings: TrainerSettings) -> int:
    import boto3

    from services.trainer import jobs

    record = jobs.bedrock_import(
        boto3.client("bedrock"),
        job_name=args.job_name,
        model_name=args.model_name,
        role_arn=args.role_arn,
        weights_s3=args.weights_s3,
        version=args.version,
        dataset_id=args.dataset_id,
        registry=_registry(args, settings),
    )
    print(json.dumps(record.to_dict(), default=str))
    return 0


def _registry_commands(sub: Any) -> None:
    for name, func, text in (
        ("registry", cmd_registry, "print the registry"),
        ("rollback", cmd_rollback, "production -> the previous production version"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--registry", help="file path or s3://bucket/key.json")
        p.set_defaults(func=func)
    p = sub.add_parser("promote", help="candidate -> production when it beats production safely")
    p.add_argument("--registry")
    p.add_argument("--alias", default="candidate")
    p.add_argument(
        "--force", action="store_true", help="promote even when the rules refuse (audited as forced)"
    )
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("register", help="add a model version (alias candidate)")
    p.add_argument("--registry")
    for flag in ("--version", "--provider", "--model-id"):
        p.add_argument(flag, required=True)
    for flag in ("--dataset-id", "--artifact", "--options"):
        p.add_argument(flag)
    p.set_defaults(func=cmd_register)
    p = sub.add_parser("finetune", help="Bedrock model customization or a SageMaker training job")
    p.add_argument("--registry")
    p.add_argument("--service", choices=("bedrock", "sagemaker"), default="bedrock")
    for flag in ("--job-name", "--role-arn", "--dataset-s3", "--output-s3"):
        p.add_argument(flag, required=True)
    p.add_argument("--model-name", default="lineguard-advisor")
    p.add_argument("--base-model", default="amazon.nova-micro-v1:0:128k")
    p.add_argument("--image", help="SageMaker training image (sagemaker only)")
    p.set_defaults(func=cmd_finetune)
    p = sub.add_parser("import", help="Bedrock Custom Model Import of tuned weights -> a candidate version")
    p.add_argument("--registry")
    for flag in ("--job-name", "--model-name", "--role-arn", "--weights-s3", "--version"):
        p.add_argument(flag, required=True)
    p.add_argument("--dataset-id")
    p.set_defaults(func=cmd_import)


EXTRA_COMMANDS.append(_registry_commands)


# --- evaluation ---------------------------------------------------------------------------------------------


def _provider_for(args: argparse.Namespace, settings: TrainerSettings):  # type: ignore[no-untyped-def]
    from lineguard.model_registry import alias_spec
    from services.advisor.models import create_provider, parse_aliases

    if args.model.startswith("registry:"):  # registry:<version> or registry:@<alias>
        name = args.model.split(":", 1)[1]
        registry = _registry(args, settings)
        entry = registry.resolve(name[1:]) if name.startswith("@") else registry.version(name)
        if entry is None:
            raise ValueError(f"the registry has no {name!r}")
        table = parse_aliases({"_eval": alias_spec(entry)})
        return create_provider(table["_eval"]), entry["version"]
    table = parse_aliases(settings.advisor_model_aliases)
    if args.model not in table:
        raise ValueError(f"unknown model alias {args.model!r} (known: {', '.join(sorted(table))})")
    return create_provider(table[args.model]), None


def cmd_evaluate_windows(args: argparse.Namespace, settings: TrainerSettings) -> int:
    """The advisor itself (brief, grammar, exemplars, validation, retry) on recorded windows."""
    from dataclasses import replace

    from services.advisor.models import create_provider, parse_aliases
    from services.advisor.recommend import Advisor
    from services.advisor.retrieval import Retriever
    from services.trainer.advisor_exemplars import evaluate_windows, load_windows, windows_markdown

    dataset_dir = Path(args.dataset or settings.trainer_out)
    table = parse_aliases(settings.advisor_model_aliases)
    if args.model not in table:
        raise ValueError(f"unknown model alias {args.model!r} (known: {', '.join(sorted(table))})")
    alias = table[args.model]
    if args.exemplars:
        alias = replace(alias, version=f"{alias.version or ''}+exemplars{args.exemplars}", options={
            **alias.options, "exemplars": str(dataset_dir / "advisor_exemplars.jsonl"),
            "exemplars_k": args.exemplars})
    windows = load_windows(args.windows)
    if args.limit:
        windows = windows[: args.limit]
    plant = load_plant(settings.plant_file or default_plant_path())
    advisor = Advisor(plant, Retriever.from_folder(str(args.docs or settings.trainer_docs)),
                      create_provider(alias), max_tokens=args.max_tokens)
    report = evaluate_windows(advisor, windows)
    out = Path(args.out or dataset_dir / "reports")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"windows-{args.model}" + (f"-exemplars{args.exemplars}" if args.exemplars else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False))
    (out / f"{stem}.md").write_text(windows_markdown(report))
    if args.record and args.record_metrics:
        _registry(args, settings).record_metrics(args.record, "scenarios", {
            "valid_share": report["metrics"]["model_valid_share"],
            "safety_violations": report["metrics"]["safety_violations"]})
    print(json.dumps({"report": str(out / f"{stem}.md"), **report["metrics"]}))
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: TrainerSettings) -> int:
    from services.trainer import evaluate
    from services.trainer.exemplars import ExemplarProvider

    if getattr(args, "windows", None):
        return cmd_evaluate_windows(args, settings)
    dataset_dir = Path(args.dataset or settings.trainer_out)
    examples, sections = evaluate.load_dataset(dataset_dir, args.split)
    if args.limit:
        examples = examples[: args.limit]
    provider, version = _provider_for(args, settings)
    if args.exemplars:
        provider = ExemplarProvider(
            provider, evaluate.load_dataset(dataset_dir, "train")[0], k=args.exemplars
        )
    plant = load_plant(settings.plant_file or default_plant_path())
    report = evaluate.evaluate(provider, examples, sections, plant, max_tokens=args.max_tokens,
                               draft=args.draft)
    out = Path(args.out or dataset_dir / "reports")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.split}-{args.model.replace(':', '_').replace('@', '')}" + (
        f"-exemplars{args.exemplars}" if args.exemplars else ""
    )
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    (out / f"{stem}.md").write_text(evaluate.markdown(report, f"Evaluation on the {args.split} split"))
    record = args.record or version
    if record and args.record_metrics:
        _registry(args, settings).record_metrics(record, args.split, report["metrics"])
    print(json.dumps({"report": str(out / f"{stem}.md"), **report["metrics"]}))
    return 0


def _evaluate_command(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="a model over the test split -> JSON + Markdown report")
    p.add_argument("--dataset", help="the prepared dataset folder")
    p.add_argument(
        "--model", required=True, help="an advisor model alias, or registry:<version> / registry:@<alias>"
    )
    p.add_argument("--registry")
    p.add_argument("--split", default="test")
    p.add_argument(
        "--exemplars", type=int, default=0, help="put this many solved train examples in the prompt"
    )
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=500)
    p.add_argument("--draft", choices=("text", "full"), help="the test split's answer schema: grounded "
                   "enums and patterns (text) or free (full); default: the alias option draft, else text for "
                   "the local provider")
    p.add_argument("--windows", help="evaluate the advisor on these recorded windows instead of the split "
                   "(--exemplars K then uses <dataset>/advisor_exemplars.jsonl, leaving each window's own "
                   "scenario out)")
    p.add_argument("--docs", help="the advisor's documents (with --windows)")
    p.add_argument("--out", help="report folder (default: <dataset>/reports)")
    p.add_argument(
        "--record", help="registry version to store the metrics on (default: the evaluated version)"
    )
    p.add_argument("--record-metrics", action="store_true", help="store the metrics in the registry")
    p.set_defaults(func=cmd_evaluate)


EXTRA_COMMANDS.append(_evaluate_command)


def cmd_asl(args: argparse.Namespace, settings: TrainerSettings) -> int:
    from services.trainer.stepfunctions import dumps

    print(dumps(args.cluster, args.task_definition, container=args.container, subnets=args.subnet or []))
    return 0


def _asl_command(sub: Any) -> None:
    p = sub.add_parser("asl", help="print the Step Functions definition of the loop (ECS tasks)")
    p.add_argument("--cluster", required=True)
    p.add_argument("--task-definition", required=True)
    p.add_argument("--container", default="advisor")
    p.add_argument("--subnet", action="append")
    p.set_defaults(func=cmd_asl)


EXTRA_COMMANDS.append(_asl_command)


def cmd_metrics(args: argparse.Namespace, settings: TrainerSettings) -> int:
    """Metrics measured elsewhere (the advisor's scenario suite) onto a version, for promote to compare."""
    metrics = json.loads(Path(args.file).read_text())
    if not isinstance(metrics, dict) or "safety_violations" not in metrics:
        raise ValueError(
            "metrics must be a JSON object with at least safety_violations and accuracies in [0, 1]"
        )
    _registry(args, settings).record_metrics(args.version, args.split, metrics)
    return 0


def _metrics_command(sub: Any) -> None:
    p = sub.add_parser(
        "metrics", help="record metrics measured elsewhere (e.g. --split scenarios) on a version"
    )
    p.add_argument("--registry")
    p.add_argument("--version", required=True)
    p.add_argument("--split", default="scenarios")
    p.add_argument(
        "--file", required=True, help="JSON: valid_share, category_accuracy, ..., safety_violations"
    )
    p.set_defaults(func=cmd_metrics)


EXTRA_COMMANDS.append(_metrics_command)
