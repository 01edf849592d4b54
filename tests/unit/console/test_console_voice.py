"""Voice: the plant's grammar, audio decoding, offline recognition of espeak-ng speech, and answer chunks."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from speech import espeak_wav, webm_opus

from lineguard.plant import AssetGraph, default_plant_path, load_plant
from services.console.twin import Twin
from services.console.voice import (
    AudioStore,
    EspeakSynthesizer,
    Vocabulary,
    build_grammar,
    content_words,
    decode_to_pcm16k,
    speech_chunks,
    words_of,
)

PLANT = load_plant(default_plant_path())
CLASSES = ["cracked", "deformed", "bubbled", "burnt"]
SETPOINTS = [p for m in PLANT.lines["line1"].machines.values() for p in m.setpoints]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing: make system-deps")


def vocabulary() -> Vocabulary:
    twin = Twin.from_entities(AssetGraph(PLANT).entities(), "line1", defect_classes=CLASSES)
    return Vocabulary.from_twin(twin.snapshot(), SETPOINTS, CLASSES)


def test_words_spell_digits_and_drop_punctuation() -> None:
    assert words_of("zone2_temperature") == ["zone", "two", "temperature"]
    assert words_of("Cookie detector (camera)") == ["cookie", "detector"]
    assert words_of("Wire-cut depositor") == ["wire", "cut", "depositor"]
    assert content_words("Why did the depositor stop?") == ["depositor", "stop"]


def test_vocabulary_and_grammar_come_from_the_plant() -> None:
    vocab = vocabulary()
    for machine in ("mixer", "dough mixer", "depositor", "tunnel oven", "oven", "cooling conveyor", "conveyor",
                    "detector", "packaging", "environment"):
        assert machine in vocab.machines
    for parameter in ("torque", "zone two temperature", "belt speed", "humidity", "water ratio",
                      "zone one setpoint", "state"):
        assert parameter in vocab.parameters
    assert vocab.defects == sorted(CLASSES)
    grammar = build_grammar(vocab, known=lambda w: w != "plc")
    assert grammar.startswith("#JSGF V1.0;")
    assert "tunnel oven" in grammar and "plc" not in grammar
    assert "<defect> = bubbled | burnt | cracked | deformed;" in grammar


def test_answer_is_spoken_first_sentence_first() -> None:
    assert speech_chunks("The oven is hot. Lower zone two. See SOP-OVEN-001.") == [
        "The oven is hot.", "Lower zone two. See SOP-OVEN-001."]
    long = "Now: the cooling conveyor stopped at 05:00, so cookies leaving the oven are diverted to scrap and lost."
    first, rest = speech_chunks(long)
    assert len(first.split()) <= 14 and (first + " " + rest).split() == long.split()
    assert speech_chunks("") == []


def test_audio_store_serves_only_the_owner() -> None:
    store = AudioStore()
    audio_id = store.put("alice", "audio/wav", b"RIFF")
    assert store.get(audio_id, "alice") == ("audio/wav", b"RIFF")
    assert store.get(audio_id, "bob") is None
    assert store.get("nope", "alice") is None


@needs_espeak
def test_espeak_speech_is_recognised_through_the_plant_grammar() -> None:
    from services.console.voice import PocketsphinxRecognizer

    recognizer = PocketsphinxRecognizer(vocabulary())
    for question in ("why did the depositor stop", "what is the temperature of oven zone two",
                     "is the cooling conveyor running"):
        pcm = decode_to_pcm16k(espeak_wav(question))
        assert content_words(recognizer.recognize_pcm(pcm)) == content_words(question)  # "of" and "on" may swap
    # the browser's format: WebM/Opus
    pcm = decode_to_pcm16k(espeak_wav("why are the cookies burnt"))
    heard = asyncio.run(recognizer.transcribe(webm_opus(pcm), "audio/webm;codecs=opus"))
    assert content_words(heard) == ["cookies", "burnt"]


def test_audio_that_is_not_audio_is_refused() -> None:
    from services.console.voice import VoiceError

    with pytest.raises(VoiceError):
        decode_to_pcm16k(b"this is not a recording")


@needs_espeak
def test_espeak_synthesizes_wav() -> None:
    audio = asyncio.run(EspeakSynthesizer().synthesize("The oven is running normally."))
    assert audio.startswith(b"RIFF") and len(audio) > 10_000
