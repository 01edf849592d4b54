"""The image object store (local directory and S3 through moto) and the service settings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import boto3
import pytest
from moto import mock_aws

from lineguard.settings import SettingsError
from services.vision.settings import VisionSettings
from services.vision.store import (
    ForeignReferenceError,
    LocalObjectStore,
    ObjectNotFoundError,
    S3ObjectStore,
    image_key,
)

WHEN = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_keys_are_deterministic_and_safe():
    key = image_key("line1", "line1-detector", "../../etc/passwd", WHEN, "png")
    assert key == "images/line_id=line1/date=2026-11-29/line1-detector/.._.._etc_passwd.png"
    assert key == image_key("line1", "line1-detector", "../../etc/passwd", WHEN, "png")


def test_local_store_round_trip_and_refuses_paths_outside(tmp_path):
    store = LocalObjectStore(tmp_path / "images")

    async def scenario() -> None:
        uri = await store.put(image_key("l", "s", "i", WHEN, "png"), b"PNGDATA", "image/png")
        assert uri.startswith("file://") and await store.get(uri) == b"PNGDATA"
        with pytest.raises(ForeignReferenceError):
            await store.get((tmp_path / "elsewhere.png").as_uri())
        with pytest.raises(ForeignReferenceError):
            await store.get("s3://bucket/key.png")
        with pytest.raises(ObjectNotFoundError):
            await store.get((tmp_path / "images" / "none.png").as_uri())
        with pytest.raises(ForeignReferenceError):
            await store.put("../escape.png", b"x", "image/png")

    asyncio.run(scenario())


def test_s3_store_round_trip_and_refuses_other_buckets():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="cookies")
        store = S3ObjectStore("s3://cookies/camera", client=client)

        async def scenario() -> None:
            uri = await store.put("images/a.png", b"PNGDATA", "image/png")
            assert uri == "s3://cookies/camera/images/a.png"
            assert await store.get(uri) == b"PNGDATA"
            head = client.head_object(Bucket="cookies", Key="camera/images/a.png")
            assert head["ContentType"] == "image/png"
            with pytest.raises(ForeignReferenceError):
                await store.get("s3://other-bucket/camera/images/a.png")
            with pytest.raises(ObjectNotFoundError):
                await store.get("s3://cookies/camera/images/none.png")

        asyncio.run(scenario())


def test_settings_from_environment_and_their_errors():
    settings = VisionSettings.from_env(environ={"LINEGUARD_VISION_IMAGE_SIZE": "256x256",
                                                "LINEGUARD_VISION_DETECTOR": "bedrock"})
    assert settings.expected_size() == (256, 256) and settings.detector == "bedrock"
    assert settings.http_port == 8082 and settings.service_name == "vision"
    with pytest.raises(SettingsError, match="LINEGUARD_VISION_DETECTOR"):
        VisionSettings.from_env(environ={"LINEGUARD_VISION_DETECTOR": "magic"})
    with pytest.raises(SettingsError, match="LINEGUARD_VISION_IMAGE_SIZE"):
        VisionSettings.from_env(environ={"LINEGUARD_VISION_IMAGE_SIZE": "big"})
    with pytest.raises(SettingsError, match="LINEGUARD_VISION_IMAGE_URL"):
        VisionSettings.from_env(environ={"LINEGUARD_VISION_IMAGE_URL": "http://bucket"})
