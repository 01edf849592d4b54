"""The learning loop on AWS as a Step Functions state machine, generated from the stage list.

Each stage is an ECS task (`ecs:runTask.sync`) running `lineguard-train <stage>` in the advisor's image (which
holds the trainer), so the state machine runs exactly the commands a person runs locally. Transient ECS and
Step Functions errors are retried with backoff; a failed stage ends the execution as failed, except `promote`,
whose refusal (exit 1: the candidate is not better, or not safe) ends it as "kept production". A stage's exit
code is read by a Choice state after it (runTask.sync itself succeeds whenever the task stops).
"""

from __future__ import annotations

import json
from typing import Any

# (state name, lineguard-train arguments); the dataset and registry locations come from the task's environment
STAGES: tuple[tuple[str, list[str]], ...] = (
    ("Prepare", ["prepare", "--history", "topics"]),
    (
        "Finetune",
        [
            "finetune",
            "--service",
            "sagemaker",
            "--job-name.$",
            "$.job_name",
            "--role-arn.$",
            "$.role_arn",
            "--dataset-s3.$",
            "$.dataset_s3",
            "--output-s3.$",
            "$.output_s3",
            "--image.$",
            "$.image",
        ],
    ),
    (
        "Import",
        [
            "import",
            "--job-name.$",
            "$.import_job_name",
            "--model-name.$",
            "$.model_name",
            "--role-arn.$",
            "$.role_arn",
            "--weights-s3.$",
            "$.weights_s3",
            "--version.$",
            "$.version",
        ],
    ),
    ("Evaluate", ["evaluate", "--model", "registry:@candidate", "--record-metrics"]),
    ("Promote", ["promote"]),
)


def _command(args: list[str]) -> dict[str, Any]:
    """Arguments with `--flag.$` take their value from the execution input (States.Array + JSONPath)."""
    if not any(a.endswith(".$") for a in args):
        return {"Command": ["lineguard-train", *args]}
    parts: list[str] = ["'lineguard-train'"]
    iterator = iter(args)
    for arg in iterator:
        if arg.endswith(".$"):
            parts += [f"'{arg[:-2]}'", next(iterator)]
        else:
            parts.append(f"'{arg}'")
    return {"Command.$": f"States.Array({', '.join(parts)})"}


def definition(
    cluster: str, task_definition: str, container: str = "advisor", subnets: list[str] | None = None
) -> dict[str, Any]:
    states: dict[str, Any] = {}
    for index, (name, args) in enumerate(STAGES):
        task: dict[str, Any] = {
            "Type": "Task",
            "Resource": "arn:aws:states:::ecs:runTask.sync",
            "Parameters": {
                "Cluster": cluster,
                "TaskDefinition": task_definition,
                "LaunchType": "FARGATE",
                "NetworkConfiguration": {
                    "AwsvpcConfiguration": {"Subnets": subnets or [], "AssignPublicIp": "DISABLED"}
                },
                "Overrides": {"ContainerOverrides": [{"Name": container, **_command(args)}]},
            },
            "ResultPath": f"$.results.{name.lower()}",
            "Retry": [
                {
                    "ErrorEquals": ["ECS.AmazonECSException", "States.Timeout"],
                    "IntervalSeconds": 30,
                    "MaxAttempts": 3,
                    "BackoffRate": 2.0,
                }
            ],
            "Catch": [
                {
                    "ErrorEquals": ["States.ALL"],
                    "Next": "KeptProduction" if name == "Promote" else "Failed",
                    "ResultPath": "$.error",
                }
            ],
        }
        # runTask.sync succeeds when the task stops, whatever its exit code: a Choice reads the exit code
        task["Next"] = f"{name}Exited"
        states[name] = task
        following = STAGES[index + 1][0] if index + 1 < len(STAGES) else "Promoted"
        states[f"{name}Exited"] = {
            "Type": "Choice",
            "Choices": [
                {
                    "Variable": f"$.results.{name.lower()}.Containers[0].ExitCode",
                    "NumericEquals": 0,
                    "Next": following,
                }
            ],
            "Default": "KeptProduction" if name == "Promote" else "Failed",
        }
    states["Promoted"] = {"Type": "Succeed", "Comment": "the candidate is production now"}
    states["KeptProduction"] = {
        "Type": "Succeed",
        "Comment": "promote refused the candidate; production unchanged",
    }
    states["Failed"] = {
        "Type": "Fail",
        "Error": "LearningLoopFailed",
        "Cause": "a stage failed (see $.error)",
    }
    return {
        "Comment": "Lineguard learning loop: " + " -> ".join(n for n, _ in STAGES),
        "StartAt": STAGES[0][0],
        "States": states,
    }


def dumps(cluster: str, task_definition: str, **kwargs: Any) -> str:
    return json.dumps(definition(cluster, task_definition, **kwargs), indent=2)
