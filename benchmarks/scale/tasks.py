"""The rehearsal's library-level tasks, each run in its own process so its time and memory are its own.

    python -m benchmarks.scale.tasks coco-load FILE...           pycocotools.coco.COCO on each file (the reference)
    python -m benchmarks.scale.tasks predictions TRUTH OUT       synthetic detections in the evaluate stage's format
    python -m benchmarks.scale.tasks score TRUTH EVAL_DIR --backend B     one COCO evaluation (analysis.cocoeval.score)
    python -m benchmarks.scale.tasks bootstrap TRUTH EVAL_DIR --samples N  the report's per-evaluation bootstrap
    python -m benchmarks.scale.tasks report-grid ROOT ...        synthetic outputs of the paper's model grid

Synthetic detections stand in for a detector's (the evaluate stage's inference needs trained weights and a
GPU): per image, up to ``--per-image`` (COCO's 100) results like a decent detector's at conf 0.001: about
70 % of the non-crowd objects found with a jittered box and a high score (Beta(4, 2)), some of them found
twice with a lower score, and false positives of random classes and sizes whose scores fall off
exponentially from 0.001, so most of the 100 are low-confidence, as YOLO's are.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from anonbench.coco_classes import COCO_CATEGORIES
from anonbench.manifest import Manifest

SIZES = "nsmlx"
# A plausible AP per YOLOv10 size on COCO val (the YOLOv10 paper's 38.5 / 46.3 / 51.1 / 53.2 / 54.4).
SIZE_AP = {"n": 0.385, "s": 0.463, "m": 0.511, "l": 0.532, "x": 0.544}
# Fused parameter counts of YOLOv10 n..x (shared/notes/environment.md) and their training-graph counts.
PARAMS_FUSED = {"n": 2_299_264, "s": 7_218_000, "m": 15_359_000, "l": 24_370_000, "x": 29_500_000}
PARAMS = {"n": 2_775_520, "s": 8_128_272, "m": 16_576_768, "l": 25_888_688, "x": 31_808_960}
# COCO's other stats relative to AP, and ARs, roughly as a YOLOv10 model's on val2017.
AP_FACTORS = {"AP": 1.0, "AP50": 1.4, "AP75": 1.08, "APs": 0.5, "APm": 1.1, "APl": 1.3}
AR = {"AR1": 0.32, "AR10": 0.53, "AR100": 0.58, "ARs": 0.39, "ARm": 0.64, "ARl": 0.75}
FREEZE = ("backbone", "backbone_no_psa", "neck", "neck_head", "psa_neck_head", "none")


def coco_load(files: list[Path]) -> None:
    """Load each annotation file with pycocotools, as a user of the COCO API would."""
    from pycocotools.coco import COCO

    for path in files:
        coco = COCO(str(path))
        print(f"{path}: {len(coco.imgs)} images, {len(coco.anns)} annotations")
        del coco


def make_predictions(truth: Path, out: Path, per_image: int, seed: int) -> int:
    """Write ``out/predictions.json`` and ``out/manifest.json`` as the evaluate stage does; return the count."""
    instances = json.loads(truth.read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    category_ids = np.array([cid for cid, _ in COCO_CATEGORIES])
    sizes = {im["id"]: (im["width"], im["height"]) for im in instances["images"]}
    by_image: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in sizes}
    for ann in instances["annotations"]:
        if not ann.get("iscrowd"):
            by_image[ann["image_id"]].append(ann)
    predictions: list[dict[str, Any]] = []
    manifest = Manifest("evaluate", "synthetic")
    for image_id, anns in by_image.items():
        width, height = sizes[image_id]
        found: list[tuple[int, list[float], float]] = []
        for ann in anns:
            if rng.random() > 0.7:
                continue
            x, y, w, h = ann["bbox"]
            for score in (rng.beta(4, 2), rng.beta(1.2, 8)) if rng.random() < 0.3 else (rng.beta(4, 2),):
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 0.5), max(h + jitter[3], 0.5)]
                found.append((ann["category_id"], box, float(score)))
        for _ in range(max(0, per_image - len(found))):
            w, h = math.exp(rng.normal(math.log(width / 8), 0.8)), math.exp(rng.normal(math.log(height / 8), 0.8))
            w, h = min(w, width), min(h, height)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            found.append((int(rng.choice(category_ids)), box, float(min(0.001 + rng.exponential(0.03), 0.99))))
        found.sort(key=lambda f: -f[2])
        for category, box, score in found[:per_image]:
            predictions.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [round(float(v), 3) for v in box],
                    "score": round(score, 5),
                }
            )
        manifest.add(f"{image_id:012d}.jpg", "ok", image_id=image_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(predictions, separators=(",", ":")) + "\n")
    manifest.write(out / "manifest.json")
    return len(predictions)


def score_once(truth: Path, eval_dir: Path, backend: str) -> dict[str, Any]:
    """Read the ground truth and predictions and score them once (what evaluate does after inference)."""
    from anonbench.analysis.cocoeval import score
    from anonbench.coco import read_instances

    instances = read_instances(truth)
    predictions = json.loads((eval_dir / "predictions.json").read_text(encoding="utf-8"))
    scores = score(instances, predictions, backend)  # type: ignore[arg-type]
    return {"backend": backend, "detections": len(predictions), **scores.stats}


def bootstrap(truth: Path, eval_dir: Path, samples: int, seed: int) -> dict[str, Any]:
    """One evaluation's bootstrap as the evaluate stage draws it, counting how often each input file is opened."""
    from anonbench.study import rematch_resamples

    watched = {str(truth.resolve()): "truth", str((eval_dir / "predictions.json").resolve()): "predictions"}
    opened = dict.fromkeys(watched.values(), 0)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and isinstance(args[0], str | Path):
            name = watched.get(str(Path(args[0]).resolve()))
            if name:
                opened[name] += 1

    sys.addaudithook(hook)
    image_ids, resampled = rematch_resamples((eval_dir, truth, samples, seed))
    mean = resampled.mean()
    return {
        "images": len(image_ids),
        "resamples": len(mean),
        "ap_interval": [float(np.nanquantile(mean, 0.025)), float(np.nanquantile(mean, 0.975))],
        "file_opens": opened,
    }


