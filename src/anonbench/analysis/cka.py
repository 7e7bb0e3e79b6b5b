"""Per-layer representation drift: debiased linear CKA between a detector's activations on two image sets.

Linear centred kernel alignment (Kornblith et al., 2019) compares two
representations of the same examples and is invariant to orthogonal
transforms and isotropic scaling of either, so it asks "does this layer still
see these images the same way?" without caring how features are arranged.
Run on original vs anonymized versions of the same images, layer by layer, it
shows where in YOLOv10 anonymization bites, next to the freeze experiments.

With few examples and many features the plain (biased) estimator is far
above 0 even for unrelated representations (two independent Gaussian noise
matrices of 8 x 10,000 score 0.999, of 64 x 2,000 about 0.97), so a handful of
images cannot tell drift from chance. The debiased estimator (unbiased HSIC,
Song et al. 2012, as used by Nguyen, Raghu and Kornblith 2021) removes that
bias: unrelated representations score 0 on average, identical ones 1; it
needs at least 4 examples, can be slightly negative, and its spread shrinks
with the number of examples (noise pairs of 8 x 10,000: within +-0.4; of
50 x 2,000: within +-0.08).

The head (layer 23) is compared on the dense outputs of the branch evaluation
scores (YOLOv10's NMS-free one-to-one branch, which the drift stage selects with
:func:`anonbench.yolo.use_one2one`) before top-k selection: decoded boxes and
class scores for every anchor, not the post-processed list of the 300 best
boxes, whose order and membership change discontinuously.
torch is imported lazily: the report image that reads the results has none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anonbench.config import YOLOV10_LAST_LAYER
from anonbench.figures import save_png
from anonbench.images import read_image

# YOLOv10 parts by layer index (shared/notes/environment.md), for plots and tables.
YOLOV10_PARTS: tuple[tuple[str, int, int], ...] = (
    ("backbone", 0, 9),
    ("PSA", 10, 10),
    ("neck", 11, 22),
    ("head", 23, 23),
)
# Float32 activations held at once while collecting (both image sets); layers are grouped to fit.
_ACTIVATION_BUDGET_BYTES = 1 << 30
# The unbiased HSIC estimator divides by n (n - 3).
MIN_EXAMPLES = 4


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased linear CKA between two representations of the same examples.

    CKA = HSIC1(K, L) / sqrt(HSIC1(K, K) HSIC1(L, L)) with linear Gram matrices
    K = X X^T, L = Y Y^T (examples x examples, cheap when a layer has far more
    features than there are images) and the unbiased estimator of Song et al.
    (2012), with K~, L~ the Gram matrices with zeroed diagonals:

        HSIC1(K, L) = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n (n-3))

    Args:
        x: Shape (examples, ...), flattened per example.
        y: Shape (examples, ...), same number of examples; feature counts may differ.

    Returns:
        At most 1 (identical up to rotation and scale), near 0 for unrelated representations, possibly
        slightly negative; NaN if either representation is constant over the examples.

    Raises:
        ValueError: For different numbers of examples or fewer than four.
    """
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same examples in both: {len(x)} vs {len(y)}")
    if len(x) < MIN_EXAMPLES:
        raise ValueError(f"debiased CKA needs at least {MIN_EXAMPLES} examples, got {len(x)}")
    gram_x, gram_y = _gram(x), _gram(y)
    norm = np.sqrt(unbiased_hsic(gram_x, gram_x) * unbiased_hsic(gram_y, gram_y))
    return float(unbiased_hsic(gram_x, gram_y) / norm) if norm > 0 else float("nan")


def unbiased_hsic(gram_x: np.ndarray, gram_y: np.ndarray) -> float:
    """The unbiased HSIC estimator (Song et al. 2012) of two n x n Gram matrices, n >= 4 (:func:`linear_cka`)."""
    n = len(gram_x)
    kx, ky = gram_x.copy(), gram_y.copy()
    np.fill_diagonal(kx, 0.0)
    np.fill_diagonal(ky, 0.0)
    rows_x, rows_y = kx.sum(axis=1), ky.sum(axis=1)
    trace = float((kx * ky).sum())  # tr(K~ L~); both symmetric
    totals = float(rows_x.sum() * rows_y.sum()) / ((n - 1) * (n - 2))
    cross = 2.0 * float(rows_x @ rows_y) / (n - 2)
    return (trace + totals - cross) / (n * (n - 3))


