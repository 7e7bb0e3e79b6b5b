"""Every stage's outputs for the study report, small and synthetic but in the real formats.

Shared by the report's code tests (tests/code/test_report.py) and its browser test
(tests/pipeline/test_report_browser.py). Evaluations are scored with the real scoring core
(anonbench.analysis.cocoeval) on tiny-coco's validation ground truth with jittered predictions; class
statistics come from the prepare stage itself; the SSIM summary from the ssim stage's own
aggregation of synthetic tables; relabel metrics from the relabel stage's own function; the
fine-tune subset's counts from the finetune stage's own functions. Void evaluations are written
in the evaluate stage's contract: ``"void": true``, a ``void_reason`` and every AP ``null``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anonbench.analysis.cocoeval import score
from anonbench.analysis.ssim_summary import split_summary
from anonbench.anonymizers import plugins
from anonbench.anonymizers.masks import person_masks
from anonbench.coco import person_category_id
from anonbench.config import ORIGINAL, Config, finetune_model_id, model_id
from anonbench.images import encode_image, read_image
from anonbench.io import atomic_write_json
from anonbench.stages import finetune, prepare, relabel, report
from tests.conftest import config_under

LINK = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])+)\]\(([^)\s]+)\)")
PARAMS_FUSED = {"n": 2_299_264, "s": 7_218_000}  # train.json's fused parameter counts of the sizes the tests train


V10_CRITERION = "E2EDetectLoss: one2many tal_topk 10 weight 1.0 + one2one tal_topk 1 weight 1.0"


def noisy_predictions(truth: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """Ground-truth boxes jittered, some missed, plus false alarms: an AP strictly between 0 and 1."""
    rng = np.random.default_rng(seed)
    predictions = []
    for ann in truth["annotations"]:
        if rng.random() < 0.25:
            continue
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
        predictions.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box,
                            "score": float(rng.random())})  # fmt: skip
    for image in truth["images"]:
        predictions.append({"image_id": image["id"], "category_id": 1, "bbox": [5.0, 5.0, 40.0, 40.0],
                            "score": float(rng.random())})  # fmt: skip
    return predictions


def write_evaluation(
    cfg: Config, model_id: str, train: str, variant: str, seed: int, size: str = "n", family: str = "yolov10"
) -> None:
    """One evaluate-stage output folder: predictions.json and metrics.json (today's keys and the void contract's)."""
    truth = json.loads(cfg.annotation_file(variant, cfg.data.val_split).read_text())
    predictions = noisy_predictions(truth, seed)
    scores = score(truth, predictions)
    folder = cfg.paths.metrics / "eval" / f"{model_id}_on_{variant}"
    folder.mkdir(parents=True)
    (folder / "predictions.json").write_text(json.dumps(predictions))
    freeze = model_id.removeprefix("ft-") if model_id.startswith("ft-") else None
    metrics = {**scores.stats, "per_class": scores.per_class, "model_id": model_id, "train_data": train,
               "eval_data": variant, "model_size": size, "combination": f"{train} on {variant}",
               "freeze": freeze, "split": cfg.data.val_split, "images": len(truth["images"]),
               "conf": 0.001, "max_det": 100, "protocol": "coco", "checkpoint": "best", "head": "one2one",
               "nms": False, "head_topk": 300, "void": False, "family": family,
               "void_reason": None, "mlflow_run_id": f"run{seed:04d}"}  # fmt: skip
    atomic_write_json(folder / "metrics.json", metrics)


def make_void(cfg: Config, pattern: str, reason: str = "no detections") -> list[Path]:
    """Mark the evaluations and relabel results matching ``pattern`` void, as the evaluate stage writes them."""
    changed = []
    for path in [*(cfg.paths.metrics / "eval").glob(f"{pattern}/metrics.json"),
                 *(cfg.paths.metrics / "relabel").glob(f"{pattern}.json")]:  # fmt: skip
        doc = json.loads(path.read_text())
        for part in (doc, doc.get("original"), doc.get("corrected")):
            if part is None:
                continue
            for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
                if stat in part:
                    part[stat] = None
            for values in part.get("per_class", {}).values():
                values.update({"AP": None, "AP50": None})
        if "delta" in doc:
            doc["delta"] = {"AP": {"value": None, "ci": None}, "AP50": {"value": None, "ci": None}, "per_class": {}}
        doc.update({"void": True, "void_reason": reason, "predictions": 0})
        atomic_write_json(path, doc)
        changed.append(path)
    return changed


def write_ssim(cfg: Config, variant: str, rng: np.random.Generator) -> None:
    """Tables in the ssim stage's columns, summarized by its own aggregation."""
    folder = cfg.paths.data / "ssim" / variant
    folder.mkdir(parents=True)
    summary = {"variant": variant, "win_size": 7, "splits": {}}
    for split in cfg.data.splits:
        truth = json.loads(cfg.annotation_file(ORIGINAL, split).read_text())
        names = {c["id"]: c["name"] for c in truth["categories"]}

        def factors(n: int) -> dict[str, np.ndarray]:
            values = {k: rng.uniform(0.3, 1.0, n) for k in ("luminance", "contrast", "structure")}
            return {"ssim": values["luminance"] * values["contrast"] * values["structure"], **values}

        boxes = pd.DataFrame({"image_id": [a["image_id"] for a in truth["annotations"]],
                              "ann_id": [a["id"] for a in truth["annotations"]],
                              "category": [names[a["category_id"]] for a in truth["annotations"]],
                              "inside_anonymized": rng.uniform(0, 1, len(truth["annotations"])),
                              **factors(len(truth["annotations"]))})  # fmt: skip
        images = pd.DataFrame({"image_id": [im["id"] for im in truth["images"]], "has_person": True,
                               **factors(len(truth["images"]))})  # fmt: skip
        boxes.to_parquet(folder / f"{split}_boxes.parquet")
        images.to_parquet(folder / f"{split}_images.parquet")
        summary["splits"][split] = split_summary(folder, split, cfg.classes.use_case_groups)
    atomic_write_json(folder / "summary.json", summary)


