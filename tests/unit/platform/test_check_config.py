"""Check mode (`--check-config`): the service is built, summarised and closed; nothing is reached or started."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lineguard import check_config
from lineguard.kafka import clients
from lineguard.service import Runtime, Service, StartupError
from lineguard.settings import Settings

UNREACHABLE = "kafka.check.invalid:9098"  # .invalid never resolves: nothing here could be reached anyway


@pytest.fixture
def check_mode():
    check_config.enable()
    yield
    clients.check_mode_clients = None


def settings(**overrides: object) -> Settings:
    return Settings.from_env(environ={}, **{"kafka_bootstrap": UNREACHABLE, "service_name": "widget", **overrides})


def summary_of(caplog: pytest.LogCaptureFixture, name: str = "config_checked") -> dict:
    (record,) = [r for r in caplog.records if r.getMessage() == name]
    return record.fields  # type: ignore[attr-defined]


def loop_service(rt: Runtime[Settings]) -> Service:
    loop = rt.consumer_loop("widgets", ["raw.alarms.v1"], lambda records: [])
    rt.producer()
    return Service(loop=loop, routes=lambda app: app.router.add_get("/v1/widgets", lambda r: None),
                   tasks=[never_started])


async def never_started() -> None:
    raise AssertionError("check mode started a task")


def test_msk_iam_and_registry_are_built_and_reported_without_signing_a_token(check_mode, caplog, monkeypatch):
    def sign(*_: object) -> None:
        raise AssertionError("check mode signed an MSK IAM token (reached for AWS credentials)")

    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    monkeypatch.setattr(MSKAuthTokenProvider, "generate_auth_token", sign)
    caplog.set_level(logging.INFO, logger="lineguard.check_config")
    rt = Runtime(settings(kafka_msk_iam_region="eu-west-1", schema_registry_url="mock://check"), check_only=True)
    # confluent-kafka calls the token callback in each client's constructor (and fails it after 10 s without a
    # token): with the real one, `sign` above would have failed the check.
    assert asyncio.run(check_config.check(rt, loop_service)) == 0
    summary = summary_of(caplog)
    assert summary["kafka"] == {"bootstrap": UNREACHABLE, "clients": {"consumer": 1, "producer": 2},
                                "security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "msk_iam": True}
    assert summary["schema_registry"] is True and summary["wire_format"] == ["confluent"]
    assert summary["consumer_group"] == "widgets" and summary["topics"] == ["raw.alarms.v1"]
    assert summary["tasks"] == ["never_started"] and summary["routes"] >= 4  # health, metrics and /v1/widgets
    assert rt._producers == []  # closed


def test_plaintext_is_reported_as_plaintext_with_single_object_encoding(check_mode, caplog):
    caplog.set_level(logging.INFO, logger="lineguard.check_config")
    rt = Runtime(settings(), check_only=True)
    assert asyncio.run(check_config.check(rt, loop_service)) == 0
    assert summary_of(caplog)["kafka"]["security_protocol"] == "PLAINTEXT"
    assert summary_of(caplog)["wire_format"] == ["single-object"]


def test_a_missing_ca_file_or_a_startup_error_exits_2(check_mode, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="lineguard.check_config")
    missing = tmp_path / "no-ca.crt"
    rt = Runtime(settings(kafka_security={"security.protocol": "SSL", "ssl.ca.location": str(missing)}),
                 check_only=True)
    assert asyncio.run(check_config.check(rt, loop_service)) == 2
    assert "ssl.ca.location" in summary_of(caplog, "config_check_failed")["error"]

    def broken(_: Runtime[Settings]) -> Service:
        raise StartupError("plant model invalid: no such file")

    caplog.clear()
    assert asyncio.run(check_config.check(Runtime(settings(), check_only=True), broken)) == 2
    assert summary_of(caplog, "config_check_failed")["error"] == "plant model invalid: no such file"


def test_check_is_requested_by_flag_or_environment(monkeypatch):
    monkeypatch.delenv("LINEGUARD_CHECK_CONFIG", raising=False)
    assert check_config.check_requested(["--check-config"])
    assert not check_config.check_requested([])
    monkeypatch.setenv("LINEGUARD_CHECK_CONFIG", "1")
    assert check_config.check_requested([])
