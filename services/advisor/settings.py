"""The advisor's settings (environment variables `LINEGUARD_*`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lineguard.settings import Settings, SettingsError, env_field

DOCS_DIR = Path(__file__).resolve().parents[2] / "examples" / "cookie-line" / "docs"


@dataclass(frozen=True)
class AdvisorSettings(Settings):
    service_name: str = env_field("advisor", help="Service name in logs, metrics, traces and DLQ headers.")
    http_port: int = env_field(8084, help="Port of the health, metrics and chat API server.")
    group_id: str = env_field("advisor", help="Kafka consumer group of the advisor.")
    batch_size: int = env_field(2000, help="Records per consumer batch.")
    window_s: float = env_field(300.0, help="Length of the tumbling windows per line, in seconds.")
    window_grace_s: float = env_field(10.0, help="A window closes when the line's event time passes its end by "
                                                 "this much (room for late records).")
    trigger_cooldown_s: float = env_field(120.0, help="Least event time between two immediate recommendations "
                                                      "of the same trigger on a line.")
    idle_close_s: float = env_field(60.0, help="Close a line's open windows after this much wall-clock time "
                                               "without any record from it.")
    source_idle_s: float = env_field(10.0, help="A line's input (observations, inspections, alarms) holds the "
                                                "line's event time back until it has not moved for this much "
                                                "wall-clock time: a stream a moment behind is waited for, one that "
                                                "stopped (a camera off) then counts as silent.")
    checkpoint_interval_s: float = env_field(1.0, help="How often window state is written to the changelog; "
                                                       "offsets are committed only after that.")
    changelog_topic: str = env_field("advisor.windows.changelog.v1",
                                     help="Compacted topic holding the window state per line (recovery).")
    model_alias: str = env_field("advisor-local", help="The model alias in use (see model_aliases).")
    model_aliases: str | None = env_field(
        None, help="JSON (or a path to a .json file): alias -> {provider, model_id, version, ...options}; merged "
                   "over the built-in aliases advisor-local, advisor-bedrock, advisor-openai, analysis-only.")
    model_on_normal: bool = env_field(False, help="Ask the model for windows where the analysis finds nothing.")
    model_max_tokens: int = env_field(600, help="Largest answer the model may write.")
    docs_dir: Path = env_field(DOCS_DIR, help="Folder of SOPs and manuals (md, txt, csv, pdf).")
    chat_tokens: str | None = env_field(None, secret=True,
                                        help="Comma-separated bearer tokens accepted by the chat API; unset = "
                                             "the chat API refuses every request.")
    chat_rate_per_min: int = env_field(20, help="Chat questions per token and minute.")

    def validate(self) -> None:
        super().validate()
        if self.window_s <= 0 or self.window_grace_s < 0:
            raise SettingsError("LINEGUARD_WINDOW_S must be > 0 and LINEGUARD_WINDOW_GRACE_S >= 0")
        if self.source_idle_s < 0:
            raise SettingsError(f"LINEGUARD_SOURCE_IDLE_S={self.source_idle_s}: expected >= 0")
        if self.checkpoint_interval_s <= 0:
            raise SettingsError(f"LINEGUARD_CHECKPOINT_INTERVAL_S={self.checkpoint_interval_s}: expected > 0")
        if self.batch_size < 1:
            raise SettingsError(f"LINEGUARD_BATCH_SIZE={self.batch_size}: expected a positive integer")
        if self.chat_rate_per_min < 1:
            raise SettingsError(f"LINEGUARD_CHAT_RATE_PER_MIN={self.chat_rate_per_min}: expected >= 1")
