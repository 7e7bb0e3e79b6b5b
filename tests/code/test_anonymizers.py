"""Person masks, the classic methods and the DeepPrivacy2 adapter's conversions."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from anonbench.anonymizers import classic, plugins
from anonbench.anonymizers.classic import Pixelate
from anonbench.anonymizers.dp2 import Dp2Unavailable, require_dp2
from anonbench.anonymizers.masks import changed_pixels, decode_segmentation, person_masks
from anonbench.config import CLASSIC_METHODS, Config, DeepPrivacy2

H, W = 60, 80
SQUARE = [[10.0, 10.0, 40.0, 10.0, 40.0, 40.0, 10.0, 40.0]]  # polygon covering x, y in [10, 40]


def person(segmentation: object, bbox: list[float], iscrowd: int = 0) -> dict[str, object]:
    return {"category_id": 1, "segmentation": segmentation, "bbox": bbox, "iscrowd": iscrowd}


def test_segmentations_decode_like_pycocotools() -> None:
    polygon_mask = decode_segmentation(SQUARE, H, W)
    assert polygon_mask is not None
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(SQUARE, H, W))).astype(bool)
    assert (polygon_mask == expected).all()
    compressed = mask_utils.encode(np.asfortranarray(expected.astype(np.uint8)))
    for rle in ({**compressed, "counts": compressed["counts"].decode()}, compressed):
        assert (decode_segmentation(rle, H, W) == expected).all()
    # Uncompressed RLE, as COCO stores crowd regions: column-major runs starting with zeros.
    flat = expected.flatten(order="F")
    uncompressed = {"size": [H, W], "counts": np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()}
    assert (decode_segmentation(uncompressed, H, W) == expected).all()
    for bad in ([], [[1.0, 2.0, 3.0]], {"size": [H, W], "counts": [5, 5]}, {"size": [1, 1], "counts": "0"}, None):
        assert decode_segmentation(bad, H, W) is None


def test_person_masks_count_every_person() -> None:
    anns = [
        person(SQUARE, [10, 10, 30, 30]),
        person([], [50, 5, 20, 20]),  # degenerate: the box is used
        person([[0.0]], [0, 0, 0, 0]),  # neither mask nor box
        person([[60.0, 50.0, 65.0, 50.0, 65.0, 55.0]], [60, 50, 5, 5]),  # under 8 px
        person(mask_utils.encode(np.asfortranarray(np.ones((H, W), np.uint8))), [0, 0, W, H], iscrowd=1),
        {"category_id": 2, "segmentation": SQUARE, "bbox": [10, 10, 30, 30]},  # not a person
    ]
    masks = person_masks(anns, person_id=1, height=H, width=W, dilation_px=2, min_person_px=8)
    assert masks.counts == {
        "persons_gt": 5,
        "persons_anonymized": 3,
        "persons_small": 1,
        "persons_degenerate": 1,
        "persons_empty": 1,
        "crowd_regions": 1,
    }
    assert [p.area for p in masks.persons] == sorted((p.area for p in masks.persons), reverse=True)
    assert masks.gt.all() and masks.region().all()


def test_dilation_grows_the_mask_by_its_radius() -> None:
    bare = person_masks([person(SQUARE, [10, 10, 30, 30])], 1, H, W, dilation_px=0, min_person_px=8)
    grown = person_masks([person(SQUARE, [10, 10, 30, 30])], 1, H, W, dilation_px=3, min_person_px=8)
    ys, xs = np.nonzero(bare.region())
    gys, gxs = np.nonzero(grown.region())
    assert (gys.min(), gys.max(), gxs.min(), gxs.max()) == (ys.min() - 3, ys.max() + 3, xs.min() - 3, xs.max() + 3)
    assert (grown.region() >= bare.region()).all() and (grown.gt == bare.gt).all()


@pytest.mark.parametrize("method", CLASSIC_METHODS)
def test_classic_methods_change_only_the_masked_pixels(method: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    anns = [person(SQUARE, [10, 10, 30, 30]), person([[45.0, 5.0, 75.0, 5.0, 75.0, 55.0, 45.0, 55.0]], [45, 5, 30, 50])]
    masks = person_masks(anns, 1, H, W, dilation_px=2, min_person_px=8)
    anonymizer = plugins.get(method)  # the registry's entry point: the path the anonymize stage takes
    out, painted, _ = anonymizer(image, masks.persons, anonymizer.params(), np.random.default_rng(0))  # no counts
    changed, region = changed_pixels(image, out), masks.region()
    assert (painted == region).all() and not (changed & ~region).any()
    assert changed[region].mean() > 0.9  # on noise nearly every masked pixel moves


def test_pixelate_block_sizes() -> None:
    image = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    masks = person_masks([person([[0.0, 0.0, 80.0, 0.0, 80.0, 60.0, 0.0, 60.0]], [0, 0, 80, 60])], 1, H, W, 0, 8)
    (whole,) = masks.persons
    assert classic.block_size(whole, Pixelate(block_fraction=0.1)) == 8
    assert classic.block_size(whole, Pixelate(block_px=5)) == 5
    out = classic.pixelate(image, masks.persons, Pixelate(block_px=5))
    blocks = out.reshape(12, 5, 16, 5, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # every 5 x 5 cell is one colour: its mean
    assert np.abs(blocks[0, 0, 0, 0].astype(float) - image[:5, :5].reshape(-1, 3).mean(0)).max() <= 0.5


def test_dp2_conversions_round_trip() -> None:
    pytest.importorskip("torch")  # the adapter's tensors; the CPU image has no torch, the dev venv does
    from anonbench.anonymizers.dp2 import from_dp2, masks_to_dp2, to_dp2

    image = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    tensor = to_dp2(image)
    assert tuple(tensor.shape) == (3, H, W) and str(tensor.dtype) == "torch.uint8"
    assert (tensor[0].numpy() == image[:, :, 2]).all()  # red first: DP2 takes RGB, OpenCV gives BGR
    assert (from_dp2(tensor) == image).all()
    masks = person_masks([person(SQUARE, [10, 10, 30, 30])], 1, H, W, 0, 0)
    stacked = masks_to_dp2([masks.region()], image.shape)
    assert tuple(stacked.shape) == (1, H, W) and (stacked[0].numpy() == masks.gt).all()
    assert tuple(masks_to_dp2([], image.shape).shape) == (0, H, W)


@pytest.mark.skipif(importlib.util.find_spec("dp2") is not None, reason="DeepPrivacy2 is installed here")
def test_dp2_missing_fails_at_once_naming_where_it_runs(make_config: Callable[..., Config]) -> None:
    from anonbench.stages import anonymize

    cfg = make_config()
    with pytest.raises(Dp2Unavailable, match=r"make dp2-env.*docker/dp2"):
        require_dp2(DeepPrivacy2())
    with pytest.raises(Dp2Unavailable, match=r"make dp2-env.*docker/dp2"):
        anonymize.run(cfg, "dp2_fullbody")
    with pytest.raises(ValueError, match="dp2_face needs mode=detector"):
        anonymize.run(make_config("anonymize.dp2.mode=gt"), "dp2_face")
    assert not cfg.variant_root("dp2_fullbody").exists()
