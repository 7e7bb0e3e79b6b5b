"""Face models: dlib's detectors and its 128-d face embedding, weights from a wheel.

Shared by the privacy audit (:mod:`anonbench.analysis.privacy`) and the face-only anonymizers
(:mod:`anonbench.anonymizers.face`), so it lives in the core layer below both.

The weights ship inside the ``face-recognition-models`` package (the ``privacy`` extra), so nothing
is downloaded at run time. Each file is checked against the SHA-256 pinned in :data:`MODELS` before
dlib loads it, and the models are loaded once per process (a worker loads them on its first image).
The 68-point landmark predictor in the same package is never used: its training data (iBUG 300-W)
restricts use. Licences: docs/privacy.md.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Detector = Literal["hog", "cnn"]
# (x, y, w, h) in image pixels, COCO's box convention.
Box = tuple[float, float, float, float]
EMBEDDING_SIZE = 128
# File name in face_recognition_models/models/ and its SHA-256 (face-recognition-models 0.3.0).
MODELS = {
    "cnn": ("mmod_human_face_detector.dat", "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"),
    "landmarks": (
        "shape_predictor_5_face_landmarks.dat",
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    ),
    "embedding": (
        "dlib_face_recognition_resnet_model_v1.dat",
        "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    ),
}


class FaceModelError(RuntimeError):
    """A face model is missing or is not the pinned file; the message says how to install it."""


def model_path(name: str) -> Path:
    """The verified path of one model file of :data:`MODELS`.

    Args:
        name: ``cnn``, ``landmarks`` or ``embedding``.

    Returns:
        Its path inside the installed ``face_recognition_models`` package.

    Raises:
        FaceModelError: The package is not installed, or the file's SHA-256 is not the pinned one.
    """
    # Found, not imported: the package's __init__ needs pkg_resources, which current setuptools dropped.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FaceModelError("face models not installed: pip install -e '.[privacy]' (make install)")
    file_name, expected = MODELS[name]
    path = Path(spec.origin).parent / "models" / file_name
    if not path.is_file():
        raise FaceModelError(f"{path}: missing from face-recognition-models")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise FaceModelError(f"{path}: SHA-256 {digest}, expected {expected} (face-recognition-models 0.3.0)")
    return path


@dataclass(frozen=True)
class FaceModels:
    """The loaded dlib models of one process."""

    detector: Any
    cnn: bool
    landmarks: Any
    embedding: Any


@functools.cache
def models(detector: Detector) -> FaceModels:
    """The detector, the 5-point landmark predictor and the embedding, loaded on first use and kept.

    Args:
        detector: ``hog`` (dlib's frontal HOG detector, built into dlib) or ``cnn`` (dlib's MMOD CNN).

    Returns:
        The models, shared by every later call in this process.
    """
    import dlib

    found = dlib.cnn_face_detection_model_v1(str(model_path("cnn"))) if detector == "cnn" else None
    return FaceModels(
        detector=found if found is not None else dlib.get_frontal_face_detector(),
        cnn=detector == "cnn",
        landmarks=dlib.shape_predictor(str(model_path("landmarks"))),
        embedding=dlib.face_recognition_model_v1(str(model_path("embedding"))),
    )


def _rgb(image: np.ndarray) -> np.ndarray:
    """The input dlib takes: a contiguous RGB copy of an OpenCV BGR image."""
    return np.ascontiguousarray(image[:, :, ::-1])


def detect(image: np.ndarray, detector: Detector, upsample: int) -> list[Box]:
    """Faces in a BGR image.

    Args:
        image: H x W x 3 uint8, BGR (as :func:`anonbench.images.read_image` decodes it).
        detector: ``hog`` or ``cnn``.
        upsample: Times dlib doubles the image before detecting (COCO's faces are small).

    Returns:
        The faces' boxes, clipped to the image, in dlib's order.
    """
    loaded = models(detector)
    found = loaded.detector(_rgb(image), upsample)
    rects = [d.rect for d in found] if loaded.cnn else list(found)
    height, width = image.shape[:2]
    boxes = []
    for rect in rects:
        x0, y0 = max(rect.left(), 0), max(rect.top(), 0)
        x1, y1 = min(rect.right() + 1, width), min(rect.bottom() + 1, height)
        if x1 > x0 and y1 > y0:
            boxes.append((float(x0), float(y0), float(x1 - x0), float(y1 - y0)))
    return boxes


def embed(image: np.ndarray, boxes: list[Box], detector: Detector) -> np.ndarray:
    """The 128-d embedding of each box of a BGR image, whatever the box now shows.

    The 5-point landmarks are predicted inside the given box, so a box where no face is
    detectable any more (a blurred or masked face) still yields an embedding: the attacker looks
    where the face was.

    Args:
        image: H x W x 3 uint8, BGR.
        boxes: Face boxes in this image's pixels.
        detector: The detector whose models are loaded (they share the process's cache).

    Returns:
        n x 128 float64; Euclidean distance below 0.6 is "same person" by dlib's convention.
    """
    import dlib

    if not boxes:
        return np.zeros((0, EMBEDDING_SIZE))
    loaded = models(detector)
    rgb = _rgb(image)
    shapes = dlib.full_object_detections()
    for x, y, w, h in boxes:
        rect = dlib.rectangle(round(x), round(y), round(x + w) - 1, round(y + h) - 1)
        shapes.append(loaded.landmarks(rgb, rect))
    return np.array(loaded.embedding.compute_face_descriptor(rgb, shapes), dtype=np.float64)
