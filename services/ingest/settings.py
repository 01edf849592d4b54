"""Ingest settings: one frozen dataclass, every field from a `LINEGUARD_*` environment variable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lineguard.settings import Settings, SettingsError, env_field


@dataclass(frozen=True)
class IngestSettings(Settings):
    service_name: str = env_field("ingest", help="Service name in logs, metrics, traces and DLQ headers.")
    http_port: int = env_field(8081, help="Port of the health, metrics, HTTP push and webhook server.")

    # --- MQTT (plain JSON readings) ---
    mqtt_url: str | None = env_field(
        None, help="MQTT broker as mqtt://[user:password@]host:port; unset = the MQTT adapter is off.", secret=True)
    mqtt_client_id: str = env_field(
        "lineguard-ingest", help="Fixed MQTT client id: the broker keeps this session's queue while ingest is away.")
    mqtt_topics: list[str] = env_field(
        ["plant/+/+/+"], help="Topic filters to subscribe to (QoS 1), comma-separated.")
    mqtt_rules_file: Path | None = env_field(
        None, help="YAML/JSON file of topic -> reading mapping rules; default: plant/<line>/<machine>/<metric>.")
    mqtt_keepalive_s: int = env_field(30, help="MQTT keepalive in seconds.")

    # --- Sparkplug B host ---
    sparkplug_enabled: bool = env_field(True, help="Run the Sparkplug B host application (needs LINEGUARD_MQTT_URL).")
    sparkplug_host_id: str = env_field("lineguard-ingest", help="Sparkplug host application id (STATE topic).")
    sparkplug_groups: list[str] = env_field(["+"], help="Sparkplug group ids to subscribe to ('+' = all).")

    # --- HTTP push and webhooks ---
    push_tokens: list[str] = env_field(
        [], help="Bearer tokens accepted by POST /ingest/v1/batch, comma-separated; none = the endpoint is off.",
        secret=True)
    chirpstack_secret: str | None = env_field(
        None, help="Shared secret ChirpStack sends in the X-Lineguard-Secret header; unset = the webhook is off.",
        secret=True)
    tts_secret: str | None = env_field(
        None, help="Shared secret The Things Stack sends in the X-Lineguard-Secret header; unset = webhook off.",
        secret=True)
    lorawan_codecs: dict[str, str] = env_field(
        {"a84041000181c061": "environment"},
        help="DevEUI=codec pairs used when a webhook carries no decoded object (codecs: environment).")
    delivery_timeout_s: float = env_field(
        8.0, help="Longest an HTTP push caller waits for Kafka before getting 503 (webhooks use the spool).")
    webhook_spool_dir: Path = env_field(
        Path("var/ingest/webhook-spool"),
        help="Directory of the LoRaWAN webhook spool (uplinks are on disk here before the 2xx; one subdirectory "
             "per topic prefix). Put it on a persistent volume.")
    webhook_spool_max_bytes: int = env_field(
        64 * 1024 * 1024, help="Most bytes of uplinks the spool holds while Kafka is away; beyond it webhooks get 503.")
    max_body_bytes: int = env_field(4 * 1024 * 1024, help="Largest accepted HTTP request body.")

    # --- SFTP ---
    sftp_sources_file: Path | None = env_field(
        None, help="YAML file describing the SFTP sources and their CSV mappings; unset = the poller is off.")
    sftp_ledger: Path = env_field(Path("var/ingest/sftp-ledger.jsonl"),
                                  help="Ledger of processed SFTP files (name, size, sha256), kept across restarts.")
    sftp_poll_interval_s: float = env_field(5.0, help="Seconds between polls of each SFTP directory.")
    sftp_quiet_period_s: float = env_field(
        10.0, help="A file without a .done/.ok marker is taken once its size and mtime stayed the same this long.")
    sftp_unterminated_after_s: float = env_field(
        600.0, help="A file still without its final newline after this long is taken, its last line dead-lettered.")

    # --- deduplication ---
    dedup_capacity: int = env_field(200000, help="How many recent reading ids are remembered to drop duplicates.")

    def validate(self) -> None:
        super().validate()
        if self.webhook_spool_max_bytes < 65536:
            raise SettingsError("LINEGUARD_WEBHOOK_SPOOL_MAX_BYTES: at least 65536")
        if self.delivery_timeout_s <= 0:
            raise SettingsError("LINEGUARD_DELIVERY_TIMEOUT_S must be positive")
        if self.mqtt_url and not self.mqtt_url.startswith(("mqtt://", "tcp://", "mqtts://", "ssl://")):
            raise SettingsError("LINEGUARD_MQTT_URL: expected mqtt://host:port or mqtts://host:port")
        for eui, codec in self.lorawan_codecs.items():
            if codec not in ("environment",):
                raise SettingsError(f"LINEGUARD_LORAWAN_CODECS: unknown codec {codec!r} for {eui} "
                                    "(known: environment)")
