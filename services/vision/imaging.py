"""Decoding and checking uploaded images: every way an upload can be wrong gets its own clear message."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats a camera sends and Bedrock accepts in an image block.
ACCEPTED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif"}


class ImageError(ValueError):
    """The bytes are not an image the service can judge; the message says why, `status` is the HTTP answer."""

    status = 422


class NotAnImageError(ImageError):
    """Not an image at all, or a format the service does not take."""

    status = 415


class ImageTooLargeError(ImageError):
    """More bytes or pixels than the service accepts."""

    status = 413


# Intake limits: the most pixels an image may have, and the longest side the local detector works on (a larger
# image is reduced while it is decoded, so a 4096 px upload costs a few ms more, not a second of a worker).
MAX_PIXELS = 4096 * 4096
WORKING_SIDE = 512


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # H x W x 3, uint8, RGB; possibly a reduced copy of the image (see scale)
    format: str  # png, jpeg, webp or gif
    width: int  # of the image as received
    height: int
    data: bytes = b""  # the encoded bytes as received (what a remote model is sent)
    scale: float = 1.0  # image pixels per pixel of `pixels` (> 1 when the image was reduced for detection)


def decode_image(
    data: bytes,
    *,
    max_bytes: int | None = None,
    min_side: int = 64,
    max_side: int = 8192,
    max_pixels: int | None = MAX_PIXELS,
    expected_size: tuple[int, int] | None = None,
    working_side: int | None = None,
) -> DecodedImage:
    """Decode and validate an image; raise ImageError saying what is wrong with it.

    With `working_side`, an image whose longer side exceeds it is reduced to about that size while decoding
    (JPEG decodes at a fraction of its size directly); `scale` says by how much."""
    if not data:
        raise NotAnImageError("empty image: no bytes received")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image_format = image.format or ""
            width, height = image.size
            if image_format not in ACCEPTED_FORMATS:
                raise NotAnImageError(
                    f"unsupported image format {image_format or 'unknown'}; send one of "
                    f"{', '.join(sorted(v for v in ACCEPTED_FORMATS.values()))}"
                )
            if width > max_side or height > max_side:
                raise ImageTooLargeError(
                    f"image is {width}x{height} pixels; the largest side allowed is {max_side}")
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
            if working_side and max(width, height) > working_side and image_format == "JPEG":
                image.draft("RGB", (working_side, working_side))  # decode at 1/2, 1/4 or 1/8 scale
            image.load()  # decodes every pixel: a truncated file fails here
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise NotAnImageError("not an image: the bytes are not in any known image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError("image has too many pixels (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"truncated or corrupt image: {error}") from None
    if width < min_side or height < min_side:
        raise ImageError(f"image is {width}x{height} pixels; the smallest side allowed is {min_side}")
    if expected_size is not None and (width, height) != expected_size:
        raise ImageError(
            f"image is {width}x{height} pixels; this station expects {expected_size[0]}x{expected_size[1]}"
        )
    if image.mode != "RGB":
        image = image.convert("RGB")
    if working_side and max(image.size) > working_side:
        factor = max(image.size) // working_side
        if factor >= 2:
            image = image.reduce(factor)  # a fast box average
        if max(image.size) > working_side:
            image.thumbnail((working_side, working_side), Image.Resampling.BILINEAR)
    return DecodedImage(np.asarray(image), ACCEPTED_FORMATS[image_format], width, height, data,
                        width / image.size[0])
