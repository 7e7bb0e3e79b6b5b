"""The example plugin method through the study: anonymize -> ssim -> export -> train -> evaluate -> report.

``inpaint`` (examples/anonbench-plugin-inpaint, installed by ``make install``) is named in
``anonymize.methods`` and the grids beside the built-in ``mask``; nothing else tells anonbench about it.
Its chain runs through the real stages on tiny-coco (one epoch at 64 px: the evaluations may well be
void, which the report must say and still list the method). What the plugin's chain does not make
(the Org, mask and fine-tuned models and their evaluations, drift, relabel) comes from the report's
synthetic study (tests/report_study.py), scored on the real variants' ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anonbench.config import finetune_model_id, model_id
from anonbench.io import atomic_write_json
from anonbench.stages import anonymize, evaluate, export, report, ssim, train
from tests.conftest import config_under
from tests.report_study import markdown_tables, synthetic_study, write_evaluation

pytestmark = pytest.mark.slow

BUILT_IN = ("workers=1", "report.bootstrap_samples=20", "report.cka_images=4", "anonymize.methods=[mask]",
            "train.variants=[org, mask]", "evaluate.variants=[org, mask]", "finetune.variant=mask",
            "finetune.freeze={none: []}")  # fmt: skip
WITH_PLUGIN = ("anonymize.methods=[mask, inpaint]", "train.variants=[org, mask, inpaint]",
               "evaluate.variants=[org, mask, inpaint]", "anonymize.inpaint.radius=3",
               "train.epochs=1", "train.imgsz=64", "train.batch=4", "train.workers=0")  # fmt: skip


def test_a_plugin_method_goes_through_the_study_into_the_report(
    coco_mini: Path, tiny_coco: Path, tmp_path: Path, mlflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's sqlite store keeps artifacts in ./mlruns
    synthetic_study(config_under(tmp_path, coco_mini, *BUILT_IN, source=tiny_coco))
    cfg = config_under(tmp_path, coco_mini, *BUILT_IN, *WITH_PLUGIN, source=tiny_coco)
    val = cfg.data.val_split

    for method in ("mask", "inpaint"):  # mask for real too: the plugin's model is evaluated on its images
        anonymize.run(cfg, method)
    ssim.run(cfg, "inpaint")
    export.run(cfg, "inpaint")
    train.run(cfg, "inpaint", "n")
    for variant in cfg.evaluate.variants:
        evaluate.run(cfg, model_id("inpaint", "n"), variant)
    others = [(model_id(v, "n"), v, "n") for v in ("org", "mask")] + [(finetune_model_id("none"), "mask", "n")]
    for seed, (name, trained_on, size) in enumerate(others, start=100):
        write_evaluation(cfg, name, trained_on, "inpaint", seed, size)
    layers = [{"layer": i, "module": "Conv", "part": "x", "cka": 1 - 0.01 * i} for i in range(24)]
    drift = {"variant": "inpaint", "model_id": "org-n", "layers": layers, "mlflow_run_id": "drift0002"}
    atomic_write_json(cfg.paths.metrics / "drift" / "inpaint.json", drift)

    coverage = json.loads((cfg.variant_root("inpaint") / f"coverage_{val}.json").read_text())
    assert coverage["method"] == "inpaint" and coverage["coverage"] > 0.95  # inpainting changes the persons
    scored = json.loads((cfg.paths.metrics / "eval" / "inpaint-n_on_org" / "metrics.json").read_text())
    assert (scored["train_data"], scored["eval_data"]) == ("inpaint", "org")

    report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    assert "methods mask, inpaint" in md
    tables = markdown_tables(md)
    q1 = next(t for t in tables if t[0][0] == "method")
    assert [row[0] for row in q1[1:]] == ["mask", "inpaint"]
    assert all(cell not in ("", "—") for cell in q1[1][1:]), "mask's cells (synthetic, never void) have numbers"
    covered = next(t for t in tables if any(row[0] == "inpaint" for row in t[1:]) and "pixel coverage" in t[0])
    assert {row[0] for row in covered[1:]} >= {"mask", "inpaint"}
