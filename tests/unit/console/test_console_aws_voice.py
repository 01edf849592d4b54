"""Amazon Transcribe and Amazon Polly providers against botocore's Stubber (the exact requests they make)."""

from __future__ import annotations

import asyncio
import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from services.console.voice import PollySynthesizer, TranscribeRecognizer, VoiceError


def client(name: str):
    return boto3.client(name, region_name="eu-central-1", aws_access_key_id="test", aws_secret_access_key="test")


def body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


def test_transcribe_uploads_runs_a_job_and_reads_the_transcript() -> None:
    transcribe, s3 = client("transcribe"), client("s3")
    job = "lineguard-console-test"
    transcript = {"results": {"transcripts": [{"transcript": "Why did the depositor stop?"}]}}
    with Stubber(transcribe) as ts, Stubber(s3) as ss:
        ss.add_response("put_object", {}, {"Bucket": "voice", "Key": f"console/questions/{job}.webm", "Body": b"ogg"})
        ts.add_response("start_transcription_job", {}, {
            "TranscriptionJobName": job, "LanguageCode": "en-US", "MediaFormat": "webm",
            "Media": {"MediaFileUri": f"s3://voice/console/questions/{job}.webm"}, "OutputBucketName": "voice",
            "OutputKey": f"console/transcripts/{job}.json", "Settings": {"VocabularyName": "cookie-line"}})
        ts.add_response("get_transcription_job", {"TranscriptionJob": {"TranscriptionJobStatus": "IN_PROGRESS"}},
                        {"TranscriptionJobName": job})
        ts.add_response("get_transcription_job", {"TranscriptionJob": {"TranscriptionJobStatus": "COMPLETED"}},
                        {"TranscriptionJobName": job})
        ss.add_response("get_object", {"Body": body(json.dumps(transcript).encode())},
                        {"Bucket": "voice", "Key": f"console/transcripts/{job}.json"})
        recognizer = TranscribeRecognizer(transcribe, s3, "voice", vocabulary="cookie-line", poll_s=0.0)
        text = recognizer.transcribe_blocking(b"ogg", "audio/webm;codecs=opus", job_name=job)
        ts.assert_no_pending_responses()
        ss.assert_no_pending_responses()
    assert text == "Why did the depositor stop?"


def test_a_failed_transcription_job_says_why() -> None:
    transcribe, s3 = client("transcribe"), client("s3")
    with Stubber(transcribe) as ts, Stubber(s3) as ss:
        ss.add_response("put_object", {}, {"Bucket": "voice", "Key": ANY, "Body": ANY})
        ts.add_response("start_transcription_job", {}, None)
        ts.add_response("get_transcription_job", {"TranscriptionJob": {
            "TranscriptionJobStatus": "FAILED", "FailureReason": "unsupported media"}}, None)
        with pytest.raises(VoiceError, match="unsupported media"):
            TranscribeRecognizer(transcribe, s3, "voice", poll_s=0.0).transcribe_blocking(b"x", "audio/wav")


def test_polly_speaks_mp3() -> None:
    polly = client("polly")
    with Stubber(polly) as stub:
        stub.add_response("synthesize_speech", {"AudioStream": body(b"ID3-mp3-bytes"), "ContentType": "audio/mpeg"},
                          {"Text": "Lower zone two.", "OutputFormat": "mp3", "VoiceId": "Joanna", "Engine": "neural"})
        synthesizer = PollySynthesizer(polly)
        audio = asyncio.run(synthesizer.synthesize("Lower zone two."))
        stub.assert_no_pending_responses()
    assert audio == b"ID3-mp3-bytes" and synthesizer.content_type == "audio/mpeg"
