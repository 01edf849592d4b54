"""Settings from environment variables only.

Each service declares one dataclass that subclasses `Settings`; every field `foo_bar` is read from the
environment variable `LINEGUARD_FOO_BAR` (or the name in the field's metadata `env`). The embedded profile reads a
`.env` file first (never overriding the real environment). An invalid value stops start-up with a message that
names the variable and what it expected. Secret fields are shown as `***` wherever settings are printed or logged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

PREFIX = "LINEGUARD_"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


def env_field(default: Any, *, env: str | None = None, help: str = "", secret: bool = False) -> Any:
    """A settings field with its documentation; `env` overrides the derived variable name."""
    metadata = {"help": help, "secret": secret}
    if env:
        metadata["env"] = env
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def read_dotenv(path: str | Path) -> dict[str, str]:
    """Parse a .env file: KEY=VALUE lines, '#' comments, optional quotes. Missing file -> empty."""
    values: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return values
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        if not sep:
            raise SettingsError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _convert(raw: str, annotation: Any, var: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if raw == "" and type(None) in args:
            return None
        return _convert(raw, inner[0], var)
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{var}={raw!r}: expected a boolean (true/false, 1/0, yes/no, on/off)")
    if annotation is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r}: expected an integer") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r}: expected a number") from None
    if annotation is Path:
        return Path(raw)
    if origin is list:
        return [_convert(item.strip(), args[0] if args else str, var) for item in raw.split(",") if item.strip()]
    if origin is dict:
        return _key_values(raw, var)
    return raw


def _key_values(raw: str, var: str) -> dict[str, str]:
    """`key=value,key=value`; a value that holds a comma writes it as `\\,` (a password, a list of CAs), or the
    whole setting is a JSON object (`{"sasl.password": "a,b=c"}`)."""
    if raw.lstrip().startswith("{"):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{var}: not a valid JSON object: {exc.msg} at character {exc.pos}") from None
        if not isinstance(parsed, dict):
            raise SettingsError(f"{var}: expected a JSON object of strings")
        return {str(k): str(v) for k, v in parsed.items()}
    out: dict[str, str] = {}
    for item in re.split(r"(?<!\\),", raw):
        if not item.strip():
            continue
        k, sep, v = item.partition("=")
        if not sep:
            raise SettingsError(f"{var}: expected comma-separated key=value pairs (write a comma inside a value "
                                f"as \\, or give a JSON object): an item has no '='")
        out[k.strip()] = v.strip().replace("\\,", ",")
    return out


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every service needs. Subclass it (as a frozen dataclass) for a service's own settings."""

    service_name: str = env_field("lineguard", help="Service name in logs, metrics, traces and DLQ headers.")
    kafka_bootstrap: str = env_field("127.0.0.1:9092", help="Kafka bootstrap servers, comma-separated.")
    kafka_security: dict[str, str] = env_field(
        {}, help="Extra librdkafka settings as key=value pairs (e.g. security.protocol=SASL_SSL,sasl.mechanism=...).",
        secret=True)
    kafka_msk_iam_region: str | None = env_field(
        None, help="Amazon MSK with IAM auth: the AWS region; signs SASL/OAUTHBEARER tokens with the pod's role.")
    kafka_session_timeout_ms: int = env_field(6000, help="Consumer group session timeout; keep near 6000 on Tansu.")
    kafka_loop_linger_ms: int = env_field(
        25, help="How long the shared consumer loop's producer gathers a service's outputs into one batch "
                 "(librdkafka linger.ms; other producers keep 5). Against 5 it halved the broker's CPU per record.")
    topic_prefix: str = env_field("", help="Prefix in front of every topic name (e.g. 'plant1.').")
    schema_registry_url: str | None = env_field(
        None, help="Confluent-compatible schema registry; unset = Avro single-object encoding.")
    schema_registry_auth: str | None = env_field(None, help="Registry basic auth as user:password.", secret=True)
    schemas_dir: Path | None = env_field(None, help="Folder with *.avsc and topics.yaml; default: the shipped schemas/.")
    plant_file: Path | None = env_field(None, help="The plant model YAML; default: examples/cookie-line/plant.yaml.")
    http_host: str = env_field("0.0.0.0", help="Address of the health, metrics and API server.")
    http_port: int = env_field(8080, help="Port of the health, metrics and API server.")
    metrics_port: int | None = env_field(
        None, help="Serve /metrics alone on this port (and not on the HTTP port); unset = on the HTTP port.")
    log_level: str = env_field("INFO", help="DEBUG, INFO, WARNING or ERROR.")
    liveness_timeout_s: float = env_field(60.0, help="/livez fails when the loop made no progress for this long.")
    restore_stall_timeout_s: float = env_field(
        120.0, help="During a state restore /livez fails only when the restore read nothing for this long.")
    instance_id: str = env_field(socket.gethostname(), help="This instance (pod name); used in ids and headers.")

    @classmethod
    def env_name(cls, field: dataclasses.Field) -> str:
        return field.metadata.get("env") or PREFIX + field.name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, dotenv: str | Path | None = None,
                 **overrides: Any) -> Self:
        """Build settings from the environment (plus an optional .env file that never overrides it)."""
        env: dict[str, str] = {}
        dotenv = dotenv if dotenv is not None else os.environ.get("LINEGUARD_ENV_FILE")
        if dotenv:
            env.update(read_dotenv(dotenv))
        env.update(os.environ if environ is None else environ)
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in overrides:
                values[field.name] = overrides[field.name]
                continue
            var = cls.env_name(field)
            if var in env:
                values[field.name] = _convert(env[var], hints[field.name], var)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Cross-field checks; raise SettingsError naming the variable. Subclasses extend it."""
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"LINEGUARD_LOG_LEVEL={self.log_level!r}: expected DEBUG, INFO, WARNING or ERROR")
        if not 0 <= self.http_port <= 65535:
            raise SettingsError(f"LINEGUARD_HTTP_PORT={self.http_port}: expected a port between 0 and 65535")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"LINEGUARD_METRICS_PORT={self.metrics_port}: expected a port between 0 and 65535")
        if not self.kafka_bootstrap.strip():
            raise SettingsError("LINEGUARD_KAFKA_BOOTSTRAP is empty: set it to host:port of a Kafka broker")

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict for logging, with secrets masked."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.metadata.get("secret") and value:
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            out[field.name] = value
        return out

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, help) for every setting, for docs and `--help`."""
        rows = []
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = ""
            if field.name == "instance_id":
                default = "<hostname>"
            rows.append((cls.env_name(field), "" if default is None else str(default), field.metadata.get("help", "")))
        return rows

    def topic(self, name: str) -> str:
        """The full topic name with the configured prefix."""
        return f"{self.topic_prefix}{name}"

    def plant_path(self) -> Path:
        from lineguard.plant import default_plant_path

        return self.plant_file or default_plant_path()
