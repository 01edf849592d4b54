"""The console's settings (environment variables `LINEGUARD_*`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lineguard.settings import Settings, SettingsError, env_field

HERE = Path(__file__).resolve().parent
DOCS_DIR = HERE.parents[1] / "examples" / "cookie-line" / "docs"


@dataclass(frozen=True)
class ConsoleSettings(Settings):
    service_name: str = env_field("console", help="Service name in logs, metrics and traces.")
    http_port: int = env_field(8087, help="Port of the console (web app, its API, health and metrics).")
    users_file: Path = env_field(HERE / "users.embedded.yaml",
                                 help="YAML file of operators and their scrypt password hashes (a secret in "
                                      "production; make one with `python -m services.console hash-password`). "
                                      "The default is the embedded profile's development users.")
    session_ttl_s: float = env_field(8 * 3600.0, help="A session ends this long after sign-in.")
    session_idle_s: float = env_field(3600.0, help="A session ends after this long without a request.")
    cookie_secure: str = env_field("auto", help="Secure flag on the session cookie: auto (when the request came "
                                                "over TLS: directly, or X-Forwarded-Proto: https from the TLS-"
                                                "terminating ingress), true or false.")
    auth_proxy_header: str | None = env_field(
        None, help="OIDC through an authenticating proxy (oauth2-proxy, an ALB with OIDC, Pomerium): the request "
                   "header that carries the signed-in user (e.g. X-Forwarded-User). Only when the console is "
                   "reachable through that proxy alone. Unset = the users file.")
    line_id: str | None = env_field(None, help="The line shown; default: the first line of the plant model.")
    normalizer_url: str = env_field("http://127.0.0.1:8083", help="The normalizer's asset graph API.")
    normalizer_token: str | None = env_field(None, env="LINEGUARD_CONSOLE_NORMALIZER_TOKEN", secret=True,
                                             help="Bearer token for the normalizer's NGSI-LD API.")
    advisor_url: str = env_field("http://127.0.0.1:8084", help="The advisor's chat API.")
    advisor_token: str | None = env_field(None, secret=True, help="Bearer token for the advisor's chat API.")
    actuator_url: str = env_field("http://127.0.0.1:8085", help="The actuator's approvals API.")
    actuator_token: str | None = env_field(None, env="LINEGUARD_CONSOLE_ACTUATOR_TOKEN", secret=True,
                                           help="The console's delegate token at the actuator.")
    notifier_url: str = env_field("http://127.0.0.1:8086", help="The notifier (live feed at /v1/feed).")
    feed_token: str | None = env_field(None, env="LINEGUARD_CONSOLE_FEED_TOKEN", secret=True,
                                       help="Bearer token for the notifier's live feed.")
    backend_probe_s: float = env_field(2.0, help="How often the backends are checked (the banner says which is "
                                                 "down).")
    history_s: float = env_field(1800.0, help="How far back the twin and feed read the line topics at start-up.")
    trend_points: int = env_field(600, help="Points kept per attribute for a machine's trends.")
    defect_window_s: float = env_field(300.0, help="Defect rates by class over this much event time.")
    defect_classes: list[str] = env_field(["cracked", "deformed", "bubbled", "burnt"],
                                          help="Defect classes the vision service reports (shown at 0 until "
                                               "seen; words for the speech grammar).")
    docs_dir: Path = env_field(DOCS_DIR, help="SOPs and manuals; references in the feed open their sections.")
    voice_stt: str = env_field("pocketsphinx", help="Speech to text: pocketsphinx (offline), transcribe "
                                                    "(Amazon Transcribe) or off.")
    voice_tts: str = env_field("espeak-ng", help="Text to speech: espeak-ng (offline), polly (Amazon Polly) "
                                                 "or off.")
    voice_max_audio_s: float = env_field(20.0, help="Longest question accepted, in seconds of audio.")
    espeak_voice: str = env_field("en-us", help="espeak-ng voice.")
    aws_region: str | None = env_field(None, help="AWS region for Transcribe and Polly.")
    transcribe_bucket: str | None = env_field(None, help="S3 bucket Transcribe reads questions from and writes "
                                                         "transcripts to.")
    transcribe_vocabulary: str | None = env_field(None, help="Transcribe custom vocabulary name (plant words).")
    polly_voice: str = env_field("Joanna", help="Amazon Polly voice id.")

    def validate(self) -> None:
        super().validate()
        if self.cookie_secure not in ("auto", "true", "false"):
            raise SettingsError(f"LINEGUARD_COOKIE_SECURE={self.cookie_secure!r}: expected auto, true or false")
        if self.voice_stt not in ("pocketsphinx", "transcribe", "off"):
            raise SettingsError(f"LINEGUARD_VOICE_STT={self.voice_stt!r}: expected pocketsphinx, transcribe or off")
        if self.voice_tts not in ("espeak-ng", "polly", "off"):
            raise SettingsError(f"LINEGUARD_VOICE_TTS={self.voice_tts!r}: expected espeak-ng, polly or off")
        if self.voice_stt == "transcribe" and not self.transcribe_bucket:
            raise SettingsError("LINEGUARD_VOICE_STT=transcribe needs LINEGUARD_TRANSCRIBE_BUCKET")
        if self.session_ttl_s <= 0 or self.session_idle_s <= 0:
            raise SettingsError("LINEGUARD_SESSION_TTL_S and LINEGUARD_SESSION_IDLE_S must be > 0")
