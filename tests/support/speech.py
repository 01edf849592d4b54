"""Spoken questions for the console's voice tests and benchmark: espeak-ng speech, as a browser would send it."""

from __future__ import annotations

import io
import subprocess

SPEAKER = "en-us"  # espeak-ng's default voice (bench/bench_voice.py compares it with another)


def espeak_wav(text: str, voice: str = SPEAKER, words_per_minute: int = 150) -> bytes:
    """espeak-ng's WAV (22,050 Hz mono)."""
    return subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text],
                          capture_output=True, check=True).stdout


def webm_opus(pcm16k: bytes) -> bytes:
    """What a browser's MediaRecorder sends: Opus in WebM at 48 kHz, from 16 kHz 16-bit mono PCM."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm16k, dtype=np.int16).reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
