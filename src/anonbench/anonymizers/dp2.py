"""DeepPrivacy2 adapter, written against DP2's public Python API (shared/notes/deepprivacy2.md).

DP2 (with detectron2/DensePose built from source) lives in its own environment: ``make dp2-env``
(``.venv-dp2``) or the image built from ``docker/dp2``; torch and dp2 are imported lazily and
:func:`require_dp2` fails at once, with one line, anywhere else. The adapter

- loads DP2 for a *mode* (:data:`MODE_CONFIGS`): ``detector`` is the seed study's ``FB_cse.py``
  with all its defaults; ``gt`` builds a ``PersonDetection`` from ground-truth masks with that
  config's post-processing (same crop, dilation and 32x32 size filter) and DP2's generator
  without CSE embeddings;
- with ``untrained``, builds each generator from a copy of its DP2 config without checkpoint
  (:func:`untrained_config`), which DP2 answers with randomly initialised weights;
- points DP2's caches at the weights folder (``TORCH_HOME`` and ``FVCORE_CACHE``, laid out by
  :mod:`anonbench.anonymizers.dp2_weights`) and refuses to start while a file is missing, so DP2
  never tries a download;
- converts between anonbench's arrays (H x W x 3 BGR uint8, H x W bool masks) and DP2's tensors
  (3 x H x W RGB uint8, N x H x W bool), seeds DP2's global RNGs per image, and reports how many
  persons DP2 generated and how many its size filter dropped (those keep their pixels);
- reports where DP2 was allowed to paint (:func:`paint_region`: each detection's dilated crop mask
  taken back to image pixels the way DP2 pastes its output) and the person masks it generated
  persons into, for relabel's extension proposals.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anonbench.anonymizers.dp2_weights import GENERATOR_KEYS, check_present, environment, required
from anonbench.config import DeepPrivacy2

if TYPE_CHECKING:
    import torch

DP2_HOME = "the DeepPrivacy2 environment (make dp2-env: .venv-dp2) or image (docker/dp2)"
# DP2's config each (method, mode) runs; `gt` names the generator it fills ground-truth masks with.
MODE_CONFIGS = {
    ("dp2_fullbody", "detector"): "configs/anonymizers/FB_cse.py",
    ("dp2_fullbody", "gt"): "configs/fdh/styleganL_nocse.py",
    ("dp2_face", "detector"): "configs/anonymizers/face.py",
}
# The seed study's anonymizer config: its detector's post-processing also shapes `gt` detections.
STUDY_CONFIG = MODE_CONFIGS["dp2_fullbody", "detector"]


class Dp2Unavailable(RuntimeError):
    """DeepPrivacy2 cannot run as asked here (not installed, no weights, no CUDA); one line says why."""


def config_path(params: DeepPrivacy2, method: str) -> str:
    """DP2's config (relative to its tree) that ``method`` runs in ``params.mode``.

    Raises:
        ValueError: For a combination DP2 has no config for (dp2_face with ground-truth masks).
    """
    key = (method, params.mode)
    if key not in MODE_CONFIGS:
        raise ValueError(
            f"{method} with anonymize.dp2.mode={params.mode}: no such DP2 setting "
            "(COCO has no face masks: dp2_face needs mode=detector)"
        )
    return MODE_CONFIGS[key]


def effective_amp(params: DeepPrivacy2) -> bool:
    """Whether DP2 runs with mixed precision: asked for, and on CUDA (it does nothing on the CPU)."""
    return params.amp and params.device == "cuda"


def settings_record(params: DeepPrivacy2, method: str) -> dict[str, Any]:
    """What a variant was made with, for its coverage file and the report: mode, weights, config, device."""
    return {
        "mode": params.mode,
        "untrained": params.untrained,
        "config": config_path(params, method),
        "device": params.device,
        "amp": effective_amp(params),
    }


def repo_dir(params: DeepPrivacy2) -> Path:
    """DP2's source tree: ``params.repo_dir``, else the one the DP2 environment installed.

    Raises:
        Dp2Unavailable: When ``repo_dir`` is not a DP2 tree, or no DP2 is installed.
    """
    if params.repo_dir is not None:
        repo = params.repo_dir.resolve()
        if not (repo / "dp2" / "__init__.py").is_file() or not (repo / STUDY_CONFIG).is_file():
            raise Dp2Unavailable(
                f"anonymize.dp2.repo_dir {params.repo_dir}: not a DeepPrivacy2 source tree "
                f"(expected dp2/__init__.py and {STUDY_CONFIG})"
            )
        if str(repo) not in sys.path:
            sys.path.insert(0, str(repo))  # before an installed DP2; dp2.anonymizer imports the top-level stylemc
    spec = importlib.util.find_spec("dp2")
    if spec is None or spec.origin is None:
        raise Dp2Unavailable(f"DeepPrivacy2 is not installed here: run dp2 methods in {DP2_HOME}; docs/anonymize.md")
    found = Path(spec.origin).resolve().parents[1]
    if params.repo_dir is not None and found != params.repo_dir.resolve():
        raise Dp2Unavailable(f"anonymize.dp2.repo_dir {params.repo_dir}: this process already uses DP2 from {found}")
    return found


def check_device(device: str) -> None:
    """Fail at once when CUDA is asked for and absent (no silent fallback to days on the CPU).

    ``cpu`` hides any GPU from DP2, which takes CUDA whenever torch sees it.

    Raises:
        Dp2Unavailable: With one line naming the setting.
    """
    import torch

    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if torch.cuda.is_available():
            raise Dp2Unavailable("anonymize.dp2.device=cpu, but this process already initialised CUDA")
    elif not torch.cuda.is_available():
        raise Dp2Unavailable(
            f"anonymize.dp2.device=cuda, but torch {torch.__version__} sees no CUDA device here: "
            "run on a GPU node, or set anonymize.dp2.device=cpu (slow: seconds per person)"
        )


def require_dp2(params: DeepPrivacy2) -> Path:
    """Fail at once, with one line, unless DP2 and its dependencies import and the device is there.

    Returns:
        DP2's source tree.

    Raises:
        Dp2Unavailable: If DP2, torch_ops, detectron2 or DensePose is missing, or CUDA is asked for and absent.
    """
    repo = repo_dir(params)
    for module in ("tops", "detectron2", "densepose"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise Dp2Unavailable(f"DeepPrivacy2's {module} does not import here ({exc}): use {DP2_HOME}") from None
    check_device(params.device)
    return repo


def untrained_config(repo: Path, config: str, folder: Path) -> Path:
    """Write a copy of one of DP2's generator configs without its checkpoint into ``folder``.

    DP2's ``build_trained_generator`` then finds neither ``common.model_url`` nor a checkpoint and
    returns the generator with random weights: its real architecture, untrained. The copy loads the
    original config (so nothing of DP2 is duplicated) and drops the two checkpoint keys.

    Returns:
        The written config file (its folder name holds no "configs": DP2 derives output paths from it).
    """
    target = folder / "untrained" / Path(config).name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        "# Written by anonbench (src/anonbench/anonymizers/dp2.py): DeepPrivacy2's "
        f"{config} without its checkpoint,\n# so DP2 builds this generator with random weights.\n"
        "from tops.config import LazyConfig\n\n"
        f"globals().update(LazyConfig.load({str(repo / config)!r}))\n"
        'del common["model_url"], common["model_md5sum"]  # noqa: F821 (defined by the update above)\n',
        encoding="utf-8",
    )
    return target


@contextlib.contextmanager
def dp2_process(repo: Path, weights: Path, scratch: Path) -> Iterator[None]:
    """Where DP2 loads: its tree as working directory, caches in the weights folder, chatter on stderr.

    ``TORCH_HOME`` (DP2's generators, CSE files) and ``FVCORE_CACHE`` (detectron2's iopath cache:
    Mask R-CNN, the DensePose embedding) point into ``weights`` for the rest of the process;
    ``BASE_OUTPUT_DIR`` (detector caches DP2 creates) into ``scratch``. torch >= 2.6 loads only
    tensors by default and DP2's checkpoints hold more: that default is lifted while DP2 loads,
    and DP2 checks each generator checkpoint's md5 sum against its config before loading it
    (tops.load_file_or_url); detectron2's .pkl files are read with pickle either way.
    """
    os.environ.update({**environment(weights), "BASE_OUTPUT_DIR": str(scratch / "outputs")})
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with contextlib.chdir(repo), contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")


def to_dp2(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 BGR uint8 array to the 3 x H x W RGB uint8 tensor DP2 takes."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)))


def from_dp2(tensor: torch.Tensor) -> np.ndarray:
    """DP2's 3 x H x W RGB uint8 tensor back to an H x W x 3 BGR uint8 array."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy().transpose(1, 2, 0)[:, :, ::-1])


