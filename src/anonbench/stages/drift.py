"""Stage drift: where in the detector anonymization bites, as debiased linear CKA per YOLOv10 layer.

The model the fine-tunes start from (``finetune.base``, the study's Org model,
its ``train.checkpoint``) sees ``report.cka_images`` validation images twice,
original and anonymized; each layer's activations on the two are compared with
debiased linear CKA (1: the layer sees them alike; near 0: unrelated; the head
on the dense per-anchor outputs of the branch evaluation scores, YOLOv10's
one-to-one head, before top-k selection, :mod:`anonbench.analysis.cka`).
Only images with an anonymized region are drawn (seeded), so
untouched images do not inflate the similarity. Writes
``metrics/drift/<variant>.json`` and ``metrics/drift/<variant>.png`` and logs
one MLflow run; unchanged inputs are not measured again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from anonbench.analysis.cka import MIN_EXAMPLES, layer_cka, letterboxed, part_of, plot_cka
from anonbench.coco import read_instances
from anonbench.config import ORIGINAL, Config
from anonbench.data.download import file_digest
from anonbench.io import atomic_write_json
from anonbench.offline import configure_ultralytics
from anonbench.tracking import mlflow_run
from anonbench.yolo import HEAD, chosen_weights, use_one2one

MIN_IMAGES = MIN_EXAMPLES  # the debiased estimator divides by n (n - 3)
# What the numbers are; a stored result of another estimator is measured again.
ESTIMATOR = "debiased linear CKA (unbiased HSIC); head: dense outputs before top-k"


def outputs(cfg: Config, variant: str) -> tuple[Path, Path]:
    """The drift JSON and figure of one variant."""
    folder = cfg.paths.metrics / "drift"
    return folder / f"{variant}.json", folder / f"{variant}.png"


def base_model_id(cfg: Config) -> str:
    """The model id of the Org model the fine-tunes start from."""
    return f"{cfg.finetune.base.variant}-{cfg.finetune.base.size}"


def pick_images(cfg: Config, variant: str) -> list[tuple[int, Path, Path]]:
    """Seeded sample of validation images with an anonymized region: (image id, original, anonymized).

    Raises:
        ValueError: If fewer than four images of the split were anonymized.
    """
    split = cfg.data.val_split
    original = {im["id"]: im["file_name"] for im in read_instances(cfg.annotation_file(ORIGINAL, split))["images"]}
    masks = cfg.variant_root(variant) / "masks" / split
    candidates = sorted(
        (im["id"], cfg.image_dir(ORIGINAL, split) / original[im["id"]], cfg.image_dir(variant, split) / im["file_name"])
        for im in read_instances(cfg.annotation_file(variant, split))["images"]
        if im["id"] in original and (masks / f"{Path(im['file_name']).stem}.png").is_file()
    )
    if len(candidates) < MIN_IMAGES:
        raise ValueError(f"{masks}: {len(candidates)} anonymized images, CKA needs at least {MIN_IMAGES}")
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(len(candidates), size=min(cfg.report.cka_images, len(candidates)), replace=False)
    return [candidates[i] for i in sorted(chosen)]


def _device(cfg: Config) -> str:
    device = cfg.train.device
    return "cpu" if device == "cpu" else f"cuda:{device.split(',')[0]}"


def run(cfg: Config, variant: str) -> list[Path]:
    """Linear CKA per layer of the Org model between original and ``variant`` validation images.

    Args:
        cfg: Validated configuration (``finetune.base`` names the model, ``report.cka_images`` the
            sample size, ``train.imgsz`` and ``train.device`` the inference settings).
        variant: An anonymization method whose validation split exists with its masks.

    Returns:
        The JSON and the figure.

    Raises:
        ValueError: If ``variant`` is not an anonymization method or has too few anonymized images.
        FileNotFoundError: If the Org model has not been trained.
    """
    if variant not in cfg.anonymize.methods:
        raise ValueError(f"drift: {variant!r} is not one of anonymize.methods {cfg.anonymize.methods}")
    model_id = base_model_id(cfg)
    weights = chosen_weights(cfg, model_id)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no trained Org model (run `anonbench train` first)")
    json_path, png_path = outputs(cfg, variant)
    images = pick_images(cfg, variant)
    inputs = {
        "weights_sha256": file_digest(weights, "sha256"),
        "images": [i for i, _, _ in images],
        "imgsz": cfg.train.imgsz,
        "estimator": ESTIMATOR,
        "head": HEAD,
    }
    if png_path.is_file() and json_path.is_file():
        previous = json.loads(json_path.read_text(encoding="utf-8"))
        if previous.get("inputs") == inputs:
            return [json_path, png_path]

    tags = {"model_id": model_id, "eval_data": variant}
    reads = [weights, cfg.variant_root(ORIGINAL), cfg.variant_root(variant)]
    with mlflow_run(cfg, f"drift {variant}", "drift", tags, reads=reads) as active:
        import mlflow

        configure_ultralytics()
        from ultralytics import YOLO

        net: Any = YOLO(str(weights)).model
        net = use_one2one(net).float().eval().to(_device(cfg))  # the head evaluate scores
        originals = np.stack([letterboxed(path, cfg.train.imgsz) for _, path, _ in images])
        anonymized = np.stack([letterboxed(path, cfg.train.imgsz) for _, _, path in images])
        scores = layer_cka(net, originals, anonymized)
        layers = [
            {"layer": i, "module": type(net.model[i]).__name__, "part": part_of(i), "cka": score}
            for i, score in enumerate(scores)
        ]
        title = f"Layer drift of {model_id}: original vs {variant} ({len(images)} val images)"
        mlflow.log_params({"images": len(images), "imgsz": cfg.train.imgsz})
        mlflow.log_metrics({f"cka/layer_{i:02d}": s for i, s in enumerate(scores) if np.isfinite(s)})
        doc = {
            "variant": variant,
            "model_id": model_id,
            "split": cfg.data.val_split,
            "checkpoint": cfg.train.checkpoint,
            "layers": layers,
            "inputs": inputs,
            "mlflow_run_id": active.info.run_id,
        }
        written = [atomic_write_json(json_path, doc), plot_cka({variant: scores}, png_path, title)]
        for path in written:
            mlflow.log_artifact(str(path))
    return written
