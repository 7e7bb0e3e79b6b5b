"""Decoding and encoding images one way for every stage.

Images are decoded to 3-channel 8-bit BGR in raw pixel order: EXIF orientation
is ignored because COCO's annotations refer to the stored pixels, and a
grayscale original comes back with its value in all three channels. Stages
that compare a variant with its original (anonymize, ssim) decode both with
:func:`read_image`, so "bit-identical outside the anonymized region" has one
meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

ImageFormat = Literal["png", "jpeg"]
EXTENSIONS: dict[str, str] = {"png": ".png", "jpeg": ".jpg"}
READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


class UnreadableImage(ValueError):
    """An image file is missing or cannot be decoded; the message names the file."""


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to an H x W x 3 uint8 BGR array.

    Raises:
        UnreadableImage: If the file is missing, empty or not a decodable image.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise UnreadableImage(f"{path}: cannot read ({exc.strerror})") from None
    image = cv2.imdecode(data, READ_FLAGS) if data.size else None
    if image is None:
        raise UnreadableImage(f"{path}: not a decodable image")
    return image


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An anonymize stage region mask as 0/1 uint8; an absent mask means nothing was anonymized.

    Args:
        path: ``masks/<split>/<stem>.png`` of a variant.
        shape: The image's height and width, which the mask must have.

    Raises:
        UnreadableImage: The mask cannot be decoded or its size is not the image's.
    """
    if not path.exists():
        return np.zeros(shape, np.uint8)
    mask = read_image(path)[:, :, 0]
    if mask.shape != shape:
        raise UnreadableImage(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    return (mask > 0).astype(np.uint8)


def encode_image(image: np.ndarray, fmt: ImageFormat = "png", jpeg_quality: int = 95, bilevel: bool = False) -> bytes:
    """Encode an image; PNG is lossless (and deterministic for one OpenCV build), JPEG is not.

    Args:
        image: H x W x 3 (or H x W) uint8 array.
        fmt: ``png`` or ``jpeg``.
        jpeg_quality: JPEG quality 1..100 (ignored for PNG).
        bilevel: Write a 0/255 single-channel image as a 1-bit PNG (half the time, decodes to 0/255).

    Returns:
        The encoded file contents.
    """
    if fmt == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    else:
        params = [cv2.IMWRITE_PNG_BILEVEL, 1] if bilevel else []
    ok, buffer = cv2.imencode(EXTENSIONS[fmt], image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return buffer.tobytes()