def write_coverage(cfg: Config, variant: str, dp2: dict[str, Any] | None = None) -> None:
    """The anonymize stage's coverage summaries; a DeepPrivacy2 method also records its settings."""
    for split in cfg.data.splits:
        extra = {"dp2": dp2, "persons_below_size_filter": 2} if dp2 else {}
        atomic_write_json(cfg.paths.data / "variants" / variant / f"coverage_{split}.json", {
            "method": variant, "split": split, "images": 6, "status": {"ok": 6, "skipped": 0, "error": 0},
            "images_with_person": 5, "full_image_masks": 0, "persons_gt": 20, "persons_anonymized": 16,
            "persons_small": 2, "persons_degenerate": 1, "persons_empty": 0, "crowd_regions": 1,
            "pixels": 10**6, "anonymized_pixels": 10**5, "gt_person_pixels": 9 * 10**4,
            "changed_gt_person_pixels": 8 * 10**4, "coverage": 0.889, "coverage_mean_image": 0.9,
            "coverage_min_image": 0.5, **extra})  # fmt: skip


def write_anonymized_images(cfg: Config, method: str) -> None:
    """The validation images of a classic method as the anonymize stage writes them: PNG, named in its annotations."""
    split = cfg.data.val_split
    instances = json.loads(cfg.annotation_file(ORIGINAL, split).read_text())
    person = person_category_id(instances["categories"])
    folder = cfg.image_dir(method, split)
    folder.mkdir(parents=True, exist_ok=True)
    params = cfg.anonymize
    for image in instances["images"]:
        found = [a for a in instances["annotations"] if a["image_id"] == image["id"]]
        masks = person_masks(found, person, image["height"], image["width"], params.dilation_px, params.min_person_px)
        original = read_image(cfg.image_dir(ORIGINAL, split) / image["file_name"])
        image["file_name"] = f"{Path(image['file_name']).stem}.png"
        painted = plugins.get(method)(original, masks.persons, params.settings(method), np.random.default_rng(0))
        (folder / image["file_name"]).write_bytes(encode_image(painted.image))
    atomic_write_json(cfg.annotation_file(method, split), instances)