def masks_to_dp2(masks: Sequence[np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
    """Full-image person masks as the N x H x W bool tensor of a DP2 ``PersonDetection``."""
    import torch

    stacked = np.stack([m.astype(bool) for m in masks]) if masks else np.zeros((0, *shape[:2]), dtype=bool)
    return torch.from_numpy(stacked)


@dataclass(frozen=True)
class Dp2Output:
    """One image through DP2."""

    image: np.ndarray
    """The result, H x W x 3 BGR uint8 (the input's pixels where DP2 wrote nothing)."""
    anonymized: int
    """Persons (or faces) DP2 generated."""
    below_size_filter: int
    """Persons DP2's own size filter dropped (expanded box under its minimum area): pixels kept."""
    boxes: np.ndarray
    """N x 4 ``x0, y0, x1, y1``: the expanded crop boxes of the generated persons, the only place DP2 writes."""
    painted: np.ndarray
    """H x W bool: where DP2 was allowed to paint (:func:`paint_region`); it repaints all of it."""
    persons: np.ndarray
    """H x W bool: the person masks DP2 generated persons into (ground truth or detected), after its size filter."""


class Dp2Anonymizer:
    """One loaded DeepPrivacy2 anonymizer; load once per process (seconds, and GPU memory)."""

    def __init__(self, params: DeepPrivacy2, method: str, seed: int) -> None:
        """Load DP2 for ``method`` in ``params.mode`` (weights checked first).

        Args:
            params: The ``anonymize.dp2`` section.
            method: ``dp2_fullbody`` or ``dp2_face``; ``detector`` (the classic methods' detector mask
                source) loads the study's detector alone.
            seed: Seeds torch before the generators are built, so untrained weights are reproducible.

        Raises:
            Dp2Unavailable: Without DP2 or the asked-for device.
            WeightsError: Naming each checkpoint the setting needs that is not in the weights folder.
        """
        config = STUDY_CONFIG if method == "detector" else config_path(params, method)
        repo = require_dp2(params)
        with contextlib.redirect_stdout(sys.stderr):  # DP2 prints while its modules import
            files = required(repo, config, generators=method != "detector" and not params.untrained)
        check_present(files, params.weights)

        import torch
        from dp2.anonymizer import Anonymizer
        from dp2.utils import load_config
        from tops.config import LazyConfig, instantiate

        self.params = params
        self._scratch = tempfile.TemporaryDirectory(prefix="anonbench-dp2-")
        scratch = Path(self._scratch.name)
        torch.manual_seed(seed)
        with dp2_process(repo, params.weights, scratch):
            post = dict(LazyConfig.load(str(repo / STUDY_CONFIG)).detector.cse_post_process_cfg)
            dropped = ("iou_combine_threshold", "normalize_embedding")  # CSE-only keys
            self.post_process = {k: v for k, v in post.items() if k not in dropped}
            if method == "detector" or params.mode == "detector":
                cfg = load_config(config)
                for key in GENERATOR_KEYS:
                    generator = cfg.anonymizer.get(key)
                    if generator is not None and method == "detector":
                        cfg.anonymizer[key] = None  # the detector alone
                    elif generator is not None and params.untrained:
                        cfg.anonymizer[key] = str(untrained_config(repo, generator, scratch))
                self.anonymizer = instantiate(cfg.anonymizer, load_cache=False)
            else:
                generator = str(untrained_config(repo, config, scratch)) if params.untrained else config
                self.anonymizer = Anonymizer(detector=None, person_G_cfg=generator)

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """Person masks (H x W bool) from DP2's detector after its size filter (classic methods, detector source)."""
        import tops
        import torch

        with torch.no_grad():
            detections = self.anonymizer.detector(tops.to_cuda(to_dp2(image)))
        return [m.cpu().numpy().astype(bool) for det in detections if len(det) for m in det.segmentation]

    def __call__(self, image: np.ndarray, masks: Sequence[np.ndarray] | None, seed: int) -> Dp2Output:
        """Anonymize one image.

        Args:
            image: H x W x 3 BGR uint8.
            masks: Ground-truth person masks (H x W bool, one a person) for mode ``gt``; None runs DP2's detector.
            seed: Per-image seed for DP2's global numpy and torch RNGs (order-independent output).

        Returns:
            The result and its counts.
        """
        import tops
        import torch
        from dp2.detection.structures import CSEPersonDetection, PersonDetection

        np.random.seed(seed)
        torch.manual_seed(seed)
        tensor = tops.to_cuda(to_dp2(image))
        with torch.no_grad():
            if masks is None:
                detections = self.anonymizer.detector(tensor)
            else:
                segmentation = tops.to_cuda(masks_to_dp2(masks, image.shape))
                detections = [PersonDetection(segmentation, **self.post_process, orig_imshape_CHW=tensor.shape)]
        persons = [d for d in detections if isinstance(d, PersonDetection | CSEPersonDetection)]
        offered = sum(len(d.segmentation) for d in persons)  # before pre_process applies the size filter
        generated = sum(len(d) for d in detections)
        kept = sum(len(d) for d in persons)
        boxes = np.concatenate([d.boxes.numpy().reshape(-1, 4) for d in persons]) if persons else np.zeros((0, 4))
        painted = paint_region(tensor, [d for d in detections if self.anonymizer.generators.get(type(d))])
        segmentation = np.zeros(image.shape[:2], dtype=bool)
        for d in persons:
            segmentation |= d.segmentation.cpu().numpy().reshape(-1, *image.shape[:2]).any(axis=0)
        if not generated:
            return Dp2Output(image.copy(), 0, offered - kept, boxes.astype(np.int64), painted, segmentation)
        out = self.anonymizer(
            tensor,
            detections=detections,
            amp=effective_amp(self.params),
            truncation_value=self.params.truncation,
            multi_modal_truncation=False,
        )
        return Dp2Output(from_dp2(out), generated, offered - kept, boxes.astype(np.int64), painted, segmentation)


def paint_region(image: torch.Tensor, detections: Sequence[Any]) -> np.ndarray:
    """Where DP2 pastes generated pixels for ``detections`` (H x W bool), without generating anything.

    DP2's ``Anonymizer.anonymize_detections`` takes each detection's crop (``get_crop``: the expanded
    box and its mask, 0 where the generator paints: the dilated person in the 288 x 160 crop), resizes
    the mask to the box with nearest-neighbour interpolation, cuts the padding off where the box
    leaves the image, and writes where the mask is 0. This does the same steps on the same crops, so
    it is the region DP2 repaints, in image pixels, whatever the generator puts there.

    Args:
        image: The 3 x H x W uint8 tensor DP2 gets (only its size and crops are used).
        detections: Pre-processed DP2 detections that have a generator.

    Returns:
        The union over every detection's persons (or faces).
    """
    from torchvision.transforms import functional

    height, width = image.shape[-2:]
    region = np.zeros((height, width), dtype=bool)
    for detection in detections:
        for idx in range(len(detection)):
            crop = detection.get_crop(idx, image)
            x0, y0, x1, y1 = (int(v) for v in crop["boxes"][0])
            keep = functional.resize(crop["mask"][0], [y1 - y0, x1 - x0], functional.InterpolationMode.NEAREST)
            keep = keep.squeeze(0).cpu().numpy() > 0.5
            top, left = max(-y0, 0), max(-x0, 0)
            inside = keep[top : top + min(y1, height) - max(y0, 0), left : left + min(x1, width) - max(x0, 0)]
            region[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)] |= ~inside
    return region


def install_weights(params: DeepPrivacy2, methods: Sequence[str], source: Path | None, target: Path) -> list[Path]:
    """Check DP2's checkpoints and lay them out under ``target`` for ``methods`` in ``params.mode``.

    Args:
        params: The ``anonymize.dp2`` section (its mode picks the configs; ``untrained`` is ignored).
        methods: DP2 methods, or ``detector`` for the classic methods' detector mask source.
        source: Folder holding DP2's checkpoint files; None downloads them from DP2's URLs.
        target: The weights folder (``torch/`` for TORCH_HOME, ``fvcore/`` for FVCORE_CACHE).

    Returns:
        The files written.

    Raises:
        Dp2Unavailable: Without DP2 (its configs name the files).
        WeightsError: Naming each missing file, or one whose md5 is not DP2's.
    """
    from anonbench.anonymizers import dp2_weights

    configs = [STUDY_CONFIG if m == "detector" else config_path(params, m) for m in methods]
    repo = repo_dir(params)
    with contextlib.redirect_stdout(sys.stderr):  # DP2 prints while its modules import
        files = [f for m, config in zip(methods, configs, strict=True) for f in required(repo, config, m != "detector")]
    if source is None:
        return dp2_weights.download(files, target)
    return dp2_weights.lay_out(files, source, target)
