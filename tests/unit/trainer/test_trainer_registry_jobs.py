"""The model registry (file and S3 via moto), promote/rollback rules, and the AWS jobs through botocore's Stubber."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from lineguard.model_registry import FileStore, Registry, RegistryError, RegistryFollower, S3Store, compare
from services.trainer.jobs import JobFailed, Poller, bedrock_customization, bedrock_import, sagemaker_training

GOOD = {"valid_share": 0.95, "category_accuracy": 0.9, "citation_accuracy": 0.9, "safety_violations": 0}
BETTER = {**GOOD, "valid_share": 0.99}
WORSE = {**GOOD, "valid_share": 0.5}
UNSAFE = {**BETTER, "safety_violations": 1}
ROLE = "arn:aws:iam::123456789012:role/lineguard-trainer"
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def registry_with_production(store) -> Registry:
    registry = Registry(store)
    registry.register("v1", "local", "SmolLM2-135M-Instruct", dataset_id="ds-1", metrics={"test": GOOD})
    assert registry.promote().promote
    return registry


def test_promote_needs_a_better_candidate_without_safety_violations(tmp_path: Path) -> None:
    registry = registry_with_production(FileStore(tmp_path / "registry.json"))
    for version, metrics, why in (
        ("v2", WORSE, "does not beat"),
        ("v3", UNSAFE, "safety violation"),
        ("v4", GOOD, "does not beat"),
    ):  # equal is not better
        registry.register(version, "bedrock", f"arn:{version}", metrics={"test": metrics})
        decision = registry.promote()
        assert not decision.promote and any(why in r for r in decision.reasons), decision
        assert registry.document()["aliases"]["production"] == "v1"
    registry.register("v5", "bedrock", "arn:v5")
    assert "no evaluation" in registry.promote().reasons[0]  # never evaluated: refused
    registry.record_metrics("v5", "test", BETTER)
    registry.record_metrics("v5", "scenarios", {**BETTER, "safety_violations": 2})
    assert not registry.promote().promote  # the scenario suite found an unsafe step
    registry.record_metrics("v5", "scenarios", BETTER)
    assert registry.promote().promote and registry.resolve("production")["model_id"] == "arn:v5"
    actions = [e["action"] for e in FileStore(tmp_path / "registry.json").audit_entries()]
    assert actions.count("promote_refused") == 5 and actions.count("promote") == 2


def test_rollback_restores_the_previous_production_in_one_command(tmp_path: Path) -> None:
    registry = registry_with_production(FileStore(tmp_path / "registry.json"))
    registry.register("v2", "bedrock", "arn:v2", metrics={"test": BETTER})
    registry.promote()
    assert registry.rollback() == "v1"
    assert registry.resolve("production")["version"] == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    with pytest.raises(RegistryError, match="immutable"):
        registry.register("v2", "bedrock", "arn:other")
    with pytest.raises(RegistryError, match="only through promote"):
        registry.set_alias("production", "v2")


def test_follower_sees_a_change_once(tmp_path: Path) -> None:
    registry = registry_with_production(FileStore(tmp_path / "registry.json"))
    follower = RegistryFollower(FileStore(tmp_path / "registry.json"))
    assert follower.check()["model_id"] == "SmolLM2-135M-Instruct"
    assert follower.check() is None
    registry.register("v2", "bedrock", "arn:v2", options={"mode": "invoke"}, metrics={"test": BETTER})
    assert follower.check() is None  # a new candidate is not a change of production
    registry.promote()
    assert follower.check() == {
        "provider": "bedrock",
        "model_id": "arn:v2",
        "version": "v2",
        "mode": "invoke",
    }
    registry.rollback()
    assert follower.check()["version"] == "v1"


def test_registry_on_s3(tmp_path: Path) -> None:
    from moto import mock_aws

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        registry = registry_with_production(S3Store("s3://models/advisor/registry.json", s3))
        registry.register("v2", "bedrock", "arn:v2", metrics={"test": BETTER})
        registry.promote()
        registry.rollback()
        again = Registry(S3Store("s3://models/advisor/registry.json", s3))
        assert again.resolve("production")["version"] == "v1"
        actions = [e["action"] for e in again.store.audit_entries()]
        assert actions.count("promote") == 2 and actions[-1] == "rollback"


def test_compare_without_production() -> None:
    assert compare({"metrics": {"test": GOOD}}, None).promote
    assert not compare({"metrics": {"test": UNSAFE}}, None).promote


def fast_poller(sleeps: list[float]) -> Poller:
    return Poller(first_s=1.0, max_s=4.0, timeout_s=1e9, max_throttles=2, sleep=sleeps.append)


def test_bedrock_customization_then_import_updates_the_registry(tmp_path: Path) -> None:
    bedrock = boto3.client(
        "bedrock", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    registry = Registry(FileStore(tmp_path / "registry.json"))
    sleeps: list[float] = []
    job = "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/amazon.nova-micro-v1:0/abcdefghijkl"
    base = {
        "jobArn": job,
        "jobName": "tune-1",
        "outputModelName": "advisor-tuned-1",
        "roleArn": ROLE,
        "creationTime": NOW,
        "baseModelArn": "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-micro-v1:0",
        "trainingDataConfig": {"s3Uri": "s3://ds/train.jsonl"},
        "validationDataConfig": {"validators": [{"s3Uri": "s3://ds/test.jsonl"}]},
        "outputDataConfig": {"s3Uri": "s3://ds/out/"},
    }
    with Stubber(bedrock) as stub:
        stub.add_response(
            "create_model_customization_job",
            {"jobArn": job},
            {
                "jobName": "tune-1",
                "customModelName": "advisor-tuned-1",
                "roleArn": ROLE,
                "baseModelIdentifier": "amazon.nova-micro-v1:0",
                "customizationType": "FINE_TUNING",
                "trainingDataConfig": {"s3Uri": "s3://ds/train.jsonl"},
                "outputDataConfig": {"s3Uri": "s3://ds/out/"},
                "validationDataConfig": {"validators": [{"s3Uri": "s3://ds/test.jsonl"}]},
                "hyperParameters": {
                    "epochCount": "2",
                    "learningRate": "0.00001",
                    "learningRateWarmupSteps": "10",
                },
            },
        )
        stub.add_response(
            "get_model_customization_job", {**base, "status": "InProgress"}, {"jobIdentifier": job}
        )
        stub.add_client_error(
            "get_model_customization_job", service_error_code="ThrottlingException", http_status_code=429
        )
        stub.add_response(
            "get_model_customization_job",
            {
                **base,
                "status": "Completed",
                "outputModelArn": "arn:aws:bedrock:us-east-1:123456789012:custom-model/x",
            },
            {"jobIdentifier": job},
        )
        record = bedrock_customization(
            bedrock,
            job_name="tune-1",
            custom_model_name="advisor-tuned-1",
            role_arn=ROLE,
            base_model="amazon.nova-micro-v1:0",
            train_s3="s3://ds/train.jsonl",
            validation_s3="s3://ds/test.jsonl",
            output_s3="s3://ds/out/",
            poller=fast_poller(sleeps),
            registry=registry,
        )
        stub.assert_no_pending_responses()
    assert record.status == "Completed" and record.throttled == 1 and record.polls == 2
    assert sleeps == [1.0, 2.0]  # backoff doubles, a throttled poll included
    assert record.outputs["outputModelArn"].endswith("custom-model/x")

    import_arn = "arn:aws:bedrock:us-east-1:123456789012:model-import-job/abcdefghijkl"
    model_arn = "arn:aws:bedrock:us-east-1:123456789012:imported-model/mnopqrstuvwx"
    with Stubber(bedrock) as stub:
        stub.add_response(
            "create_model_import_job",
            {"jobArn": import_arn},
            {
                "jobName": "import-v2",
                "importedModelName": "cookie-advisor-v2",
                "roleArn": ROLE,
                "modelDataSource": {"s3DataSource": {"s3Uri": "s3://models/v2/"}},
            },
        )
        stub.add_response("get_model_import_job", {"jobArn": import_arn, "status": "InProgress"})
        stub.add_response(
            "get_model_import_job",
            {"jobArn": import_arn, "status": "Completed", "importedModelArn": model_arn},
        )
        bedrock_import(
            bedrock,
            job_name="import-v2",
            model_name="cookie-advisor-v2",
            role_arn=ROLE,
            weights_s3="s3://models/v2/",
            version="v2",
            dataset_id="ds-abc",
            poller=fast_poller(sleeps),
            registry=registry,
            earlier_jobs=[record.to_dict()],
        )
        stub.assert_no_pending_responses()
    candidate = registry.resolve("candidate")
    assert candidate["model_id"] == model_arn and candidate["options"] == {"mode": "invoke"}
    assert candidate["dataset_id"] == "ds-abc" and [j["kind"] for j in candidate["jobs"]] == [
        "bedrock-customization",
        "bedrock-import",
    ]
    jobs = [e["job"] for e in registry.store.audit_entries() if e["action"] == "job"]
    assert {j["arn"] for j in jobs} == {job, import_arn} and jobs[-1]["outputs"][
        "importedModelArn"
    ] == model_arn


def test_failed_import_and_endless_throttling_are_reported(tmp_path: Path) -> None:
    bedrock = boto3.client(
        "bedrock", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    registry = Registry(FileStore(tmp_path / "registry.json"))
    arn = "arn:aws:bedrock:us-east-1:123456789012:model-import-job/abcdefghijkl"
    with Stubber(bedrock) as stub:
        stub.add_response("create_model_import_job", {"jobArn": arn})
        stub.add_response(
            "get_model_import_job",
            {"jobArn": arn, "status": "Failed", "failureMessage": "config.json is missing"},
        )
        with pytest.raises(JobFailed, match="config.json is missing"):
            bedrock_import(
                bedrock,
                job_name="i",
                model_name="m",
                role_arn=ROLE,
                weights_s3="s3://m/",
                version="v9",
                poller=fast_poller([]),
                registry=registry,
            )
        stub.add_response("create_model_import_job", {"jobArn": arn})
        for _ in range(3):
            stub.add_client_error(
                "get_model_import_job", service_error_code="ThrottlingException", http_status_code=429
            )
        with pytest.raises(JobFailed, match="throttled 3 times"):
            bedrock_import(
                bedrock,
                job_name="i",
                model_name="m",
                role_arn=ROLE,
                weights_s3="s3://m/",
                version="v9",
                poller=fast_poller([]),
                registry=registry,
            )
    assert registry.document()["versions"] == {}  # nothing registered from a failed job
    failed = [
        e["job"] for e in registry.store.audit_entries() if e["action"] == "job" and e["job"]["failure"]
    ]
    assert [j["status"] for j in failed] == ["Failed", "PollingFailed"]


def test_sagemaker_training_job(tmp_path: Path) -> None:
    sagemaker = boto3.client(
        "sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    arn = "arn:aws:sagemaker:us-east-1:123456789012:training-job/advisor-lora-1"
    described = {
        "TrainingJobName": "advisor-lora-1",
        "TrainingJobArn": arn,
        "SecondaryStatus": "Training",
        "StoppingCondition": {"MaxRuntimeInSeconds": 172800},
        "CreationTime": NOW,
    }
    with Stubber(sagemaker) as stub:
        stub.add_response("create_training_job", {"TrainingJobArn": arn})
        stub.add_response(
            "describe_training_job",
            {**described, "TrainingJobStatus": "InProgress", "ModelArtifacts": {"S3ModelArtifacts": ""}},
        )
        stub.add_response(
            "describe_training_job",
            {
                **described,
                "TrainingJobStatus": "Failed",
                "FailureReason": "CUDA out of memory",
                "ModelArtifacts": {"S3ModelArtifacts": ""},
            },
        )
        with pytest.raises(JobFailed, match="CUDA out of memory") as failed:
            sagemaker_training(
                sagemaker,
                job_name="advisor-lora-1",
                role_arn=ROLE,
                image="1.dkr.ecr/llm:1",
                train_s3="s3://ds/sagemaker/train.jsonl",
                test_s3="s3://ds/sagemaker/test.jsonl",
                output_s3="s3://models/",
                poller=fast_poller([]),
            )
        stub.assert_no_pending_responses()
    assert failed.value.record.arn == arn
    sent = failed.value.record.inputs
    assert (
        sent["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://ds/sagemaker/train.jsonl"
    )
    assert json.dumps(sent)  # the record is serialisable for the audit
