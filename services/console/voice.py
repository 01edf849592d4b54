"""Voice: speech to text and text to speech, offline by default and on AWS by configuration.

Speech to text
- `PocketsphinxRecognizer` (embedded default): the US English acoustic model and dictionary inside the
  pocketsphinx wheel, constrained by a JSGF grammar built from the plant's own vocabulary (machine names and
  types, parameters, defect classes) in question templates (why did the <machine> stop, what is the <parameter>
  of the <machine>, ...). A bag of domain words alone keeps the content words but garbles the filler between
  them; templates keep both.
- `TranscribeRecognizer`: Amazon Transcribe (the audio to S3, a transcription job with an optional custom
  vocabulary, the transcript read back from S3).

Text to speech
- `EspeakSynthesizer` (embedded default): espeak-ng (Debian), WAV.
- `PollySynthesizer`: Amazon Polly, MP3.

The browser records WebM/Opus (MediaRecorder); `decode_to_pcm16k` turns any container PyAV reads (WebM, Ogg,
WAV, MP4) into 16 kHz 16-bit mono PCM for pocketsphinx.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from lineguard import telemetry

STT_SECONDS = telemetry.histogram("console", "speech_to_text_seconds", "Speech to text, per question.",
                                  ["provider"])
TTS_SECONDS = telemetry.histogram("console", "text_to_speech_seconds", "Text to speech, per chunk.", ["provider"])

_NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
            "7": "seven", "8": "eight", "9": "nine"}
STOP_WORDS = frozenset(re.findall(r"[a-z]+", """a an the is are was were be been do does did of on in at to for with about from and or
me i my what why how is are there any so too it its this that which show tell please many much should can could
would will has have had"""))


SILENCE = b"\0\0" * 4000  # 0.25 s at 16 kHz


class VoiceError(Exception):
    """The audio could not be understood or spoken (the message is for the operator)."""


def words_of(text: str) -> list[str]:
    """Lower-case words, digits spelled out (zone1 -> zone one), punctuation dropped."""
    text = re.sub(r"(\d)", r" \1 ", text.lower().replace("_", " ").replace("-", " "))
    text = re.sub(r"\(.*?\)", " ", text)
    return [_NUMBERS.get(w, w) for w in re.findall(r"[a-z0-9']+", text)]


def content_words(text: str) -> list[str]:
    return [w for w in words_of(text) if w not in STOP_WORDS]


# --- the plant's vocabulary and the grammar ---------------------------------------------------------------

@dataclass
class Vocabulary:
    machines: list[str]
    parameters: list[str]
    defects: list[str]

    @classmethod
    def from_twin(cls, snapshot: dict[str, Any], setpoints: Iterable[str] = (),
                  defect_classes: Iterable[str] = ()) -> Vocabulary:
        machines: set[str] = set()
        parameters: set[str] = set(" ".join(words_of(p)) for p in setpoints)
        for m in snapshot["machines"]:
            for phrase in (m["id"], m["name"], m["type"]):
                words = words_of(phrase)
                if words:
                    machines.add(" ".join(words))
                    machines.add(words[-1])  # "tunnel oven" -> "oven", "cooling conveyor" -> "conveyor"
            for reading in m["readings"]:
                parameters.add(" ".join(words_of(reading["attribute"])))
        parameters.add("state")
        return cls(sorted(machines), sorted(parameters), sorted(" ".join(words_of(d)) for d in defect_classes))


def _alts(phrases: Iterable[str]) -> str:
    return " | ".join(sorted(set(phrases)))


def build_grammar(vocab: Vocabulary, known: callable = lambda w: True) -> str:  # type: ignore[valid-type]
    """A JSGF grammar of the question forms operators ask, over the plant's words. Phrases with a word the
    dictionary does not know are left out (pocketsphinx refuses a grammar with unknown words)."""
    def ok(phrases: Iterable[str]) -> list[str]:
        return [p for p in phrases if p and all(known(w) for w in p.split())]

    machines = ok(vocab.machines) or ["line"]
    parameters = ok(vocab.parameters) or ["state"]
    defects = ok(vocab.defects) or ["defective"]
    return "\n".join([
        "#JSGF V1.0;",
        "grammar lineguard;",
        "public <question> = <why> | <what> | <is> | <show> | <how>;",
        f"<machine> = {_alts(machines)};",
        f"<parameter> = {_alts(parameters)};",
        f"<defect> = {_alts(defects)};",
        "<number> = one | two | three | four | five;",
        "<place> = [the] <machine> [zone <number>] | the hall | the line;",
        "<prep> = of | on | at | in | for;",
        "<direction> = high | low | hot | cold | rising | falling | slow;",
        "<change> = rise | drop | fall | go up | go down | change;",
        "<event> = stop | stopped | slow down | fault | trip | alarm | overheat | run hot;",
        "<why> = why (did | does | has) <place> <event>"
        " | why is <place> (stopped | down | in fault | running hot | alarming | so slow)"
        " | why (are | were) [the] cookies <defect>"
        " | why are there [so many] <defect> cookies"
        " | why is the <parameter> [<prep> <place>] [so | too] <direction>"
        " | why did the <parameter> [<prep> <place>] <change>"
        " | why did <place> <parameter> <change>;",
        "<what> = what is the <parameter> [<prep> <place>]"
        " | what is the <machine> [zone <number>] <parameter>"
        " | what is the (<defect> | defect | reject) rate [<prep> <place>]"
        " | what is (wrong | happening) with <place>"
        " | what (happened | is happening) (to | with | on | at) <place>"
        " | what should i do [(about | with | at) <place>]"
        " | what is the state of <place>;",
        "<is> = is <place> (running | stopped | working | ok | okay) [normally | now]"
        " | (are | is) there (any | an) (alarm | alarms) [(on | for | at) <place>]"
        " | are [the] cookies <defect>;",
        "<show> = show [me] the (<defect> | defect | reject) (rate | rates)"
        " | show [me] the <parameter> [<prep> <place>]"
        " | show [me] <place>;",
        "<how> = how many cookies are <defect>"
        " | how many (<defect> | defective) cookies [are there]"
        " | how is <place> (running | doing)"
        " | how hot is <place>;",
    ]) + "\n"


# --- audio ----------------------------------------------------------------------------------------------

def decode_to_pcm16k(data: bytes, max_seconds: float = 30.0) -> bytes:
    """Any audio PyAV can read -> 16 kHz, 16-bit, mono PCM. Raises VoiceError on audio it cannot read."""
    import av

    out = bytearray()
    limit = int(16000 * 2 * max_seconds)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise VoiceError("the recording has no audio track")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
            for frame in container.decode(audio=0):
                for resampled in resampler.resample(frame):
                    out += resampled.to_ndarray().tobytes()
                if len(out) > limit:
                    raise VoiceError(f"the recording is longer than {max_seconds:.0f} s")
            for resampled in resampler.resample(None):
                out += resampled.to_ndarray().tobytes()
    except (av.error.FFmpegError, ValueError) as exc:
        raise VoiceError(f"the recording could not be decoded ({exc})") from exc
    if len(out) < 16000 * 2 * 0.2:
        raise VoiceError("the recording is too short")
    return bytes(out)


def pcm16k_to_wav(pcm: bytes, rate: int = 16000) -> bytes:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return buf.getvalue()


# --- speech to text -----------------------------------------------------------------------------------

class Recognizer(Protocol):
    provider: str

    async def transcribe(self, audio: bytes, content_type: str) -> str: ...


class PocketsphinxRecognizer:
    provider = "pocketsphinx"

    def __init__(self, vocab: Vocabulary) -> None:
        from pocketsphinx import Decoder

        self._lock = threading.Lock()  # one decoder, one utterance at a time
        # dither: synthetic and gated audio holds runs of exact zeros, whose log energy wrecks the features
        # (measured: espeak-ng's default voice 65% of content words without it, 96% with it)
        self.decoder = Decoder(lm=None, samprate=16000, loglevel="FATAL", dither=True)
        self.grammar = build_grammar(vocab, lambda w: self.decoder.lookup_word(w) is not None)
        self.decoder.add_jsgf_string("questions", self.grammar)
        self.decoder.activate_search("questions")

    def recognize_pcm(self, pcm: bytes) -> str:
        """The best path through the question grammar (a partial one when no template fits to the end: its
        words are still the ones heard). A free word loop as a fallback was tried and left out: on some
        utterances its search ran for minutes."""
        pcm = SILENCE + pcm + SILENCE  # the search needs a little silence on both sides
        with self._lock:
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    async def transcribe(self, audio: bytes, content_type: str = "") -> str:
        started = time.perf_counter()
        pcm = await asyncio.to_thread(decode_to_pcm16k, audio)
        text = await asyncio.to_thread(self.recognize_pcm, pcm)
        STT_SECONDS.labels(self.provider).observe(time.perf_counter() - started)
        return text


_MEDIA_FORMATS = {"audio/webm": "webm", "audio/ogg": "ogg", "audio/wav": "wav", "audio/x-wav": "wav",
                  "audio/wave": "wav", "audio/mp4": "mp4", "audio/mpeg": "mp3", "audio/flac": "flac"}


class TranscribeRecognizer:
    """Amazon Transcribe: batch jobs over S3 (boto3 has no streaming client; the job API is what it offers)."""

    provider = "transcribe"

    def __init__(self, transcribe: Any, s3: Any, bucket: str, vocabulary: str | None = None,
                 language: str = "en-US", poll_s: float = 0.5, timeout_s: float = 60.0) -> None:
        self.transcribe_client = transcribe
        self.s3 = s3
        self.bucket = bucket
        self.vocabulary = vocabulary
        self.language = language
        self.poll_s = poll_s
        self.timeout_s = timeout_s

    def transcribe_blocking(self, audio: bytes, content_type: str, job_name: str | None = None) -> str:
        media_format = _MEDIA_FORMATS.get(content_type.split(";")[0].strip().lower(), "webm")
        job = job_name or f"lineguard-console-{uuid.uuid4().hex}"
        key = f"console/questions/{job}.{media_format}"
        out_key = f"console/transcripts/{job}.json"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=audio)
        request: dict[str, Any] = {"TranscriptionJobName": job, "LanguageCode": self.language,
                                   "MediaFormat": media_format, "Media": {"MediaFileUri": f"s3://{self.bucket}/{key}"},
                                   "OutputBucketName": self.bucket, "OutputKey": out_key}
        if self.vocabulary:
            request["Settings"] = {"VocabularyName": self.vocabulary}
        self.transcribe_client.start_transcription_job(**request)
        deadline = time.monotonic() + self.timeout_s
        while True:
            status = self.transcribe_client.get_transcription_job(TranscriptionJobName=job)
            state = status["TranscriptionJob"]["TranscriptionJobStatus"]
            if state == "COMPLETED":
                break
            if state == "FAILED":
                raise VoiceError("Transcribe could not transcribe the question: "
                                 + status["TranscriptionJob"].get("FailureReason", "no reason given"))
            if time.monotonic() > deadline:
                raise VoiceError(f"Transcribe took longer than {self.timeout_s:.0f} s")
            time.sleep(self.poll_s)
        body = self.s3.get_object(Bucket=self.bucket, Key=out_key)["Body"].read()
        transcripts = json.loads(body)["results"]["transcripts"]
        return " ".join(t["transcript"] for t in transcripts).strip()

    async def transcribe(self, audio: bytes, content_type: str = "audio/webm") -> str:
        started = time.perf_counter()
        text = await asyncio.to_thread(self.transcribe_blocking, audio, content_type)
        STT_SECONDS.labels(self.provider).observe(time.perf_counter() - started)
        return text


# --- text to speech -----------------------------------------------------------------------------------

class Synthesizer(Protocol):
    provider: str
    content_type: str

    async def synthesize(self, text: str) -> bytes: ...


class EspeakSynthesizer:
    provider = "espeak-ng"
    content_type = "audio/wav"

    def __init__(self, voice: str = "en-us", words_per_minute: int = 165, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("espeak-ng") or shutil.which("espeak")
        if self.binary is None:
            raise VoiceError("espeak-ng is not installed (apt-get install espeak-ng, or `make system-deps`)")
        self.voice = voice
        self.wpm = words_per_minute

    async def synthesize(self, text: str) -> bytes:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            self.binary, "-v", self.voice, "-s", str(self.wpm), "--stdout",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(text.encode("utf-8"))
        if proc.returncode != 0 or not out.startswith(b"RIFF"):
            raise VoiceError(f"espeak-ng failed: {err.decode(errors='replace')[:200]}")
        TTS_SECONDS.labels(self.provider).observe(time.perf_counter() - started)
        return out


class PollySynthesizer:
    provider = "polly"
    content_type = "audio/mpeg"

    def __init__(self, polly: Any, voice: str = "Joanna", engine: str = "neural") -> None:
        self.polly = polly
        self.voice = voice
        self.engine = engine

    def synthesize_blocking(self, text: str) -> bytes:
        response = self.polly.synthesize_speech(Text=text, OutputFormat="mp3", VoiceId=self.voice,
                                                Engine=self.engine)
        return response["AudioStream"].read()

    async def synthesize(self, text: str) -> bytes:
        started = time.perf_counter()
        audio = await asyncio.to_thread(self.synthesize_blocking, text)
        TTS_SECONDS.labels(self.provider).observe(time.perf_counter() - started)
        return audio


def speech_chunks(text: str, first_max_words: int = 14) -> list[str]:
    """The answer in chunks to speak: the first sentence alone (short, so the first audio comes fast), then the
    rest in one piece."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]
    if not sentences:
        return []
    first = sentences[0]
    words = first.split()
    rest = sentences[1:]
    if len(words) > first_max_words:  # split a long first sentence at a comma, else at a word boundary
        cut = next((i + 1 for i, w in enumerate(words[:first_max_words]) if w.endswith(",") and i > 3),
                   first_max_words)
        first, remainder = " ".join(words[:cut]), " ".join(words[cut:])
        rest = [remainder, *rest]
    return [first] + ([" ".join(rest)] if rest else [])


class AudioStore:
    """Answer audio kept a few minutes for the browser to fetch (only by the operator who asked)."""

    def __init__(self, ttl_s: float = 600.0, max_items: int = 200) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: dict[str, tuple[float, str, str, bytes]] = {}

    def put(self, owner: str, content_type: str, data: bytes) -> str:
        now = time.monotonic()
        for key in [k for k, v in self._items.items() if now - v[0] > self.ttl_s]:
            del self._items[key]
        while len(self._items) >= self.max_items:
            del self._items[next(iter(self._items))]
        audio_id = uuid.uuid4().hex
        self._items[audio_id] = (now, owner, content_type, data)
        return audio_id

    def get(self, audio_id: str, owner: str) -> tuple[str, bytes] | None:
        item = self._items.get(audio_id)
        if item is None or item[1] != owner:
            return None
        return item[2], item[3]
