"""The study report from small synthetic stage outputs in the real formats; and from none at all.

Evaluations are scored with the real scoring core (anonbench.cocoeval) on tiny-coco's validation
ground truth with jittered predictions; the SSIM summary is built by the ssim stage's own aggregation
from synthetic tables; relabel metrics come from the relabel stage's own function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anonbench.cocoeval import score
from anonbench.config import ORIGINAL, Config
from anonbench.io import atomic_write_json
from anonbench.reportdoc import Document, inline_html
from anonbench.ssim_summary import split_summary
from anonbench.stages import relabel, report

QUESTIONS = ("Q1:", "Q2:", "Q3:", "Q4:", "Q5:", "Q6 and Q7:", "Layer drift", "Q8:", "Anonymization coverage")


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


def write_evaluation(cfg: Config, model_id: str, train: str, variant: str, seed: int) -> None:
    truth = json.loads(cfg.annotation_file(variant, cfg.data.val_split).read_text())
    predictions = noisy_predictions(truth, seed)
    scores = score(truth, predictions)
    folder = cfg.paths.metrics / "eval" / f"{model_id}_on_{variant}"
    folder.mkdir(parents=True)
    (folder / "predictions.json").write_text(json.dumps(predictions))
    freeze = model_id.removeprefix("ft-") if model_id.startswith("ft-") else None
    metrics = {**scores.stats, "per_class": scores.per_class, "model_id": model_id, "train_data": train,
               "eval_data": variant, "model_size": "n", "combination": f"{train} on {variant}",
               "freeze": freeze, "split": cfg.data.val_split, "images": len(truth["images"]),
               "mlflow_run_id": f"run{seed:04d}"}  # fmt: skip
    atomic_write_json(folder / "metrics.json", metrics)


def write_ssim(cfg: Config, variant: str, rng: np.random.Generator) -> None:
    """Tables in the ssim stage's columns, summarized by its own aggregation."""
    folder = cfg.paths.data / "ssim" / variant
    folder.mkdir(parents=True)
    summary = {"variant": variant, "win_size": 7, "splits": {}}
    for split in cfg.data.splits:
        truth = json.loads(cfg.annotation_file(ORIGINAL, cfg.data.val_split).read_text())
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


def write_coverage(cfg: Config, variant: str) -> None:
    for split in cfg.data.splits:
        atomic_write_json(cfg.paths.data / "variants" / variant / f"coverage_{split}.json", {
            "method": variant, "split": split, "images": 6, "status": {"ok": 6, "skipped": 0, "error": 0},
            "images_with_person": 5, "full_image_masks": 0, "persons_gt": 20, "persons_anonymized": 16,
            "persons_small": 2, "persons_degenerate": 1, "persons_empty": 0, "crowd_regions": 1,
            "pixels": 10**6, "anonymized_pixels": 10**5, "gt_person_pixels": 9 * 10**4,
            "changed_gt_person_pixels": 8 * 10**4, "coverage": 0.889, "coverage_mean_image": 0.9,
            "coverage_min_image": 0.5})  # fmt: skip


