"""The normalizer's settings (environment variables `LINEGUARD_*`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lineguard.settings import Settings, SettingsError, env_field


@dataclass(frozen=True)
class NormalizerSettings(Settings):
    service_name: str = env_field("normalizer", help="Service name in logs, metrics, traces and DLQ headers.")
    http_port: int = env_field(8083, help="Port of the health, metrics and asset graph API server.")
    group_id: str = env_field("normalizer", help="Kafka consumer group of the normalizer.")
    batch_size: int = env_field(2000, help="Records per consumer batch.")
    stale_after_s: float = env_field(
        300.0, help="A reading received more than this long after it was observed is flagged 'stale'.")
    max_clock_skew_s: float = env_field(
        3600.0, help="A reading observed more than this far in the future of its receipt is rejected.")
    max_clock_rate: float = env_field(
        1.0, help="How many times faster than real time a device's clock may run (a simulator at --speed N): above "
                  "1, a device's first reading anchors its clock and later ones may run ahead of that anchor up to "
                  "this rate (plus the skew); 1 = every reading within the skew of its receipt.")
    lake_enabled: bool = env_field(True, help="Archive every normalized record to the data lake.")
    lake_dir: Path = env_field(Path("var/lake"), help="Local data lake directory (used when LINEGUARD_LAKE_URL "
                                                      "is unset).")
    lake_url: str | None = env_field(None, help="s3://bucket/prefix: write the lake to S3 instead of lake_dir.")
    lake_endpoint_url: str | None = env_field(None, help="S3 endpoint URL (moto, MinIO); unset = AWS.")
    lake_region: str | None = env_field(None, help="S3 region; unset = the AWS default chain.")
    lake_max_rows: int = env_field(100_000, help="Rotate a lake segment after this many records of a partition.")
    lake_rotate_interval_s: float = env_field(
        600.0, help="Rotate a lake segment when a record's time is this far from the segment's first record "
                    "(record time, never wall clock).")
    lake_compression: str = env_field("snappy", help="Parquet compression: snappy, zstd, gzip or none.")
    lake_background: bool = env_field(
        True, help="Encode and store closed lake segments on a writer thread while consuming goes on.")
    normalizer_api_token: str | None = env_field(
        None, help="Bearer token the NGSI-LD API (/ngsi-ld/...) requires; unset = the API answers 503. Health "
                   "and /metrics need none.", secret=True)

    def validate(self) -> None:
        super().validate()
        if self.lake_url is not None and not self.lake_url.startswith("s3://"):
            raise SettingsError(f"LINEGUARD_LAKE_URL={self.lake_url!r}: expected s3://bucket[/prefix]")
        if self.lake_url is not None and not self.lake_url[5:].split("/", 1)[0]:
            raise SettingsError(f"LINEGUARD_LAKE_URL={self.lake_url!r}: the bucket name is missing")
        if self.lake_max_rows < 1:
            raise SettingsError(f"LINEGUARD_LAKE_MAX_ROWS={self.lake_max_rows}: expected a positive integer")
        if self.lake_rotate_interval_s <= 0:
            raise SettingsError(f"LINEGUARD_LAKE_ROTATE_INTERVAL_S={self.lake_rotate_interval_s}: expected > 0")
        if self.lake_compression not in ("snappy", "zstd", "gzip", "none"):
            raise SettingsError(f"LINEGUARD_LAKE_COMPRESSION={self.lake_compression!r}: expected snappy, zstd, "
                                "gzip or none")
        if self.batch_size < 1:
            raise SettingsError(f"LINEGUARD_BATCH_SIZE={self.batch_size}: expected a positive integer")
