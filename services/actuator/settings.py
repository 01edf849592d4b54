"""The actuator's settings (environment variables `LINEGUARD_*`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lineguard.settings import Settings, SettingsError, env_field

POLICY_FILE = Path(__file__).resolve().parents[2] / "examples" / "cookie-line" / "actuation-policy.yaml"


def parse_named_tokens(raw: str | None, var: str) -> dict[str, str]:
    """`name:token,name:token` -> {token: name}; refuses empty names or tokens and a token given twice."""
    out: dict[str, str] = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        name, sep, token = item.strip().partition(":")
        if not sep or not name.strip() or not token.strip():
            raise SettingsError(f"{var}: expected comma-separated name:token pairs, got an item without a name "
                                "or a token")
        if token.strip() in out:
            raise SettingsError(f"{var}: the same token is given to {out[token.strip()]!r} and {name.strip()!r}")
        out[token.strip()] = name.strip()
    return out


@dataclass(frozen=True)
class ActuatorSettings(Settings):
    service_name: str = env_field("actuator", help="Service name in logs, metrics, traces and DLQ headers.")
    http_port: int = env_field(8085, help="Port of the health, metrics and approvals API server.")
    group_id: str = env_field("actuator", help="Kafka consumer group of the actuator.")
    actuation_policy_file: Path = env_field(POLICY_FILE, help="The actuation policy (YAML).")
    actuator_dry_run: bool = env_field(False, help="Decide and record every action but never call the control "
                                                   "API (also switched on by `dry_run: true` in the policy).")
    control_api_url: str | None = env_field(None, help="Base URL of the line controller's API; unset = each "
                                                       "line's `controller.api` from the plant model.")
    control_api_token: str | None = env_field(None, secret=True,
                                              help="Bearer token for the control API; unset = no call succeeds.")
    control_api_timeout_s: float = env_field(5.0, help="Timeout of one control API request.")
    control_api_retries: int = env_field(3, help="Retries of a control API request after a 5xx answer or a "
                                                 "connection error (never after a 4xx).")
    control_api_backoff_s: float = env_field(0.5, help="First retry delay; doubles with each retry.")
    actuator_operator_tokens: str | None = env_field(
        None, secret=True, help="Operators of the approvals API as name:token,name:token; unset = nobody can "
                                "approve.")
    actuator_delegate_tokens: str | None = env_field(
        None, secret=True, help="Delegates (console, notifier) as name:token,...; a delegate names the operator "
                                "in the request body.")
    approve_wait_s: float = env_field(5.0, help="How long an approve request waits for the execution to finish "
                                                 "before it answers with the action as it stands.")

    def operators(self) -> dict[str, str]:
        return parse_named_tokens(self.actuator_operator_tokens, "LINEGUARD_ACTUATOR_OPERATOR_TOKENS")

    def delegates(self) -> dict[str, str]:
        return parse_named_tokens(self.actuator_delegate_tokens, "LINEGUARD_ACTUATOR_DELEGATE_TOKENS")

    def validate(self) -> None:
        super().validate()
        if self.control_api_timeout_s <= 0:
            raise SettingsError(f"LINEGUARD_CONTROL_API_TIMEOUT_S={self.control_api_timeout_s}: expected > 0")
        if not 0 <= self.control_api_retries <= 10:
            raise SettingsError(f"LINEGUARD_CONTROL_API_RETRIES={self.control_api_retries}: expected 0..10")
        if self.control_api_backoff_s < 0:
            raise SettingsError(f"LINEGUARD_CONTROL_API_BACKOFF_S={self.control_api_backoff_s}: expected >= 0")
        if self.approve_wait_s < 0:
            raise SettingsError(f"LINEGUARD_APPROVE_WAIT_S={self.approve_wait_s}: expected >= 0")
        operators, delegates = self.operators(), self.delegates()
        shared = set(operators) & set(delegates)
        if shared:
            raise SettingsError("LINEGUARD_ACTUATOR_OPERATOR_TOKENS and LINEGUARD_ACTUATOR_DELEGATE_TOKENS share "
                                "a token; give every caller its own")