def privacy_audit(variant: str, image_ids: list[int], rates: dict[str, float | None]) -> dict[str, Any]:
    """A privacy stage's ``metrics/privacy/<variant>.json`` (docs/report.md's contract) with the given rates.

    11 faces on the originals of 3 images, 20 persons; none in a small person, so that bucket's rates are void.
    """
    bucket = {"faces": 0, "detected_rate": None, "naive_rank1": None, "inversion_rank1": None,
              "appearance_rank1": None, "appearance_persons": 0}  # fmt: skip
    sized = {"faces": 5, "detected_rate": rates["detected"], "naive_rank1": rates["naive"],
             "inversion_rank1": rates["inversion"], "appearance_rank1": rates["appearance"],
             "appearance_persons": 10}  # fmt: skip
    residual = image_ids[: int(rates["residual"] or 0)]
    return {
        "variant": variant, "split": "val2017", "images": 6, "images_with_faces": 3,
        "detector": {"model": "hog", "upsample": 2}, "faces": 11, "detected_rate": rates["detected"],
        "linkage": {
            "naive": {"rank1": rates["naive"], "chance": 1 / 11, "tmr_at_fmr_1pct": rates["tmr"], "threshold": 0.41},
            "inversion": {"rank1": rates["inversion"], "tmr_at_fmr_1pct": rates["inversion"],
                          "how": "richardson-lucy" if rates["inversion"] is not None else None},
            "appearance": {"rank1": rates["appearance"], "chance": 0.05, "persons": 20},
        },
        "residual_faces": len(residual), "residual_image_ids": residual,
        "by_size": {"small": bucket, "medium": sized, "large": sized,
                    "outside": {**sized, "faces": 1, "appearance_rank1": None, "appearance_persons": 0}},
    }  # fmt: skip


# The audits' rates (org is the identity control; mask has no inversion: void, never 0).
PRIVACY = {
    ORIGINAL: {"detected": 1.0, "naive": 1.0, "tmr": 1.0, "inversion": None, "appearance": 1.0, "residual": 0},
    "mask": {"detected": 0.0, "naive": 0.0, "tmr": 0.0, "inversion": None, "appearance": 0.05, "residual": 2},
    "blur": {"detected": 0.182, "naive": 0.273, "tmr": 0.091, "inversion": 0.455, "appearance": 0.35, "residual": 1},
}


def write_subset(cfg: Config) -> None:
    """The fine-tune subset's summary.json and class_counts.csv, made by the finetune stage's own functions."""
    classes = cfg.classes.size_frequency_classes
    instances = json.loads(cfg.annotation_file(ORIGINAL, cfg.data.train_split).read_text())
    eligible = finetune.eligible_images(instances, classes)
    ft = cfg.finetune
    of = len(instances["images"]) if ft.fraction_of == "train" else len(eligible)
    size, capped = finetune.subset_size(ft.fraction, of, len(eligible))
    chosen = finetune.draw(list(eligible), size, cfg.seed)
    table = finetune.class_counts(eligible, chosen, classes)
    root = finetune.subset_root(cfg)
    root.mkdir(parents=True)
    (root / "class_counts.csv").write_text(table.to_csv(index=False, lineterminator="\n"))
    summary = {"settings": {"fraction": ft.fraction}, "train_images": len(instances["images"]),
               "eligible_images": len(eligible), "subset_images": len(chosen), "fraction": ft.fraction,
               "fraction_of": ft.fraction_of, "capped": capped, **finetune.agreement(table)}  # fmt: skip
    atomic_write_json(root / finetune.SUMMARY, summary)


