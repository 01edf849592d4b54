"""The vision service's settings (environment variables `LINEGUARD_*`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lineguard.settings import Settings, SettingsError, env_field


@dataclass(frozen=True)
class VisionSettings(Settings):
    service_name: str = env_field("vision", help="Service name in logs, metrics, traces and DLQ headers.")
    http_port: int = env_field(8082, help="Port of the health, metrics and image intake server.")
    detector: str = env_field("local", env="LINEGUARD_VISION_DETECTOR",
                              help="local (CPU, embedded default) or bedrock (Converse with an image block).")
    local_model_path: Path | None = env_field(
        None, env="LINEGUARD_VISION_LOCAL_MODEL",
        help="The local detector's artifact; default services/vision/model/local-detector.json.")
    bedrock_model_id: str = env_field("us.amazon.nova-lite-v1:0", env="LINEGUARD_VISION_BEDROCK_MODEL_ID",
                                      help="Bedrock model or inference profile id for the bedrock detector.")
    bedrock_model_version: str | None = env_field(None, env="LINEGUARD_VISION_BEDROCK_MODEL_VERSION",
                                                  help="Version label reported with each inspection.")
    bedrock_region: str | None = env_field(None, env="LINEGUARD_VISION_BEDROCK_REGION",
                                           help="AWS region of Bedrock; unset = the AWS default chain.")
    bedrock_tool_choice: str = env_field("tool", env="LINEGUARD_VISION_BEDROCK_TOOL_CHOICE",
                                         help="tool (name the forced tool) or any (models that cannot).")
    image_store_dir: Path = env_field(Path("var/images"), env="LINEGUARD_VISION_IMAGE_DIR",
                                      help="Local object store for images (used when the URL below is unset).")
    image_store_url: str | None = env_field(None, env="LINEGUARD_VISION_IMAGE_URL",
                                            help="s3://bucket/prefix: store images in S3 instead.")
    image_store_endpoint_url: str | None = env_field(None, env="LINEGUARD_VISION_S3_ENDPOINT_URL",
                                                     help="S3 endpoint URL (moto, MinIO); unset = AWS.")
    image_store_region: str | None = env_field(None, env="LINEGUARD_VISION_S3_REGION",
                                               help="S3 region; unset = the AWS default chain.")
    max_image_bytes: int = env_field(4 * 1024 * 1024, env="LINEGUARD_VISION_MAX_IMAGE_BYTES",
                                     help="Largest image accepted, in bytes.")
    max_batch: int = env_field(64, env="LINEGUARD_VISION_MAX_BATCH", help="Most images in one batch upload.")
    max_request_bytes: int = env_field(32 * 1024 * 1024, env="LINEGUARD_VISION_MAX_REQUEST_BYTES",
                                       help="Largest JSON request body (a batch of base64 images), in bytes.")
    image_size: str | None = env_field(
        None, env="LINEGUARD_VISION_IMAGE_SIZE",
        help="WIDTHxHEIGHT every image must have (e.g. 256x256); unset = any size from 64 to 4096 pixels.")
    detector_threads: int = env_field(2, env="LINEGUARD_VISION_DETECTOR_THREADS",
                                      help="Threads that run the detector off the event loop.")
    max_pixels: int = env_field(4096 * 4096, env="LINEGUARD_VISION_MAX_PIXELS",
                                help="Most pixels an image may have (width x height); larger ones get 413.")
    detect_max_side: int = env_field(
        512, env="LINEGUARD_VISION_DETECT_MAX_SIDE",
        help="Longer side the local detector works on: larger images are reduced while decoding.")
    tokens: str | None = env_field(
        None, env="LINEGUARD_VISION_TOKENS", secret=True,
        help="Comma-separated bearer tokens accepted by /v1/images, /v1/images/batch and /v1/detector (one per "
             "camera); unset = those routes answer 503.")
    fallback: str = env_field(
        "none", env="LINEGUARD_VISION_FALLBACK",
        help="none, or bedrock: images the local detector abstains on are judged by Bedrock.")

    def validate(self) -> None:
        super().validate()
        if self.detector not in ("local", "bedrock"):
            raise SettingsError(f"LINEGUARD_VISION_DETECTOR={self.detector!r}: expected local or bedrock")
        if self.bedrock_tool_choice not in ("tool", "any"):
            raise SettingsError(f"LINEGUARD_VISION_BEDROCK_TOOL_CHOICE={self.bedrock_tool_choice!r}: "
                                "expected tool or any")
        if self.image_store_url is not None and (
                not self.image_store_url.startswith("s3://") or not self.image_store_url[5:].split("/", 1)[0]):
            raise SettingsError(f"LINEGUARD_VISION_IMAGE_URL={self.image_store_url!r}: expected s3://bucket[/prefix]")
        if self.max_image_bytes < 1024:
            raise SettingsError(f"LINEGUARD_VISION_MAX_IMAGE_BYTES={self.max_image_bytes}: expected >= 1024")
        if self.max_batch < 1:
            raise SettingsError(f"LINEGUARD_VISION_MAX_BATCH={self.max_batch}: expected a positive integer")
        if self.fallback not in ("none", "bedrock"):
            raise SettingsError(f"LINEGUARD_VISION_FALLBACK={self.fallback!r}: expected none or bedrock")
        if self.max_pixels < 64 * 64:
            raise SettingsError(f"LINEGUARD_VISION_MAX_PIXELS={self.max_pixels}: expected >= 4096")
        if self.detect_max_side < 128:
            raise SettingsError(f"LINEGUARD_VISION_DETECT_MAX_SIDE={self.detect_max_side}: expected >= 128")
        if self.detector_threads < 1:
            raise SettingsError(f"LINEGUARD_VISION_DETECTOR_THREADS={self.detector_threads}: expected >= 1")
        self.expected_size()

    def token_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in (self.tokens or "").split(",") if t.strip())

    def expected_size(self) -> tuple[int, int] | None:
        if not self.image_size:
            return None
        width, sep, height = self.image_size.lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise SettingsError(f"LINEGUARD_VISION_IMAGE_SIZE={self.image_size!r}: expected WIDTHxHEIGHT, e.g. 256x256")
        return int(width), int(height)
