from dataclasses import dataclass
from pathlib import Path

import pytest

from lineguard.settings import Settings, SettingsError, env_field


@dataclass(frozen=True)
class DemoSettings(Settings):
    demo_batch: int = env_field(100, help="batch size")
    demo_ratio: float = env_field(0.5)
    demo_enabled: bool = env_field(False)
    demo_channels: list[str] = env_field(["console"])
    demo_token: str | None = env_field(None, secret=True)
    demo_named: str = env_field("x", env="DEMO_CUSTOM_NAME")


def test_defaults_and_typed_values_from_environment():
    s = DemoSettings.from_env(environ={"LINEGUARD_DEMO_BATCH": "250", "LINEGUARD_DEMO_RATIO": "0.25",
                                       "LINEGUARD_DEMO_ENABLED": "yes", "LINEGUARD_DEMO_CHANNELS": "sns, webhook",
                                       "DEMO_CUSTOM_NAME": "custom", "LINEGUARD_TOPIC_PREFIX": "p1."})
    assert (s.demo_batch, s.demo_ratio, s.demo_enabled) == (250, 0.25, True)
    assert s.demo_channels == ["sns", "webhook"]
    assert s.demo_named == "custom"
    assert s.topic("raw.telemetry.v1") == "p1.raw.telemetry.v1"
    assert DemoSettings.from_env(environ={}).demo_batch == 100


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("LINEGUARD_DEMO_BATCH", "ten", "expected an integer"),
    ("LINEGUARD_DEMO_ENABLED", "maybe", "expected a boolean"),
    ("LINEGUARD_HTTP_PORT", "70000", "between 0 and 65535"),
    ("LINEGUARD_LOG_LEVEL", "LOUD", "expected DEBUG"),
])
def test_invalid_value_names_the_variable(var, value, expected):
    with pytest.raises(SettingsError) as err:
        DemoSettings.from_env(environ={var: value})
    assert var in str(err.value)
    assert expected in str(err.value)


def test_dotenv_is_read_but_never_overrides_the_environment(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("# embedded profile\nLINEGUARD_DEMO_BATCH=7\nexport LINEGUARD_DEMO_RATIO='0.75'\n")
    s = DemoSettings.from_env(environ={"LINEGUARD_DEMO_BATCH": "9"}, dotenv=env_file)
    assert s.demo_batch == 9
    assert s.demo_ratio == 0.75


def test_malformed_dotenv_line_is_reported_with_its_line_number(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("LINEGUARD_DEMO_BATCH=7\nnot a setting\n")
    with pytest.raises(SettingsError, match=r"\.env:2"):
        DemoSettings.from_env(environ={}, dotenv=env_file)


def test_secrets_are_redacted():
    s = DemoSettings.from_env(environ={"LINEGUARD_DEMO_TOKEN": "hunter2",
                                       "LINEGUARD_KAFKA_SECURITY": "sasl.password=topsecret"})
    shown = repr(s.redacted())
    assert "hunter2" not in shown and "topsecret" not in shown
    assert s.redacted()["demo_token"] == "***"


def test_describe_lists_every_variable_with_help():
    rows = {var: help_text for var, _, help_text in DemoSettings.describe()}
    assert rows["LINEGUARD_DEMO_BATCH"] == "batch size"
    assert "LINEGUARD_KAFKA_BOOTSTRAP" in rows


def test_msk_iam_region_adds_an_oauthbearer_token_callback(monkeypatch):
    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    from lineguard.kafka import client_security

    calls = []
    monkeypatch.setattr(MSKAuthTokenProvider, "generate_auth_token",
                        staticmethod(lambda region: calls.append(region) or ("signed-token", 1_800_000_000_000)))
    s = Settings.from_env(environ={"LINEGUARD_KAFKA_MSK_IAM_REGION": "eu-central-1"})
    conf = client_security(s)
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanism"] == "OAUTHBEARER"
    assert conf["oauth_cb"]("") == ("signed-token", 1_800_000_000.0)
    assert calls == ["eu-central-1"]
    assert client_security(Settings.from_env(environ={})) == {}


def test_key_value_settings_take_commas_inside_values_and_never_echo_them():
    env = {"LINEGUARD_KAFKA_SECURITY": r"security.protocol=SASL_SSL,sasl.username=svc,sasl.password=p\,a=ss"}
    settings = Settings.from_env(environ=env)
    assert settings.kafka_security == {"security.protocol": "SASL_SSL", "sasl.username": "svc",
                                       "sasl.password": "p,a=ss"}
    as_json = Settings.from_env(environ={"LINEGUARD_KAFKA_SECURITY": '{"sasl.password": "a,b=c", "sasl.username": "u"}'})
    assert as_json.kafka_security == {"sasl.password": "a,b=c", "sasl.username": "u"}
    with pytest.raises(SettingsError) as bad:
        Settings.from_env(environ={"LINEGUARD_KAFKA_SECURITY": "sasl.password=secret-value,oops"})
    assert "LINEGUARD_KAFKA_SECURITY" in str(bad.value) and "secret-value" not in str(bad.value)
    with pytest.raises(SettingsError, match="JSON"):
        Settings.from_env(environ={"LINEGUARD_KAFKA_SECURITY": '{"broken": '})