def synthetic_study(cfg: Config) -> None:
    """Every stage's outputs for the mini grid: n on org and each method, fine-tunes, SSIM, relabel, drift."""
    val = cfg.data.val_split
    original = json.loads(cfg.annotation_file(ORIGINAL, val).read_text())
    rng = np.random.default_rng(0)
    for split in cfg.data.splits:
        atomic_write_json(cfg.paths.data / "prepared" / split / "stats.json", {"images": 6})
    for method in cfg.anonymize.methods:
        atomic_write_json(cfg.annotation_file(method, val), original)
        write_ssim(cfg, method, rng)
        write_coverage(cfg, method)
        drift = [{"layer": i, "module": "Conv", "part": "x", "cka": 1 - 0.02 * i} for i in range(24)]
        doc = {"variant": method, "model_id": "org-n", "layers": drift, "mlflow_run_id": "drift0001"}
        atomic_write_json(cfg.paths.metrics / "drift" / f"{method}.json", doc)
    seed = 1
    models = [(f"{v}-n", v) for v in cfg.train.variants] + [
        (f"ft-{f}", cfg.finetune.variant) for f in cfg.finetune.freeze
    ]
    for model_id, train in models:
        for variant in cfg.evaluate.variants:
            write_evaluation(cfg, model_id, train, variant, seed)
            seed += 1
        summary = {"model_id": model_id, "model_size": "n", "train_data": train, "params_fused": 2299264}
        atomic_write_json(cfg.paths.models / model_id / "train.json", summary)
    corrected = {**original, "annotations": original["annotations"][3:]}
    for model_id in ("org-n", "mask-n"):
        eval_dir = cfg.paths.metrics / "eval" / f"{model_id}_on_mask"
        doc = relabel.relabel_metrics(cfg, eval_dir, original, corrected)
        atomic_write_json(relabel.metrics_file(cfg, model_id, "mask"),
                          {"model_id": model_id, "eval_data": "mask", "eval_mlflow_run_id": "run0002",
                           "mlflow_run_id": "relabel01", **doc})  # fmt: skip
    atomic_write_json(cfg.paths.data / "relabel" / "mask" / f"proposals_{val}.json",
                      {"counts": {"remove": 3, "extend": 1, "images": 2}, "proposals": []})  # fmt: skip


@pytest.fixture
def cfg(make_config: Callable[..., Config], tiny_coco: Path, mlflow_db: Path) -> Config:
    """A shrunk grid (two variants, two freeze configs) keeps the test fast; the report code is the same."""
    grid = ["anonymize.methods=[mask, blur]", "train.variants=[org, mask]", "evaluate.variants=[org, mask]",
            "finetune.freeze={neck: [11, 22], none: []}"]  # fmt: skip
    return make_config("workers=1", "report.bootstrap_samples=40", *grid, source=tiny_coco)


def test_every_section_is_filled_logged_and_rerun_identical(cfg: Config) -> None:
    synthetic_study(cfg)
    written = report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    html = (cfg.paths.reports / "study.html").read_text()
    for question in QUESTIONS:
        assert question in md
    assert "**Missing:**" not in md
    assert "**Mini profile:**" in md and "not findings" in md and "Profile **mini**" in md
    # Numbers link to their runs (these fake run ids are not in the store: the UI's direct route).
    assert "(http://127.0.0.1:5000/#/runs/run0001)" in md and "/#/runs/relabel01" in md
    intervals = re.findall(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", md)
    assert len(intervals) > 15, "every AP difference carries its interval"
    figures = sorted(p for p in written if p.suffix == ".png")
    assert len(figures) == 9 and all(p.parent == cfg.paths.reports / "figures" for p in figures)
    for figure in figures:
        assert f"](figures/{figure.name})" in md
    assert html.count('src="data:image/png;base64,') == len(figures)
    assert not re.search(r"<(link|script)\b|src=\"(?!data:)", html), "the HTML must need no other file"
    assert "<table>" in html and 'href="http://127.0.0.1:5000/#/runs/run0001"' in html

    first = {p: p.read_bytes() for p in written}
    assert {p: p.read_bytes() for p in report.run(cfg)} == first, "a rerun must be byte-identical"
    import mlflow

    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="tags.stage = 'report'")
    assert len(runs) == 2 and int(runs["tags.cited_runs"].iloc[0]) > 10


def test_missing_inputs_are_named_not_fatal(cfg: Config) -> None:
    report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    for question in QUESTIONS:
        assert question in md
    assert md.count("**Missing:**") >= 8
    assert "anonbench relabel --variant" in md and "anonbench drift" in md


def test_inline_marks_and_escaping() -> None:
    assert inline_html("[0.5](http://x/#/runs/1) **b** `c` <script>") == (
        '<a href="http://x/#/runs/1">0.5</a> <b>b</b> <code>c</code> &lt;script&gt;'
    )
    doc = Document()
    doc.table(["a|b", "c"], [["1", "2"]])
    doc.table(["empty"], [])
    assert doc.markdown(Path(".")) == "| a\\|b | c |\n| --- | ---: |\n| 1 | 2 |\n"
