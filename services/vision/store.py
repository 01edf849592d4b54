"""The object store for images: a local directory (file:// URIs) by default, S3 (s3:// URIs) when configured.

Inspections carry the URI, never the pixels. Object names are deterministic (line, date, station, item), so a
retried upload overwrites the same object. A claim-check reference is only read from inside the configured
store: the service never opens an arbitrary path or bucket on a client's say-so.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse


class ObjectNotFoundError(LookupError):
    """The referenced object does not exist in the store."""


class ForeignReferenceError(ValueError):
    """The reference points outside the configured store."""


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def image_key(line_id: str, station: str, item_id: str, captured_at: datetime, extension: str) -> str:
    """images/line_id=<line>/date=<YYYY-MM-DD>/<station>/<item>.<ext>, ids made safe for any store."""
    safe = [_SAFE.sub("_", part) for part in (line_id, station, item_id)]
    return (f"images/line_id={safe[0]}/date={captured_at.strftime('%Y-%m-%d')}/{safe[1]}/{safe[2]}."
            f"{extension}")


class ObjectStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store the bytes under key; return the object's URI."""
        ...

    async def get(self, uri: str) -> bytes:
        """The bytes of an object of this store; ObjectNotFoundError / ForeignReferenceError otherwise."""
        ...


class LocalObjectStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ForeignReferenceError(f"{key!r} is outside the image store")
        return path

    def _write(self, key: str, data: bytes) -> Path:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)  # atomic: a reader never sees half an image
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        path = await asyncio.to_thread(self._write, key, data)
        return path.as_uri()

    async def get(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ForeignReferenceError(f"image_uri {uri!r}: this service stores images under file://{self.root}")
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(self.root):
            raise ForeignReferenceError(f"image_uri {uri!r} is outside the image store file://{self.root}")
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFoundError(f"image_uri {uri!r} does not exist in the image store") from None


class S3ObjectStore:
    def __init__(self, url: str, client: Any | None = None, endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"expected s3://bucket[/prefix], got {url!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self.client = client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        full = self._key(key)
        await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=full, Body=data,
                                ContentType=content_type)
        return f"s3://{self.bucket}/{full}"

    async def get(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        if parsed.scheme != "s3" or parsed.netloc != self.bucket or not key.startswith(self.prefix):
            raise ForeignReferenceError(
                f"image_uri {uri!r} is outside the image store s3://{self.bucket}/{self.prefix}")

        def read() -> bytes:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except self.client.exceptions.NoSuchKey:
                raise ObjectNotFoundError(f"image_uri {uri!r} does not exist in the image store") from None

        return await asyncio.to_thread(read)