def synthetic_study(cfg: Config) -> None:
    """Stage outputs for the grid of ``cfg`` (train.models, fine-tunes at the base size); SSIM, relabel, drift."""
    val = cfg.data.val_split
    original = json.loads(cfg.annotation_file(ORIGINAL, val).read_text())
    rng = np.random.default_rng(0)
    for split in cfg.data.splits:
        prepare.prepare_split(cfg, split)
        for method in cfg.anonymize.methods:
            atomic_write_json(
                cfg.annotation_file(method, split), json.loads(cfg.annotation_file(ORIGINAL, split).read_text())
            )
    for method in cfg.anonymize.methods:
        write_ssim(cfg, method, rng)
        write_coverage(cfg, method)
        write_anonymized_images(cfg, method)
        drift = [{"layer": i, "module": "Conv", "part": "x", "cka": 1 - 0.02 * i} for i in range(24)]
        doc = {"variant": method, "model_id": "org-n", "layers": drift, "mlflow_run_id": "drift0001"}
        atomic_write_json(cfg.paths.metrics / "drift" / f"{method}.json", doc)
    write_subset(cfg)
    image_ids = sorted(im["id"] for im in original["images"])
    for variant in (ORIGINAL, *cfg.anonymize.methods):
        rates = PRIVACY[variant]
        atomic_write_json(cfg.paths.metrics / "privacy" / f"{variant}.json", privacy_audit(variant, image_ids, rates))
    seed = 1
    models = [(model_id(v, s, f), v, s) for v, f, s in cfg.train.models] + [
        (finetune_model_id(f), cfg.finetune.variant, cfg.finetune.base.size) for f in cfg.finetune.freeze
    ]
    for name, train, size in models:
        for variant in cfg.evaluate.variants:
            write_evaluation(cfg, name, train, variant, seed, size)
            seed += 1
        summary = {"model_id": name, "model_size": size, "train_data": train, "params_fused": PARAMS_FUSED[size],
                   "criterion": {"class": "E2EDetectLoss", "text": V10_CRITERION}}  # fmt: skip
        atomic_write_json(cfg.paths.models / name / "train.json", summary)
    corrected = {**original, "annotations": original["annotations"][3:]}
    for rescored in ("org-n", "mask-n"):
        eval_dir = cfg.paths.metrics / "eval" / f"{rescored}_on_mask"
        doc = relabel.relabel_metrics(cfg, eval_dir, original, corrected)
        run = json.loads((eval_dir / "metrics.json").read_text())["mlflow_run_id"]
        atomic_write_json(relabel.metrics_file(cfg, rescored, "mask"),
                          {"model_id": rescored, "eval_data": "mask", "eval_mlflow_run_id": run,
                           "mlflow_run_id": f"relabel-{rescored}", "void": False, "void_reason": None,
                           **doc})  # fmt: skip
    atomic_write_json(cfg.paths.data / "relabel" / "mask" / f"proposals_{val}.json",
                      {"counts": {"remove": 3, "extend": 1, "images": 2}, "proposals": []})  # fmt: skip
    atomic_write_json(cfg.paths.data / "relabel" / "mask" / f"review_{val}.json",
                      {"review": "automatic: every proposal accepted", "corrections": "auto-accepted"})  # fmt: skip


# A shrunk grid (two methods, size n) keeps the tests fast; the report code is the same.
GRID = ("workers=1", "report.bootstrap_samples=40", "anonymize.methods=[mask, blur]",
        "train.variants=[org, mask, blur]", "evaluate.variants=[org, mask, blur]", "finetune.variant=mask")  # fmt: skip


@pytest.fixture
def report_cfg(make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path) -> Config:
    """The shrunk grid's configuration with no stage output yet, under the test's own folder."""
    return make_config(*GRID, source=tiny_coco)


@pytest.fixture
def report_copy(built_report: tuple[Config, list[Path]], tmp_path: Path, coco_mini: Path, tiny_coco: Path) -> Config:
    """A copy of the built synthetic study (outputs, MLflow store) for a test that changes it."""
    return copy_study(built_report[0], tmp_path / "study", coco_mini, tiny_coco)


def copy_study(cfg: Config, target: Path, coco_mini: Path, tiny_coco: Path, *overrides: str) -> Config:
    """Copy the synthetic study of ``cfg`` (outputs, MLflow store) to ``target``; its config there (plus overrides)."""
    shutil.copytree(cfg.paths.reports.parent, target, symlinks=True)
    return config_under(target, coco_mini, *GRID, *overrides, source=tiny_coco)


def build_report(root: Path, coco_mini: Path, tiny_coco: Path, mlflow_template: Path) -> tuple[Config, list[Path]]:
    """The synthetic study and its report under ``root`` (the session fixture ``built_report`` in conftest)."""
    shutil.copyfile(mlflow_template, root / "mlflow.db")
    cfg = config_under(root, coco_mini, *GRID, source=tiny_coco)
    synthetic_study(cfg)
    return cfg, report.run(cfg)


def markdown_tables(md: str) -> list[list[list[str]]]:
    """Every table of a Markdown document as rows of cells (the header row first, the alignment row left out)."""
    tables: list[list[list[str]]] = []
    previous = False
    for line in md.splitlines():
        is_row = line.startswith("| ") and line.endswith(" |")
        if is_row and not set(line) <= set("|-: "):
            cells = [c.strip() for c in re.split(r"(?<!\\) \| ", line[2:-2])]
            if not previous:
                tables.append([])
            tables[-1].append(cells)
        previous = is_row
    return tables