def _gram(x: np.ndarray) -> np.ndarray:
    """Linear Gram matrix of the flattened examples (features centred first: exact in float64, same estimate)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    flat = flat - flat.mean(axis=0, keepdims=True)
    return flat @ flat.T


def part_of(layer: int) -> str:
    """The YOLOv10 part (backbone, PSA, neck, head) a layer index belongs to."""
    return next(name for name, first, last in YOLOV10_PARTS if first <= layer <= last)


def letterboxed(path: Path, imgsz: int) -> np.ndarray:
    """An image as the detector sees it: letterboxed to ``imgsz``, RGB, CHW, float in [0, 1].

    Raises:
        UnreadableImage: If the file is missing or not an image.
    """
    from ultralytics.data.augment import LetterBox

    boxed = np.asarray(LetterBox(new_shape=(imgsz, imgsz), auto=False)(image=read_image(path)))
    return np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1), dtype=np.float32) / 255.0


def representation(module: Any, output: Any) -> Any:
    """A layer's output as one tensor; for the detection head, its dense predictions before top-k selection.

    In eval mode Ultralytics' Detect head returns ``(detections, raw)``: with
    YOLOv10's one-to-one branch selected (``end2end``) ``detections`` is the
    post-processed (B, 300, 6) top-k list, and ``raw`` holds both branches'
    per-anchor outputs. The representation is the selected branch's decoded
    (B, 4 + classes, anchors) tensor, boxes and class scores for every anchor,
    which is what top-k selects from.
    """
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], dict) and hasattr(module, "_inference"):
        raw = output[1]
        if "one2one" in raw:
            raw = raw["one2one" if module.end2end else "one2many"]
        return module._inference(raw)
    if isinstance(output, list | tuple):
        return representation(None, output[0])
    return output


def layer_activations(model: Any, images: np.ndarray, layers: Sequence[int], batch: int = 8) -> dict[int, np.ndarray]:
    """Outputs of the given layers of a YOLO ``DetectionModel`` for a stack of images.

    Args:
        model: An Ultralytics DetectionModel (``YOLO(...).model``) in eval mode.
        images: Float array (images, 3, H, W).
        layers: Indices into ``model.model`` to hook.
        batch: Images per forward pass.

    Returns:
        Layer index -> float32 array (images, features).
    """
    import torch

    captured: dict[int, list[np.ndarray]] = {i: [] for i in layers}

    def keep(index: int) -> Any:
        def hook(module: Any, _inputs: Any, output: Any) -> None:
            captured[index].append(representation(module, output).detach().float().flatten(1).cpu().numpy())

        return hook

    handles = [model.model[i].register_forward_hook(keep(i)) for i in layers]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch):
                model(torch.from_numpy(images[start : start + batch]).to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {i: np.concatenate(chunks) for i, chunks in captured.items()}


def _layer_groups(model: Any, sample: np.ndarray, n_images: int) -> Iterable[list[int]]:
    """Layers grouped so that one group's activations for both image sets fit the budget."""
    sizes = {
        i: a.shape[1] * 4 * 2 * n_images
        for i, a in layer_activations(model, sample, range(YOLOV10_LAST_LAYER + 1)).items()
    }
    group: list[int] = []
    used = 0
    for layer in range(YOLOV10_LAST_LAYER + 1):
        if group and used + sizes[layer] > _ACTIVATION_BUDGET_BYTES:
            yield group
            group, used = [], 0
        group.append(layer)
        used += sizes[layer]
    yield group


def layer_cka(model: Any, originals: np.ndarray, variants: np.ndarray) -> list[float]:
    """Debiased linear CKA of every YOLOv10 layer (0..23) between two aligned stacks of images.

    Args:
        model: Ultralytics DetectionModel in eval mode.
        originals: Images (n, 3, H, W) as :func:`letterboxed` makes them.
        variants: The same images anonymized, same order and shape.

    Returns:
        CKA per layer index.
    """
    scores: dict[int, float] = {}
    for group in _layer_groups(model, originals[:1], len(originals)):
        before = layer_activations(model, originals, group)
        after = layer_activations(model, variants, group)
        scores.update({i: linear_cka(before[i], after[i]) for i in group})
    return [scores[i] for i in range(YOLOV10_LAST_LAYER + 1)]


def plot_cka(curves: dict[str, list[float]], path: Path, title: str) -> Path:
    """Line plot of CKA per layer, one line per variant, YOLOv10's parts shaded.

    Args:
        curves: Variant name -> CKA per layer (0..23).
        path: PNG to write.
        title: Figure title.

    Returns:
        ``path``.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for (name, first, last), shade in zip(YOLOV10_PARTS, ("#f2f2f2", "#dde8f5", "#f2f2f2", "#dde8f5"), strict=True):
        ax.axvspan(first - 0.5, last + 0.5, color=shade, zorder=0)
        ax.text(
            (first + last) / 2, 1.02, name, ha="center", va="bottom", fontsize=8, transform=ax.get_xaxis_transform()
        )
    for variant, values in sorted(curves.items()):
        ax.plot(range(len(values)), values, marker="o", markersize=3, label=variant)
    ax.set_xlim(-0.5, YOLOV10_LAST_LAYER + 0.5)
    ax.set_xticks(range(YOLOV10_LAST_LAYER + 1))
    ax.set_xlabel("YOLOv10 layer")
    ax.set_ylabel("debiased linear CKA (original vs anonymized)")
    ax.set_title(title, pad=16)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
