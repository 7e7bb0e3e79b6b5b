"""Debiased linear CKA: known answers, a reference implementation, and per-layer CKA on a real YOLOv10n."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ortho_group

from anonbench.analysis.cka import layer_activations, layer_cka, linear_cka, part_of, plot_cka, representation
from anonbench.yolo import use_one2one


def features(seed: int, n: int = 40, p: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, p))


def reference_debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased linear CKA by U-centring the Gram matrices (Szekely and Rizzo 2014), the formulation of
    Kornblith et al.'s published CKA notebook, written out from its definition; anonbench uses Song et
    al.'s closed form of the same unbiased HSIC instead, so the two agree only if both are right."""

    def u_centred(gram: np.ndarray) -> np.ndarray:
        n = len(gram)
        k = gram.astype(np.float64).copy()
        np.fill_diagonal(k, 0.0)
        u = k - k.sum(0, keepdims=True) / (n - 2) - k.sum(1, keepdims=True) / (n - 2) + k.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(u, 0.0)
        return u

    a, b = u_centred(x @ x.T), u_centred(y @ y.T)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def biased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The plain estimator, for contrast."""
    x, y = x - x.mean(0), y - y.mean(0)
    a, b = x @ x.T, y @ y.T
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_identical_representations_score_one() -> None:
    x = features(0)
    assert linear_cka(x, x) == pytest.approx(1.0)


@pytest.mark.parametrize("p", [12, 300])  # fewer and more features than examples
def test_invariant_to_orthogonal_transform_isotropic_scaling_and_offset(p: int) -> None:
    x = features(1, p=p)
    rotation = ortho_group.rvs(p, random_state=2)
    assert linear_cka(x, 3.7 * x @ rotation + 5.0) == pytest.approx(1.0, abs=1e-9)
    y = features(3, p=p)
    assert linear_cka(x, y) == pytest.approx(linear_cka(x @ rotation * 0.2, y), abs=1e-9)


def test_not_invariant_to_anisotropic_scaling() -> None:
    x = features(4)
    assert linear_cka(x, x * np.linspace(0.1, 10, x.shape[1])) < 0.99


def test_independent_noise_scores_near_zero_where_the_biased_estimator_does_not() -> None:
    # Many more features than examples, as in a detector layer: the plain estimator is close to 1.
    rng = np.random.default_rng(5)
    pairs = [(rng.normal(size=(50, 2000)), rng.normal(size=(50, 2000))) for _ in range(10)]
    debiased = [linear_cka(x, y) for x, y in pairs]
    assert all(biased_cka(x, y) > 0.95 for x, y in pairs)
    assert max(abs(v) for v in debiased) < 0.1 and abs(np.mean(debiased)) < 0.03


def test_shared_signal_is_found_under_noise() -> None:
    rng = np.random.default_rng(6)
    signal = rng.normal(size=(50, 20))
    x = np.hstack([signal, rng.normal(size=(50, 2000)) * 0.05])
    y = np.hstack([signal @ ortho_group.rvs(20, random_state=7), rng.normal(size=(50, 500)) * 0.05])
    assert linear_cka(x, y) > 0.9


@pytest.mark.parametrize(("n", "p", "q", "seed"), [(4, 3, 5, 0), (8, 10_000, 300, 1), (30, 7, 7, 2), (64, 500, 40, 3)])
def test_matches_a_reference_implementation_on_random_data(n: int, p: int, q: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * rng.uniform(0.1, 3.0, size=p)
    y = np.tanh(x[:, :1] * rng.normal(size=(1, q))) + rng.normal(size=(n, q))  # related, not linearly
    assert linear_cka(x, y) == pytest.approx(reference_debiased_cka(x, y), abs=1e-10)


def test_shapes_and_degenerate_input() -> None:
    x = features(7).reshape(40, 3, 2, 2)
    assert linear_cka(x, features(7)) == pytest.approx(1.0)
    assert np.isnan(linear_cka(np.ones((5, 3)), features(8, n=5)))
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(features(0, n=4), features(0, n=5))
    with pytest.raises(ValueError, match="at least 4 examples, got 3"):
        linear_cka(features(0, n=3), features(1, n=3))


def test_parts_of_yolov10() -> None:
    assert [part_of(i) for i in (0, 9, 10, 11, 22, 23)] == ["backbone", "backbone", "PSA", "neck", "neck", "head"]


def test_layer_cka_on_yolov10n(tmp_path: Path) -> None:
    from anonbench.offline import configure_ultralytics

    configure_ultralytics()
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)  # the random initialization decides the activations
    model = YOLO("yolov10n.yaml").model.eval()
    images = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
    same = layer_cka(model, images, images.copy())
    assert len(same) == 24 and np.allclose(same, 1.0)
    changed = images.copy()
    changed[:, :, 16:48, 16:48] = 0.0  # a masked "person"
    drift = layer_cka(model, images, changed)
    assert all(-1.0 <= v <= 1.0 + 1e-9 for v in drift) and min(drift) < 0.999
    figure = plot_cka({"mask": drift}, tmp_path / "cka.png", "test")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_head_is_compared_on_the_dense_outputs_of_the_branch_evaluate_scores() -> None:
    from anonbench.offline import configure_ultralytics

    configure_ultralytics()
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = use_one2one(YOLO("yolov10n.yaml").model.eval())  # as drift loads it
    head = model.model[23]
    assert head.end2end  # YOLOv10's NMS-free one-to-one branch, the one predict reads (nms=False)
    for layer in head.one2one_cv3:  # the branches start as copies: make the one-to-one one differ
        layer[-1].bias.data += 1.0
    images = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    anchors = sum((64 // int(s)) ** 2 for s in head.stride)  # 8x8 + 4x4 + 2x2 at strides 8, 16, 32

    # The layer returns the top-k list; the representation is the one-to-one branch's dense output it is drawn from.
    with torch.no_grad():
        detections, raw = model(torch.from_numpy(images))
        dense = representation(head, (detections, raw))
        one2many = head._inference(raw["one2many"])
    assert detections.shape == (2, min(head.max_det, anchors), 6)  # the top 300, here every one of 84 anchors
    assert dense.shape == one2many.shape == (2, 4 + 80, anchors)  # boxes and class scores for every anchor
    assert torch.equal(head.postprocess(dense.permute(0, 2, 1)), detections)
    assert not torch.allclose(dense, one2many)  # not the one-to-many branch (Ultralytics' default)
    assert layer_activations(model, images, [23])[23].shape == (2, (4 + 80) * anchors)
    assert np.array_equal(layer_activations(model, images, [23])[23], dense.flatten(1).numpy())
