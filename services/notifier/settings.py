"""The notifier's settings (environment variables `LINEGUARD_*`; the shared Kafka ones come from `Settings`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lineguard.settings import Settings, SettingsError, env_field

RULES_FILE = Path(__file__).resolve().parents[2] / "examples" / "cookie-line" / "notify-rules.yaml"


@dataclass(frozen=True)
class NotifierSettings(Settings):
    service_name: str = env_field("notifier", help="Service name in logs, metrics, traces and DLQ headers.")
    http_port: int = env_field(8086, help="Port of health, metrics, the console feed and the answer links.")
    group_id: str = env_field("notifier", help="Kafka consumer group (the Faust app id).")
    notifier_rules_file: Path = env_field(RULES_FILE, help="Routing rules YAML (lines, severities, channels, "
                                                           "groups, quiet hours, on-call shifts, escalation).")
    notifier_public_url: str = env_field("http://127.0.0.1:8086",
                                         help="Base URL operators reach this service at (the signed links).")
    notifier_link_key: str = env_field("", secret=True, help="HMAC key that signs the answer links (required).")
    notifier_link_ttl_s: float = env_field(86400.0, help="How long an answer link stays valid.")
    notifier_feed_token: str = env_field("", secret=True,
                                         help="Bearer token of the console feed (/v1/feed); unset = feed refused.")
    notifier_actuator_url: str = env_field("http://127.0.0.1:8085", help="The actuator's approvals API.")
    notifier_actuator_token: str = env_field("", secret=True,
                                             help="Bearer token the notifier uses at the actuator's approvals API.")
    notifier_webhook_urls: dict[str, str] = env_field(
        {}, secret=True, help="Webhook URLs by channel name (name=url,...): the URLs carry secrets.")
    notifier_sns_endpoint_url: str | None = env_field(None, help="SNS endpoint override (moto in tests).")
    notifier_aws_region: str = env_field("eu-central-1", help="AWS region of the SNS topics.")
    notifier_smtp_host: str | None = env_field(None, help="SMTP server; unset = e-mail channels are off.")
    notifier_smtp_port: int = env_field(587, help="SMTP port.")
    notifier_smtp_user: str | None = env_field(None, help="SMTP user (with a password: STARTTLS + login).")
    notifier_smtp_password: str | None = env_field(None, secret=True, help="SMTP password.")
    notifier_smtp_starttls: bool = env_field(True, help="Use STARTTLS when the server offers it.")
    notifier_smtp_from: str = env_field("lineguard@localhost", help="Sender address of e-mails.")
    notifier_sns_enabled: bool = env_field(True, help="Deliver to the rules' SNS channels (off: skipped).")
    notifier_webhook_sink: bool = env_field(False, help="Serve a local webhook sink at /v1/webhook-sink/<name> "
                                                        "(the embedded profile points its webhooks at it).")
    notifier_retry_max: int = env_field(5, help="Delivery attempts per channel and target before giving up.")
    notifier_retry_base_s: float = env_field(0.5, help="First retry delay; doubles each attempt (with jitter).")
    notifier_retry_cap_s: float = env_field(60.0, help="Longest delay between two attempts.")
    notifier_send_timeout_s: float = env_field(10.0, help="Timeout of one delivery attempt.")
    notifier_tick_s: float = env_field(1.0, help="How often escalation stages and digests are checked.")
    notifier_feed_size: int = env_field(200, help="Notifications kept for /v1/feed/recent.")
    notifier_fetch_max_wait_ms: int = env_field(100, help="Longest wait of a Kafka fetch for new records (Faust "
                                                          "fixes 1500; Tansu waits it out even when data arrives).")
    notifier_commit_interval_s: float = env_field(1.0, help="Faust offset commit interval.")

    def validate(self) -> None:
        super().validate()
        if not self.notifier_link_key:
            raise SettingsError("LINEGUARD_NOTIFIER_LINK_KEY is empty: set a secret key (32+ random bytes) that "
                                "signs the answer links")
        if self.notifier_link_ttl_s <= 0:
            raise SettingsError(f"LINEGUARD_NOTIFIER_LINK_TTL_S={self.notifier_link_ttl_s}: expected > 0")
        if self.notifier_retry_max < 1:
            raise SettingsError(f"LINEGUARD_NOTIFIER_RETRY_MAX={self.notifier_retry_max}: expected >= 1")
        if self.notifier_retry_base_s <= 0 or self.notifier_retry_cap_s < self.notifier_retry_base_s:
            raise SettingsError("LINEGUARD_NOTIFIER_RETRY_BASE_S must be > 0 and <= LINEGUARD_NOTIFIER_RETRY_CAP_S")
        if self.notifier_tick_s <= 0:
            raise SettingsError(f"LINEGUARD_NOTIFIER_TICK_S={self.notifier_tick_s}: expected > 0")
