"""Linear CKA: its defining properties, and per-layer CKA on a real (untrained) YOLOv10n."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ortho_group

from anonbench.cka import layer_cka, linear_cka, part_of, plot_cka


def features(seed: int, n: int = 40, p: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, p))


def test_identical_representations_score_one() -> None:
    x = features(0)
    assert linear_cka(x, x) == pytest.approx(1.0)


def test_invariant_to_orthogonal_transform_isotropic_scaling_and_offset() -> None:
    x = features(1)
    rotation = ortho_group.rvs(x.shape[1], random_state=2)
    assert linear_cka(x, 3.7 * x @ rotation + 5.0) == pytest.approx(1.0)
    y = features(3)
    assert linear_cka(x, y) == pytest.approx(linear_cka(x @ rotation * 0.2, y))


def test_not_invariant_to_anisotropic_scaling() -> None:
    x = features(4)
    assert linear_cka(x, x * np.linspace(0.1, 10, x.shape[1])) < 0.99


def test_independent_random_representations_score_low() -> None:
    # Few features per example: with more features than examples, CKA of noise is biased upwards.
    x, y = features(5, n=500, p=4), features(6, n=500, p=4)
    assert linear_cka(x, y) < 0.05


def test_shapes_and_degenerate_input() -> None:
    x = features(7).reshape(40, 3, 2, 2)
    assert linear_cka(x, features(7)) == pytest.approx(1.0)
    assert np.isnan(linear_cka(np.ones((5, 3)), features(8, n=5)))
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(features(0, n=4), features(0, n=5))


def test_parts_of_yolov10() -> None:
    assert [part_of(i) for i in (0, 9, 10, 11, 22, 23)] == ["backbone", "backbone", "PSA", "neck", "neck", "head"]


def test_layer_cka_on_yolov10n(tmp_path: Path) -> None:
    from anonbench.offline import configure_ultralytics

    configure_ultralytics()
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)  # the random initialization decides the activations
    model = YOLO("yolov10n.yaml").model.eval()
    images = np.random.default_rng(0).random((4, 3, 64, 64), dtype=np.float32)
    same = layer_cka(model, images, images.copy())
    assert len(same) == 24 and np.allclose(same, 1.0)
    changed = images.copy()
    changed[:, :, 16:48, 16:48] = 0.0  # a masked "person"
    drift = layer_cka(model, images, changed)
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in drift) and min(drift) < 0.999
    figure = plot_cka({"mask": drift}, tmp_path / "cka.png", "test")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
