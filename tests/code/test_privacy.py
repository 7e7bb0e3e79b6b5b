"""The privacy audit's attacks on known answers: inversion, appearance linkage, rank-1 ties, the 1 % FMR threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage.metrics import structural_similarity

from anonbench import faces
from anonbench.analysis import privacy as pv
from anonbench.anonymizers import classic
from anonbench.anonymizers.masks import to_person
from anonbench.config import Anonymize, HsvBins
from anonbench.images import read_image


def texture(check: int = 8, size: int = 96) -> np.ndarray:
    """A BGR test card: checks of ``check`` pixels, a bright disc and a colour ramp, edges a blur erases."""
    yy, xx = np.mgrid[:size, :size]
    checks = (((yy // check) + (xx // check)) % 2) * 160 + 40
    disc = ((yy - size / 2) ** 2 + (xx - size / 3) ** 2 < (size / 5) ** 2) * 60
    ramp = xx * 200 // size
    return np.stack([checks, np.clip(checks + disc, 0, 255), ramp], axis=-1).astype(np.uint8)


def whole_person(size: int) -> list:
    mask = np.zeros((size, size), bool)
    mask[8:-8, 8:-8] = True
    return [to_person(mask, 0)]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


# Sigma 1.6 runs the blur's direct Gaussian, 4.8 its reduced-resolution one; the coarser checks at 4.8
# keep detail that survives the blur above 8-bit rounding (finer detail is gone, for an attacker too).
@pytest.mark.parametrize(
    ("sigma_fraction", "check"), [(0.02, 8), (0.06, 16)], ids=["direct-sigma", "reduced-resolution-sigma"]
)
def test_blur_inverted_with_the_known_kernel_is_closer_to_the_original(sigma_fraction: float, check: int) -> None:
    image, persons = texture(check), whole_person(96)
    blur = classic.Blur(sigma_fraction=sigma_fraction, min_sigma=1.0)
    params = Anonymize.model_validate({"blur": blur.model_dump()})
    sigma = classic.blur_sigma(persons[0], blur)
    assert (sigma > classic.DIRECT_SIGMA) == (sigma_fraction > 0.05)  # both of the blur's code paths
    blurred = classic.blur(image, persons, blur)
    inverted = pv.invert("blur", blurred, persons, params, iterations=30)
    inside = np.s_[8:-8, 8:-8]
    assert ssim(inverted[inside], image[inside]) > ssim(blurred[inside], image[inside]) + 0.03
    assert np.array_equal(inverted[:8], image[:8])  # outside the person nothing changes


def test_pixelation_inverted_by_bicubic_block_means_is_closer_to_a_smooth_original() -> None:
    yy, xx = np.mgrid[:96, :96]
    smooth = np.stack([xx * 2.5, yy * 2.5, (xx + yy) * 1.2], axis=-1)
    image = np.clip(smooth + 30 * np.sin(xx / 9.0)[..., None], 0, 255).astype(np.uint8)
    persons = whole_person(96)
    pixelate = classic.Pixelate(block_px=8)
    params = Anonymize.model_validate({"pixelate": pixelate.model_dump()})
    pixelated = classic.pixelate(image, persons, pixelate)
    inverted = pv.invert("pixelate", pixelated, persons, params, iterations=1)
    inside = np.s_[8:-8, 8:-8]
    assert ssim(inverted[inside], image[inside]) > ssim(pixelated[inside], image[inside]) + 0.05


def test_no_inversion_for_mask() -> None:
    with pytest.raises(ValueError, match="no inversion"):
        pv.invert("mask", texture(), whole_person(96), Anonymize(), iterations=1)


def distinct_persons(count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One image with ``count`` side-by-side persons, each its own hue with some shading, and their masks."""
    width = 20
    hsv = np.zeros((60, count * width, 3), np.uint8)
    masks = []
    for n in range(count):
        hsv[:, n * width : (n + 1) * width] = (n * 180 // count, 200, 120)
        hsv[30:, n * width : (n + 1) * width, 2] = 220  # a lighter lower half: two value bins per person
        mask = np.zeros(hsv.shape[:2], bool)
        mask[5:55, n * width + 3 : (n + 1) * width - 3] = True
        masks.append(mask)
    return np.ascontiguousarray(cv2_bgr(hsv)), masks


def cv2_bgr(hsv: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def test_appearance_linkage_is_perfect_on_originals_and_chance_after_mask() -> None:
    count, bins = 6, HsvBins(hue=16, saturation=4, value=4)
    image, masks = distinct_persons(count)
    gallery = np.array([pv.appearance(image, m, bins) for m in masks])
    assert np.allclose(gallery.sum(1), 1.0)
    assert pv.rank1_credit(gallery, gallery, pv.hellinger).tolist() == [1.0] * count

    masked = classic.mask(image, [to_person(m, 0) for m in masks], Anonymize().mask)
    probes = np.array([pv.appearance(masked, m, bins) for m in masks])
    credit = pv.rank1_credit(probes, gallery, pv.hellinger)
    # Identical probes share one nearest original: exactly one of them is right, 1/count on average.
    assert credit.sum() == pytest.approx(1.0)
    assert credit.mean() == pytest.approx(1.0 / count)


def test_rank1_credit_shares_ties() -> None:
    gallery = np.array([[0.0], [2.0], [10.0]])
    probes = np.array([[1.0], [2.1], [9.0]])  # probe 0 is as near to 0 as to 2
    assert pv.rank1_credit(probes, gallery, pv.euclidean).tolist() == [0.5, 1.0, 1.0]


def test_threshold_and_true_match_rate_on_a_known_case() -> None:
    gallery = np.array([[0.0], [1.0], [3.0], [7.0]])  # impostor distances: 1, 2, 3, 4, 6, 7
    assert pv.impostor_threshold(gallery, 0.01) == 1.0  # floor(0.06) = 0: below the smallest, no impostor
    assert pv.impostor_threshold(gallery, 0.2) == 2.0  # floor(1.2) = 1: one impostor pair (1) below 2
    assert pv.impostor_threshold(gallery[:1]) is None
    probes = gallery + np.array([[0.0], [0.5], [1.5], [0.99]])
    result = pv.link(gallery, probes, None, np.eye(2), np.eye(2))
    assert result.threshold == 1.0
    assert result.tmr_naive == 0.75  # genuine distances 0, 0.5, 0.99 are below 1; 1.5 is not
    assert result.tmr_inverted is None and result.inverted is None


def test_metrics_by_size_and_void_rates() -> None:
    frame = pd.DataFrame({"size": ["small", "outside"], "detected_after": [True, False]})
    persons = pd.DataFrame({"size": ["large"]})
    result = pv.Linkage(np.array([1.0, 0.0]), None, np.array([1.0]), 0.5, 0.5, None)
    out = pv.metrics(frame, persons, result, None, [3, 3])
    assert out["faces"] == 2 and out["detected_rate"] == 0.5
    assert out["linkage"] == {
        "naive": {"rank1": 0.5, "chance": 0.5, "tmr_at_fmr_1pct": 0.5, "threshold": 0.5},
        "inversion": {"rank1": None, "tmr_at_fmr_1pct": None, "how": None},
        "appearance": {"rank1": 1.0, "chance": 1.0, "persons": 1},
    }
    assert out["residual_faces"] == 2 and out["residual_image_ids"] == [3]
    assert out["by_size"]["medium"] == {
        "faces": 0,
        "detected_rate": None,
        "naive_rank1": None,
        "inversion_rank1": None,
        "appearance_rank1": None,
        "appearance_persons": 0,
    }
    assert out["by_size"]["small"]["naive_rank1"] == 1.0 and out["by_size"]["large"]["appearance_rank1"] == 1.0


def test_boxes_sizes_and_regions() -> None:
    assert pv.size_bucket(None) == "outside"
    assert [pv.size_bucket(a) for a in (1023.0, 1024.0, 9215.0, 9216.0)] == ["small", "medium", "medium", "large"]
    assert pv.iou((0, 0, 2, 2), (1, 0, 2, 2)) == pytest.approx(1 / 3)
    region = np.zeros((10, 10), np.uint8)
    region[:, :5] = 1
    assert pv.region_share((0, 0, 10, 10), region) == 0.5
    assert pv.region_share((20, 20, 5, 5), region) == 0.0


def test_face_models_are_the_pinned_files() -> None:
    for name in faces.MODELS:
        assert faces.model_path(name).is_file()
    assert "shape_predictor_68_face_landmarks.dat" not in {file for file, _ in faces.MODELS.values()}


def test_both_detectors_find_the_same_face_and_its_embedding_is_stable(coco_mini: Path) -> None:
    image = read_image(coco_mini / "val2017" / "000000085329.jpg")  # one frontal face, about 190 px wide
    hog, cnn = faces.detect(image, "hog", 0), faces.detect(image, "cnn", 0)
    assert len(hog) == len(cnn) == 1 and pv.iou(hog[0], cnn[0]) > 0.3
    embedded = faces.embed(image, [hog[0], cnn[0]], "hog")
    assert embedded.shape == (2, faces.EMBEDDING_SIZE)
    # Landmarks put the face chip in the same place from either box: the same person by dlib's 0.6.
    assert np.linalg.norm(embedded[0] - embedded[1]) < 0.6


def test_a_model_file_that_is_not_the_pinned_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    file_name, _ = faces.MODELS["embedding"]
    monkeypatch.setitem(faces.MODELS, "embedding", (file_name, "0" * 64))
    with pytest.raises(faces.FaceModelError, match=f"{file_name}: SHA-256 .* expected 0{{64}}"):
        faces.model_path("embedding")
