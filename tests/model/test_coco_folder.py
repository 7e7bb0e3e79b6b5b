"""A user's own COCO-format folder through every stage: renumbered category ids, one category missing, one
named differently, split names of its own.

The folder holds the memorable coco-mini images (tests/model/conftest.py) in both splits, its category
table is :func:`tests.conftest.own_categories` (ascending id runs in reverse COCO order, so class index
and COCO order disagree everywhere; toothbrush is missing; umbrella is called parasol). The Org model
memorizes the images, so every box it finds shows whether export, train, predict and evaluate carried the
right category through the renumbering.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from anonbench.config import Config, load_config
from anonbench.yolo import chosen_weights, load_net
from tests.conftest import PARAMS, own_categories
from tests.model.conftest import MIN_AP50, OVERFIT, invoke, study_sets, write_memorized

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(
    coco_mini: Path, tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path
) -> Iterator[tuple[Config, list[str]]]:
    """fetch, prepare, export and train on the folder through the CLI; the Org model evaluated on it."""
    root = tmp_path_factory.mktemp("coco-folder")
    folder = write_memorized(coco_mini, root / "my-dataset", ("train", "val"), own_categories)
    sets = study_sets(root, mlflow_template)
    sets += [
        "data.source=coco-folder",
        f"data.local_copy={folder}",
        "data.train_split=train",
        "data.val_split=val",
        "anonymize.methods=[mask]",
        "train.variants=[org]",
        "evaluate.variants=[org, mask]",
        "finetune.variant=mask",
        "finetune.base={variant: org, size: n}",
        "finetune.fraction_of=train",
        "finetune.fraction=0.25",
        "finetune.epochs=1",
        "finetune.batch=2",
        "report.bootstrap_samples=20",
        "report.cka_images=4",
        *OVERFIT,
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow's sqlite store keeps artifacts in ./mlruns
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # an earlier test's store would win over tracking.uri
        for command in (["fetch"], ["prepare"], ["export", "--variant", "org"], ["train", "--variant", "org",
                        "--size", "n"], ["evaluate", "--model", "org-n", "--on", "org"]):  # fmt: skip
            invoke(*command, sets=sets)
        yield load_config(PARAMS, None, sets), sets


def iou(a: list[float], b: list[float]) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax1, bx1) - max(a[0], b[0])) * max(0.0, min(ay1, by1) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_the_renumbered_categories_go_through_export_train_predict_and_evaluate(
    study: tuple[Config, list[str]],
) -> None:
    cfg, _ = study
    truth = json.loads(cfg.annotation_file("org", "val").read_text())
    table = sorted((c["id"], c["name"]) for c in truth["categories"])
    assert len(table) == 79 and table[-1] == (1000, "person") and "toothbrush" not in dict(table).values()

    # export and train: the model's classes are the folder's, in ascending id order
    spec = yaml.safe_load((cfg.paths.data / "yolo" / "org" / "dataset.yaml").read_text())
    assert spec["names"] == [name for _, name in table]
    net = load_net(chosen_weights(cfg, "org-n"))
    assert [net.names[k] for k in sorted(net.names)] == spec["names"]

    # predict and evaluate: the folder's ids, and the right class on every box the model finds
    out = cfg.paths.metrics / "eval" / "org-n_on_org"
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert {p["category_id"] for p in predictions} <= {cid for cid, _ in table}
    assert metrics["AP50"] >= MIN_AP50 and metrics["per_class"]["person"]["AP50"] >= MIN_AP50
    assert set(metrics["per_class"]) == {name for _, name in table}
    objects = [a for a in truth["annotations"] if not a["iscrowd"]]
    found = 0
    for gt in objects:
        overlapping = [p for p in predictions if p["image_id"] == gt["image_id"] and iou(p["bbox"], gt["bbox"]) >= 0.5]
        if overlapping:
            best = max(overlapping, key=lambda p: p["score"])
            assert best["category_id"] == gt["category_id"], f"annotation {gt['id']}: best box has the wrong class"
            found += 1
    assert found >= 0.8 * len(objects), f"{found} of {len(objects)} objects found"


def test_every_stage_runs_on_the_folder(study: tuple[Config, list[str]]) -> None:
    cfg, sets = study
    # fetch copied the folder's split files; prepare recorded the params' classes the table lacks
    assert (cfg.paths.data / "raw" / "coco-folder" / "annotations" / "instances_val.json").is_file()
    stats = json.loads((cfg.paths.data / "prepared" / "train" / "stats.json").read_text())
    assert stats["classes_absent"]["classes.size_frequency.small.low"] == ["toothbrush"]
    assert stats["classes_absent"]["classes.comparison"] == ["umbrella"]

    for command in (
        ["anonymize", "--method", "mask"],
        ["ssim", "--variant", "mask"],
        ["export", "--variant", "mask"],
        ["evaluate", "--model", "org-n", "--on", "mask"],
        ["finetune", "--freeze", "none"],
        ["evaluate", "--model", "ft-none", "--on", "org"],
        ["relabel", "--variant", "mask"],
        ["drift", "--variant", "mask"],
        ["report"],
    ):
        invoke(*command, sets=sets)

    subset = json.loads((cfg.paths.data / "finetune_subset" / "summary.json").read_text())
    # 25 % of the 8 training images; only 2 show a person with a grid class (umbrella is called parasol here)
    assert (subset["fraction_of"], subset["train_images"], subset["eligible_images"]) == ("train", 8, 2)
    assert (subset["subset_images"], subset["capped"]) == (2, False)
    assert subset["classes_absent_from_dataset"] == ["toothbrush", "umbrella"]
    masked = json.loads((cfg.paths.metrics / "eval" / "org-n_on_mask" / "metrics.json").read_text())
    assert masked["eval_data"] == "mask" and set(masked["per_class"]) >= {"parasol", "person"}
    review = json.loads((cfg.paths.data / "relabel" / "mask" / "review_val.json").read_text())
    assert review["corrections"] == "auto-accepted"
    relabelled: dict[str, Any] = json.loads((cfg.paths.metrics / "relabel" / "org-n_on_mask.json").read_text())
    assert relabelled["void"] is masked["void"]
    drift = json.loads((cfg.paths.metrics / "drift" / "mask.json").read_text())
    assert len(drift["layers"]) == 24 and np.isfinite([layer["cka"] for layer in drift["layers"]]).all()
    # the report says which Table 5 classes the folder lacks instead of failing on them
    report = (cfg.paths.reports / "study.md").read_text()
    assert "Not among this dataset's categories, so left out: toothbrush" in report
