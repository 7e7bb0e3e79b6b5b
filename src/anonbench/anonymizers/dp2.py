"""DeepPrivacy2 adapter, written against its public Python API (shared/notes/deepprivacy2.md).

DeepPrivacy2 needs detectron2/DensePose, a GPU and downloaded weights, so it
lives only in the image built from ``docker/dp2``; torch and dp2 are imported
lazily and :func:`require_dp2` fails at once, naming that image, anywhere
else. The adapter converts between anonbench's arrays (H x W x 3 BGR uint8,
boolean masks) and DP2's tensors (3 x H x W RGB uint8, N x H x W bool), seeds
DP2's global RNGs per image, and reports the region it changed.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from anonbench.anonymizers.masks import Person, union
from anonbench.config import DeepPrivacy2

if TYPE_CHECKING:
    import torch

DP2_IMAGE = "docker/dp2"


class Dp2Unavailable(RuntimeError):
    """DeepPrivacy2 was asked for where it cannot run."""


def require_dp2() -> None:
    """Fail at once, naming the DP2 image, unless DeepPrivacy2 and its toolbox are importable.

    Raises:
        Dp2Unavailable: If ``dp2`` or ``tops`` cannot be imported.
    """
    for module in ("dp2", "tops"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise Dp2Unavailable(
                f"DeepPrivacy2 is not installed here ({exc}); run dp2 methods, or mask_source=detector, "
                f"in the DeepPrivacy2 image built from {DP2_IMAGE}/ (see docs/anonymize.md)"
            ) from None


def to_dp2(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 BGR uint8 array to the 3 x H x W RGB uint8 tensor DP2 takes."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)))


def from_dp2(tensor: torch.Tensor) -> np.ndarray:
    """DP2's 3 x H x W RGB uint8 tensor back to an H x W x 3 BGR uint8 array."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy().transpose(1, 2, 0)[:, :, ::-1])


def masks_to_dp2(persons: Sequence[Person], shape: tuple[int, ...]) -> torch.Tensor:
    """Person masks as the N x H x W bool tensor of a DP2 ``PersonDetection``."""
    import torch

    stacked = np.stack([union([p], shape) for p in persons]) if persons else np.zeros((0, *shape[:2]), dtype=bool)
    return torch.from_numpy(stacked)


class Dp2Anonymizer:
    """One loaded DeepPrivacy2 anonymizer (full body or face); load once per process."""

    def __init__(self, params: DeepPrivacy2, method: str) -> None:
        """Load the DP2 config and generator from ``params.repo_dir`` (its configs are relative paths).

        Args:
            params: The ``anonymize.dp2`` section.
            method: ``dp2_fullbody`` or ``dp2_face``; the detector source also uses the full-body config.
        """
        require_dp2()
        from dp2.utils import load_config
        from tops.config import instantiate

        self.params = params
        config = params.face_config if method == "dp2_face" else params.fullbody_config
        if str(params.repo_dir) not in sys.path:
            sys.path.insert(0, str(params.repo_dir))  # dp2.anonymizer imports the top-level stylemc.py
        with contextlib.chdir(params.repo_dir):
            self.anonymizer = instantiate(load_config(config).anonymizer, load_cache=False)

    def _gt_detection(self, tensor: torch.Tensor, persons: Sequence[Person]) -> Any:
        """A DP2 ``PersonDetection`` from ground-truth masks, as the COCO study of its authors built it."""
        import tops
        from dp2.detection.structures import PersonDetection

        if self.anonymizer.generators.get(PersonDetection) is None:
            raise Dp2Unavailable(
                "mask_source=gt needs a DP2 config with a generator for plain person masks "
                "(person_G_cfg), e.g. anonymize.dp2.fullbody_config=configs/anonymizers/FB_cse_mask.py"
            )
        segmentation = tops.to_cuda(masks_to_dp2(persons, (tensor.shape[1], tensor.shape[2])))
        return PersonDetection(segmentation, **self.anonymizer.detector.post_process_cfg, orig_imshape_CHW=tensor.shape)

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """Person masks (H x W bool) from DP2's own detector, after its size filter."""
        import tops
        import torch

        with torch.no_grad():
            detections = self.anonymizer.detector(tops.to_cuda(to_dp2(image)))
        return [m.cpu().numpy().astype(bool) for det in detections if len(det) for m in det.segmentation]

    def __call__(self, image: np.ndarray, persons: Sequence[Person] | None, seed: int) -> tuple[np.ndarray, int]:
        """Anonymize one image.

        Args:
            image: H x W x 3 BGR uint8.
            persons: Ground-truth persons to anonymize, or None to use DP2's detector.
            seed: Per-image seed for DP2's global numpy and torch RNGs (order-independent output).

        Returns:
            The anonymized image and the number of persons DP2 anonymized.
        """
        import tops
        import torch

        np.random.seed(seed)
        torch.manual_seed(seed)
        tensor = tops.to_cuda(to_dp2(image))
        if persons is None:
            detections = self.anonymizer.detector(tensor)
        else:
            detections = [self._gt_detection(tensor, persons)] if persons else []
        count = sum(len(det) for det in detections)
        if not count:
            return image.copy(), 0
        out = self.anonymizer(
            tensor,
            detections=detections,
            amp=self.params.amp,
            truncation_value=self.params.truncation,
            multi_modal_truncation=False,
        )
        return from_dp2(out), count
