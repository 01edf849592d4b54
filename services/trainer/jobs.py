"""Fine-tuning and import jobs on AWS: Bedrock model customization, SageMaker training, Custom Model Import.

Each job is started, then polled with exponential backoff (throttling answers back off the same way; after
`max_throttles` in a row the job is reported as failed to poll, not as failed). The record of every job (its
inputs, outputs, ARNs, status and failure message) is returned, kept in the registry version it produced and
written to the registry's audit. A model that finished importing becomes a registry version under the
`candidate` alias; nothing reaches production without `promote`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from lineguard.model_registry import Registry

THROTTLED = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "ServiceUnavailableException",
        "ThrottlingException.",
        "Throttling",
    }
)


class JobFailed(RuntimeError):
    def __init__(self, record: JobRecord) -> None:
        super().__init__(f"{record.kind} job {record.name} {record.status}: {record.failure}")
        self.record = record


@dataclass
class JobRecord:
    kind: str  # bedrock-customization | sagemaker-training | bedrock-import
    name: str
    arn: str | None = None
    status: str = "Created"
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None
    polls: int = 0
    throttled: int = 0
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    finished_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Poller:
    """Backoff for status polling: `first_s`, doubling up to `max_s`, for at most `timeout_s` in all."""

    first_s: float = 30.0
    max_s: float = 300.0
    timeout_s: float = 6 * 3600.0
    max_throttles: int = 8
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def run(
        self,
        record: JobRecord,
        describe: Callable[[], dict[str, Any]],
        status_of: Callable[[dict[str, Any]], str],
        done: tuple[str, ...],
        failed: tuple[str, ...],
    ) -> dict[str, Any]:
        delay = self.first_s
        started = self.clock()
        throttles = 0
        while True:
            try:
                reply = describe()
                throttles = 0
            except Exception as exc:  # botocore ClientError: throttling backs off, anything else is raised
                code = (
                    getattr(exc, "response", {}).get("Error", {}).get("Code")
                    if hasattr(exc, "response")
                    else None
                )
                if code not in THROTTLED:
                    raise
                throttles += 1
                record.throttled += 1
                if throttles > self.max_throttles:
                    record.status, record.failure = "PollingFailed", f"throttled {throttles} times in a row"
                    raise JobFailed(record) from exc
                reply = None
            if reply is not None:
                record.polls += 1
                record.status = status_of(reply)
                if record.status in done or record.status in failed:
                    record.finished_ms = int(time.time() * 1000)
                    return reply
            if self.clock() - started > self.timeout_s:
                record.status, record.failure = (
                    "TimedOut",
                    f"still {record.status} after {self.timeout_s:g} s",
                )
                raise JobFailed(record)
            self.sleep(delay)
            delay = min(self.max_s, delay * 2)


def _poll(poller: Poller, registry: Registry | None, record: JobRecord, *args: Any) -> dict[str, Any]:
    try:
        return poller.run(record, *args)
    except JobFailed:
        _audit(registry, record)  # a job we stopped watching is recorded too
        raise


def _finish(registry: Registry | None, record: JobRecord, failure: str | None) -> None:
    """Record the finished job; raise JobFailed unless it completed."""
    if record.status != "Completed":
        record.failure = failure or record.status
    _audit(registry, record)
    if record.status != "Completed":
        raise JobFailed(record)


def _audit(registry: Registry | None, record: JobRecord) -> None:
    if registry is not None:
        registry.store.audit(
            {
                "at_ms": int(time.time() * 1000),
                "action": "job",
                "actor": registry.actor,
                "job": record.to_dict(),
            }
        )


def bedrock_customization(
    bedrock: Any,
    *,
    job_name: str,
    custom_model_name: str,
    role_arn: str,
    base_model: str,
    train_s3: str,
    validation_s3: str | None,
    output_s3: str,
    hyper_parameters: dict[str, str] | None = None,
    poller: Poller | None = None,
    registry: Registry | None = None,
) -> JobRecord:
    """CreateModelCustomizationJob (FINE_TUNING) on the published train JSONL; waits for it to finish."""
    request: dict[str, Any] = {
        "jobName": job_name,
        "customModelName": custom_model_name,
        "roleArn": role_arn,
        "baseModelIdentifier": base_model,
        "customizationType": "FINE_TUNING",
        "trainingDataConfig": {"s3Uri": train_s3},
        "outputDataConfig": {"s3Uri": output_s3},
        "hyperParameters": hyper_parameters
        or {"epochCount": "2", "learningRate": "0.00001", "learningRateWarmupSteps": "10"},
    }
    if validation_s3:
        request["validationDataConfig"] = {"validators": [{"s3Uri": validation_s3}]}
    record = JobRecord("bedrock-customization", job_name, inputs=request)
    record.arn = bedrock.create_model_customization_job(**request)["jobArn"]
    _audit(registry, record)
    reply = _poll(
        poller or Poller(),
        registry,
        record,
        lambda: bedrock.get_model_customization_job(jobIdentifier=record.arn),
        lambda r: r["status"],
        ("Completed",),
        ("Failed", "Stopped"),
    )
    record.outputs = {
        "outputModelArn": reply.get("outputModelArn"),
        "outputModelName": reply.get("outputModelName"),
        "outputDataConfig": reply.get("outputDataConfig"),
    }
    _finish(registry, record, reply.get("failureMessage"))
    return record


def sagemaker_training(
    sagemaker: Any,
    *,
    job_name: str,
    role_arn: str,
    image: str,
    train_s3: str,
    test_s3: str,
    output_s3: str,
    instance_type: str = "ml.g5.2xlarge",
    hyper_parameters: dict[str, str] | None = None,
    max_runtime_s: int = 2 * 86400,
    poller: Poller | None = None,
    registry: Registry | None = None,
) -> JobRecord:
    """CreateTrainingJob on the SageMaker-format JSONL (LoRA, merged weights in HF format for Custom Model Import)."""

    def channel(name: str, uri: str) -> dict[str, Any]:
        return {
            "ChannelName": name,
            "ContentType": "application/jsonlines",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": uri,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }

    request = {
        "TrainingJobName": job_name,
        "RoleArn": role_arn,
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "HyperParameters": hyper_parameters
        or {
            "epoch": "3",
            "learning_rate": "0.0002",
            "lora_r": "16",
            "lora_alpha": "8",
            "merge_weights": "True",
            "chat_dataset": "True",
        },
        "InputDataConfig": [channel("training", train_s3), channel("validation", test_s3)],
        "OutputDataConfig": {"S3OutputPath": output_s3},
        "ResourceConfig": {"InstanceType": instance_type, "InstanceCount": 1, "VolumeSizeInGB": 100},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_s},
    }
    record = JobRecord("sagemaker-training", job_name, inputs=request)
    record.arn = sagemaker.create_training_job(**request)["TrainingJobArn"]
    _audit(registry, record)
    reply = _poll(
        poller or Poller(),
        registry,
        record,
        lambda: sagemaker.describe_training_job(TrainingJobName=job_name),
        lambda r: r["TrainingJobStatus"],
        ("Completed",),
        ("Failed", "Stopped"),
    )
    record.outputs = {"S3ModelArtifacts": (reply.get("ModelArtifacts") or {}).get("S3ModelArtifacts")}
    _finish(registry, record, reply.get("FailureReason"))
    return record


def bedrock_import(
    bedrock: Any,
    *,
    job_name: str,
    model_name: str,
    role_arn: str,
    weights_s3: str,
    version: str,
    dataset_id: str | None = None,
    poller: Poller | None = None,
    registry: Registry | None = None,
    earlier_jobs: list[dict[str, Any]] | None = None,
) -> JobRecord:
    """CreateModelImportJob of HF-format weights; on success the imported model becomes registry `version`
    (alias `candidate`), called through InvokeModel with the OpenAI chat body (the advisor's `invoke` mode)."""
    request = {
        "jobName": job_name,
        "importedModelName": model_name,
        "roleArn": role_arn,
        "modelDataSource": {"s3DataSource": {"s3Uri": weights_s3}},
    }
    record = JobRecord("bedrock-import", job_name, inputs=request)
    record.arn = bedrock.create_model_import_job(**request)["jobArn"]
    _audit(registry, record)
    reply = _poll(
        poller or Poller(first_s=15.0, max_s=120.0, timeout_s=3 * 3600.0),
        registry,
        record,
        lambda: bedrock.get_model_import_job(jobIdentifier=record.arn),
        lambda r: r["status"],
        ("Completed",),
        ("Failed",),
    )
    record.outputs = {
        "importedModelArn": reply.get("importedModelArn"),
        "importedModelName": reply.get("importedModelName"),
    }
    _finish(registry, record, reply.get("failureMessage"))
    if registry is not None:
        registry.register(
            version,
            "bedrock",
            str(reply["importedModelArn"]),
            dataset_id=dataset_id,
            artifact=weights_s3,
            options={"mode": "invoke"},
            jobs=[*(earlier_jobs or []), record.to_dict()],
        )
    return record