def _per_class(rng: np.random.Generator, ap: float) -> dict[str, dict[str, float | None]]:
    values = np.clip(rng.normal(ap, 0.12, len(COCO_CATEGORIES)), 0.0, 0.95)
    return {
        name: {"AP": round(float(v), 4), "AP50": round(float(min(v * 1.45, 0.99)), 4)}
        for (_, name), v in zip(COCO_CATEGORIES, values, strict=True)
    }


def report_grid(
    root: Path,
    variants: list[str],
    sizes: str,
    base_size: str,
    tracking_uri: str,
    images: int,
    seed: int = 0,
    truth: Path | None = None,
    resamples: tuple[int, int] | None = None,
) -> int:
    """Write the outputs the report reads for the paper's grid; return the number of evaluations.

    Every size x training variant gets ``models/<id>/train.json`` and an evaluation on every variant, every
    freeze config a fine-tune with its evaluations, all in the real formats (metrics.json as the evaluate
    stage writes it), each with a real MLflow run in ``tracking_uri`` so the report's links resolve.
    With ``truth``, every evaluation also gets its own synthetic predictions on it (and the report
    bootstraps each of them); with ``resamples`` (samples, seed) also the bootstrap resamples the evaluate
    stage keeps beside them (:func:`anonbench.stages.evaluate.write_resamples`), which the report then reads.
    """
    import mlflow

    from anonbench.coco import read_instances
    from anonbench.stages.evaluate import write_resamples
    from anonbench.study import evaluated_image_ids

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("anonbench-paper")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("anonbench-paper")
    rng = np.random.default_rng(seed)
    instances = read_instances(truth) if truth is not None and resamples is not None else None
    models: list[tuple[str, str, str, str | None, float]] = []
    for size in sizes:
        for variant in variants:
            penalty = 0.0 if variant == "org" else rng.uniform(0.005, 0.03)
            models.append((f"{variant}-{size}", variant, size, None, SIZE_AP[size] - penalty))
    models += [
        (f"ft-{name}", variants[1], base_size, name, SIZE_AP[base_size] - rng.uniform(0.0, 0.02)) for name in FREEZE
    ]
    evaluations = 0
    for model_id, train_data, size, freeze, ap in models:
        run = client.create_run(experiment_id, tags={"stage": "finetune" if freeze else "train"})
        train = {
            "model_id": model_id,
            "stage": "finetune" if freeze else "train",
            "train_data": train_data,
            "model_size": size,
            "epochs": 30 if freeze else 100,
            "epochs_done": 30 if freeze else 100,
            "params": PARAMS[size],
            "params_fused": PARAMS_FUSED[size],
            "mlflow_run_id": run.info.run_id,
            "weights": {"best": "weights/best.pt", "last": "weights/last.pt"},
            **({"freeze": freeze} if freeze else {}),
        }
        folder = root / "models" / model_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.json").write_text(json.dumps(train, indent=2, sort_keys=True) + "\n")
        for eval_data in variants:
            shift = 0.0 if eval_data in ("org", train_data) else rng.uniform(0.0, 0.02)
            value = ap - shift
            tags = {
                "model_id": model_id,
                "train_data": train_data,
                "eval_data": eval_data,
                "model_size": size,
                "combination": f"{train_data} on {eval_data}",
                **({"freeze": freeze} if freeze else {}),
            }
            eval_run = client.create_run(experiment_id, tags={"stage": "evaluate", **tags})
            stats = {name: value * factor for name, factor in AP_FACTORS.items()} | AR
            metrics = {
                **{k: round(v, 4) for k, v in stats.items()},
                "per_class": _per_class(rng, value),
                **tags,
                "freeze": freeze,
                "split": "val2017",
                "images": images,
                "predictions": images * 100,
                "mlflow_run_id": eval_run.info.run_id,
                "scorer": "coco",
                "conf": 0.001,
                "iou": 0.7,
                "max_det": 100,
                "imgsz": 640,
                "backend": "faster-coco-eval",
                "weights_sha256": f"{rng.integers(0, 2**62):064x}",
                "annotations_sha256": f"{rng.integers(0, 2**62):064x}",
            }
            out = root / "metrics" / "eval" / f"{model_id}_on_{eval_data}"
            out.mkdir(parents=True, exist_ok=True)
            if truth is not None:
                make_predictions(truth, out, 100, seed + evaluations)
                if instances is not None and resamples is not None:
                    predictions = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
                    ids = evaluated_image_ids(out) or []
                    metrics["bootstrap"] = write_resamples(
                        out / "resamples.npy", instances, predictions, ids, *resamples, metrics["scorer"]
                    )
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            evaluations += 1
    return evaluations


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One rehearsal task (see the module docstring).")
    sub = parser.add_subparsers(dest="task", required=True)
    load = sub.add_parser("coco-load")
    load.add_argument("files", type=Path, nargs="+")
    preds = sub.add_parser("predictions")
    preds.add_argument("truth", type=Path)
    preds.add_argument("out", type=Path)
    preds.add_argument("--per-image", type=int, default=100)
    preds.add_argument("--seed", type=int, default=0)
    one = sub.add_parser("score")
    one.add_argument("truth", type=Path)
    one.add_argument("eval_dir", type=Path)
    one.add_argument("--backend", default="faster-coco-eval")
    boot = sub.add_parser("bootstrap")
    boot.add_argument("truth", type=Path)
    boot.add_argument("eval_dir", type=Path)
    boot.add_argument("--samples", type=int, default=1000)
    boot.add_argument("--seed", type=int, default=0)
    grid = sub.add_parser("report-grid")
    grid.add_argument("root", type=Path)
    grid.add_argument("--variants", default="org,dp2_fullbody,blur,pixelate,mask")
    grid.add_argument("--sizes", default=SIZES)
    grid.add_argument("--base-size", default="m")
    grid.add_argument("--tracking-uri", required=True)
    grid.add_argument("--images", type=int, default=5000)
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--predictions-on", type=Path, help="ground truth to make every evaluation's predictions on")
    grid.add_argument("--resamples", type=int, nargs=2, metavar=("SAMPLES", "SEED"), help="keep bootstrap resamples")
    args = parser.parse_args(argv)
    result: Any
    if args.task == "coco-load":
        coco_load(args.files)
        return
    if args.task == "predictions":
        result = {"predictions": make_predictions(args.truth, args.out, args.per_image, args.seed)}
    elif args.task == "score":
        result = score_once(args.truth, args.eval_dir, args.backend)
    elif args.task == "bootstrap":
        result = bootstrap(args.truth, args.eval_dir, args.samples, args.seed)
    else:
        variants = args.variants.split(",")
        result = {
            "evaluations": report_grid(
                args.root,
                variants,
                args.sizes,
                args.base_size,
                args.tracking_uri,
                args.images,
                args.seed,
                args.predictions_on,
                tuple(args.resamples) if args.resamples else None,
            )
        }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
