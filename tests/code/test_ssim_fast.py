"""Exactness of the fast SSIM against skimage itself (the oracle), on real coco-mini images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import uniform_filter
from skimage.metrics import structural_similarity

from anonbench.images import read_image
from anonbench.ssim_fast import SsimIndex, SsimInputError, component_maps, crop_bounds

TOLERANCE = 1e-6
VAL = "val2017"
GRAY_IMAGE = "train2017/000000000086.jpg"  # the grayscale JPEG of coco-mini


def skimage_ssim(original: np.ndarray, variant: np.ndarray, bounds: tuple[int, int, int, int]) -> float:
    """The slow way: skimage on the crop of both images, its defaults, 8-bit data range."""
    x0, y0, x1, y1 = bounds
    axis = 2 if original.ndim == 3 else None
    return float(
        structural_similarity(original[y0:y1, x0:x1], variant[y0:y1, x0:x1], data_range=255, channel_axis=axis)
    )


def blur_boxes(image: np.ndarray, boxes: list[list[float]]) -> np.ndarray:
    """A synthetic variant: every given box blurred, as a blur anonymizer would."""
    out = image.copy()
    height, width = image.shape[:2]
    for bbox in boxes:
        x0, y0, x1, y1 = crop_bounds(bbox, width, height)
        if x1 - x0 > 1 and y1 - y0 > 1:
            out[y0:y1, x0:x1] = cv2.GaussianBlur(image[y0:y1, x0:x1], (0, 0), 4)
    return out


def check_region(
    index: SsimIndex, original: np.ndarray, variant: np.ndarray, bounds: tuple[int, int, int, int]
) -> None:
    x0, y0, x1, y1 = bounds
    scores = index.region(bounds)
    if min(x1 - x0, y1 - y0) < index.win_size:
        assert math.isnan(scores.ssim) and "smaller than the 7x7 window" in scores.reason
        with pytest.raises(ValueError, match="win_size exceeds image extent"):
            skimage_ssim(original, variant, bounds)
        return
    assert scores.reason == ""
    assert scores.ssim == pytest.approx(skimage_ssim(original, variant, bounds), abs=TOLERANCE), bounds


def test_every_image_and_box_of_coco_mini_val_matches_skimage(coco_mini: Path) -> None:
    """All 50 val images with all of their 382 ground-truth boxes (about 10 s on 2 cores)."""
    instances = json.loads((coco_mini / "annotations" / f"instances_{VAL}.json").read_text())
    boxes: dict[int, list[list[float]]] = {im["id"]: [] for im in instances["images"]}
    persons: dict[int, list[list[float]]] = {im["id"]: [] for im in instances["images"]}
    for ann in instances["annotations"]:
        boxes[ann["image_id"]].append(ann["bbox"])
        if ann["category_id"] == 1:
            persons[ann["image_id"]].append(ann["bbox"])
    for info in instances["images"]:
        original = read_image(coco_mini / VAL / info["file_name"])
        # Persons blurred; in an image without persons, its first object (or nothing, if it has none).
        variant = blur_boxes(original, persons[info["id"]] or boxes[info["id"]][:1])
        index = SsimIndex(original, variant)
        height, width = original.shape[:2]
        check_region(index, original, variant, (0, 0, width, height))
        for bbox in boxes[info["id"]]:
            check_region(index, original, variant, crop_bounds(bbox, width, height))
    assert len(instances["images"]) == 50 and sum(map(len, boxes.values())) == 382


def random_bounds(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """A random crop; a third hug a border, a fifth are thinner than the window."""
    w = int(rng.integers(1, 7)) if rng.random() < 0.2 else int(rng.integers(7, width + 1))
    h = int(rng.integers(1, height + 1))
    x0 = 0 if rng.random() < 0.15 else int(rng.integers(0, width - w + 1))
    y0 = height - h if rng.random() < 0.15 else int(rng.integers(0, height - h + 1))
    return x0, y0, x0 + w, y0 + h


@pytest.mark.parametrize("change", ["sparse", "everywhere"])
def test_random_boxes_at_borders_and_below_the_window(coco_mini: Path, change: str) -> None:
    rng = np.random.default_rng(0)
    original = read_image(coco_mini / VAL / "000000017627.jpg")
    height, width = original.shape[:2]
    if change == "sparse":  # a few changed pixels, one in a corner: the changed block must cover their windows
        variant = original.copy()
        for y, x in [(0, 0), (height - 1, width // 2), (height // 3, width - 2)]:
            variant[y, x] = 255 - variant[y, x]
    else:  # a JPEG round trip touches nearly every pixel
        variant = cv2.imdecode(cv2.imencode(".jpg", original, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_COLOR)
    index = SsimIndex(original, variant)
    check_region(index, original, variant, (0, 0, width, height))
    for _ in range(60):
        check_region(index, original, variant, random_bounds(rng, width, height))


def test_grayscale_image(coco_mini: Path) -> None:
    gray = cv2.imread(str(coco_mini / GRAY_IMAGE), cv2.IMREAD_GRAYSCALE)
    assert gray.ndim == 2
    height, width = gray.shape
    variant = gray.copy()
    variant[100:300, 150:400] = cv2.GaussianBlur(gray[100:300, 150:400], (0, 0), 3)
    index = SsimIndex(gray, variant)
    rng = np.random.default_rng(1)
    for bounds in [(0, 0, width, height), *(random_bounds(rng, width, height) for _ in range(30))]:
        check_region(index, gray, variant, bounds)
    # Decoded as every stage decodes (three equal channels), the score is the grayscale one.
    as_color = SsimIndex(read_image(coco_mini / GRAY_IMAGE), cv2.cvtColor(variant, cv2.COLOR_GRAY2BGR))
    assert as_color.whole().ssim == pytest.approx(index.whole().ssim, abs=1e-12)


def reference_factors(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Eq. 1a-1c written out with skimage's window statistics, cropped to whole windows."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    n, c1, c2 = 49, (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = uniform_filter(x, 7), uniform_filter(y, 7)
    vx = (uniform_filter(x * x, 7) - mx * mx) * n / (n - 1)
    vy = (uniform_filter(y * y, 7) - my * my) * n / (n - 1)
    vxy = (uniform_filter(x * y, 7) - mx * my) * n / (n - 1)
    sigma = np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None))
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    con = (2 * sigma + c2) / (vx + vy + c2)
    struct = (vxy + c2 / 2) / (sigma + c2 / 2)
    return tuple(m[3:-3, 3:-3] for m in (lum, con, struct))


def test_component_maps_factor_and_match_skimage_window_by_window(coco_mini: Path) -> None:
    original = read_image(coco_mini / VAL / "000000025560.jpg")[:160, :200]
    variant = blur_boxes(original, [[30.5, 20.2, 120.0, 100.7]])
    variant[120:, :] = np.clip(variant[120:, :].astype(int) + 40, 0, 255).astype(np.uint8)  # a lighting change
    maps = component_maps(original, variant)
    ssim, lum, con, struct = maps
    assert np.abs(lum * con * struct - ssim).max() < TOLERANCE
    _, full = structural_similarity(original, variant, data_range=255, channel_axis=2, full=True)
    assert np.abs(ssim - full[3:-3, 3:-3]).max() < TOLERANCE
    for ch in range(3):
        for ours, theirs in zip(
            (lum, con, struct), reference_factors(original[..., ch], variant[..., ch]), strict=True
        ):
            assert np.abs(ours[..., ch] - theirs).max() < TOLERANCE
    # A region's factors are the means of the channel-averaged maps over its windows.
    scores = SsimIndex(original, variant).region((10, 20, 110, 150))
    window_means = maps[:, 20:144, 10:104].mean(axis=(1, 2, 3))
    assert np.allclose([scores.ssim, scores.luminance, scores.contrast, scores.structure], window_means, atol=1e-12)
    assert scores.luminance < 1 and scores.contrast < 1 and scores.structure < 1


def test_unchanged_pair_is_exactly_one(coco_mini: Path) -> None:
    image = read_image(coco_mini / VAL / "000000017627.jpg")
    index = SsimIndex(image, image.copy())
    assert index.changed_fraction == 0.0
    assert index.whole().as_dict() == {"ssim": 1.0, "luminance": 1.0, "contrast": 1.0, "structure": 1.0, "reason": ""}
    assert structural_similarity(image, image, data_range=255, channel_axis=2) == 1.0


def test_crop_bounds_cover_the_float_box_and_clip_to_the_image() -> None:
    assert crop_bounds([10.2, 5.9, 20.1, 3.05], 640, 480) == (10, 5, 31, 9)
    assert crop_bounds([630.5, 470.0, 20.0, 20.0], 640, 480) == (630, 470, 640, 480)
    assert crop_bounds([-3.0, -1.5, 10.0, 10.0], 640, 480) == (0, 0, 7, 9)
    assert crop_bounds([12.0, 7.0, 0.0, 0.0], 640, 480) == (12, 7, 12, 7)


def test_bad_input_is_refused_with_a_reason() -> None:
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(SsimInputError, match="sizes differ"):
        SsimIndex(image, np.zeros((20, 31, 3), np.uint8))
    with pytest.raises(SsimInputError, match="8-bit"):
        SsimIndex(image.astype(np.float32), image.astype(np.float32))
    with pytest.raises(SsimInputError, match="odd"):
        SsimIndex(image, image, win_size=4)
    tiny = SsimIndex(np.zeros((5, 40), np.uint8), np.full((5, 40), 9, np.uint8))
    assert math.isnan(tiny.whole().ssim) and "40x5 px is smaller" in tiny.whole().reason
    with pytest.raises(ValueError, match="outside"):
        SsimIndex(image, image).region((0, 0, 31, 20))
