"""The study report from small synthetic stage outputs in the real formats (tests/report_study.py); and from none.

The value tests read numbers back out of the Markdown and compare them with the metrics files
the cells cite (through the MLflow run id in their link), computed here independently.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from anonbench.config import ORIGINAL, Config, model_id
from anonbench.io import atomic_write_json
from anonbench.report.context import ANON_COMBINATIONS, NOT_RUN
from anonbench.report.doc import Document, inline_html
from anonbench.stages import report
from anonbench.study import load_study
from tests.report_study import (
    GRID,
    LINK,
    PRIVACY,
    V10_CRITERION,
    make_void,
    markdown_tables,
    report_cfg,
    report_copy,
    synthetic_study,
    write_coverage,
    write_evaluation,
)

__all__ = ["report_cfg", "report_copy"]  # fixtures, imported for pytest

QUESTIONS = ("Q1:", "Q2:", "Q3:", "Q4:", "Q5:", "Figure 6:", "Q6 and Q7:", "Layer drift", "Q8:", "Q9:",
             "Anonymization coverage", "How to read this")  # fmt: skip
INTERVAL = r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]"


def run_ids(cfg: Config) -> dict[str, dict[str, Any]]:
    """Every evaluation's metrics.json by the MLflow run id that cells link to."""
    docs = [json.loads(p.read_text()) for p in (cfg.paths.metrics / "eval").glob("*/metrics.json")]
    return {d["mlflow_run_id"]: d for d in docs}


def cited(cell: str) -> list[tuple[str, str]]:
    """(text, run id) of every link in a cell."""
    return [(text, url.rsplit("/", 1)[-1]) for text, url in LINK.findall(cell)]


def table_after(md: str, marker: str, index: int = 0) -> list[list[str]]:
    """The ``index``-th table after the first line containing ``marker``."""
    return markdown_tables(md[md.index(marker) :])[index]


def test_every_section_is_filled_logged_and_rerun_identical(built_report: tuple[Config, list[Path]]) -> None:
    cfg, written = built_report
    md = (cfg.paths.reports / "study.md").read_text()
    html = (cfg.paths.reports / "study.html").read_text()
    for question in QUESTIONS:
        assert question in md
    assert "**Missing:**" not in md and "void (no" not in md and "All void" not in md
    assert "**Mini profile:**" in md and "not findings" in md and "**mini**" in md
    assert "COCO (every detection down to conf 0.001, at most 100 per image), best.pt weights" in md
    assert "no DeepPrivacy2 variant in this run" in md and "no evaluation is void" in md
    # Numbers link to their runs (these fake run ids are not in the store: the UI's direct route).
    assert "(http://127.0.0.1:5000/#/runs/run0001)" in md and "/#/runs/relabel-org-n" in md
    assert len(re.findall(INTERVAL, md)) > 50, "every AP difference carries its interval, in points"
    assert not re.search(r"\b0\.\d{3}\]", md.split("## Q4")[0]), "AP is in percent, not on the 0-1 scale"
    figures = sorted(p for p in written if p.suffix == ".png")
    assert {p.name for p in figures} == {
        "q1_comparison_classes.png", "q2_size.png", "q3_matrix.png", "q4_ssim.png", "q4_ssim_boxes.png",
        "q5_grid_ap.png", "q5_grid_ap50.png", "figure6_cooccurrence.png", "q6_q7_freeze.png", "q7_drift.png",
        "q8_relabel.png", "q9_privacy_utility.png", "q9_example_mask.png", "q9_example_blur.png", "coverage.png",
    }  # fmt: skip
    for figure in figures:
        assert figure.parent == cfg.paths.reports / "figures" and f"](figures/{figure.name})" in md
    assert html.count('src="data:image/png;base64,') == len(figures)
    assert not re.search(r"<(link|script)\b|src=\"(?!data:)", html), "the HTML must need no other file"
    # A difference links as a whole, interval brackets and all: no raw Markdown link is left in the HTML.
    assert "](http" not in html
    assert re.search(r'<a href="http://127\.0\.0\.1:5000/#/runs/run\d{4}">' + INTERVAL + "</a>", html)
    assert "Org on Anon" in md and "Anon on Org" in md and "Anon on Anon" in md
    assert "Table 5 classes fall into the paper's group" in md and "classes disagree, and that is expected" in md
    assert "auto-accepted" in md

    first = {p: p.read_bytes() for p in written}
    assert {p: p.read_bytes() for p in report.run(cfg)} == first, "a rerun must be byte-identical"
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.uri)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="tags.stage = 'report'")
    assert len(runs) >= 2 and int(runs["tags.cited_runs"].iloc[0]) > 10


def test_cells_equal_the_metrics_files_they_cite(built_report: tuple[Config, list[Path]]) -> None:
    """Q3's, Q4's, Q1's and Q6's cells against metrics.json, found through the run id each cell links to."""
    cfg, _ = built_report
    md = (cfg.paths.reports / "study.md").read_text()
    by_run = run_ids(cfg)

    def metrics(model: str, variant: str) -> dict[str, Any]:
        return json.loads((cfg.paths.metrics / "eval" / f"{model}_on_{variant}" / "metrics.json").read_text())

    # Q3, size n, row mask: the Org on Anon AP cell cites org-n on mask and shows its AP in percent;
    # the Δ beside it is Org on Anon minus Org on Org in points.
    q3 = table_after(md, "### Size n")
    header, row = q3[0], next(r for r in q3 if r[0] == "mask")
    ap_cell, delta_cell = row[header.index("Org on Anon")], row[header.index("Org on Anon") + 1]
    (text, run), = cited(ap_cell)  # fmt: skip
    assert by_run[run]["model_id"] == "org-n" and by_run[run]["eval_data"] == "mask"
    assert text == f"{100 * by_run[run]['AP']:.1f}"
    (text, run), = cited(delta_cell)  # fmt: skip
    value = 100 * (metrics("org-n", "mask")["AP"] - metrics("org-n", "org")["AP"])
    assert by_run[run]["model_id"] == "org-n" and text.startswith(f"{value:+.1f} [")

    # Q4, one class: Org on Anon minus Org on Org for that class's AP (params report.per_class_combination).
    q4 = table_after(md, "Per class of the use-case groups")
    column = q4[0].index("mask\nΔ AP".replace("\n", "<br>"))
    after, before = metrics("org-n", "mask")["per_class"], metrics("org-n", "org")["per_class"]
    checked = 0
    for row in q4[1:]:
        name = row[1]
        if after.get(name, {}).get("AP") is None or before.get(name, {}).get("AP") is None:
            assert row[column] == "n/a", f"{name} has no ground truth: no difference"
            continue
        (text, run), = cited(row[column])  # fmt: skip
        assert by_run[run]["model_id"] == "org-n" and by_run[run]["eval_data"] == "mask"
        assert text.startswith(f"{100 * (after[name]['AP'] - before[name]['AP']):+.1f} [")
        checked += 1
    assert checked >= 2

    # Q1: AP50 of Anon on Org over the comparison classes is the mean of those with ground truth.
    q1 = table_after(md, "## Q1:")
    column = q1[0].index("Anon on Org<br>AP50")
    (text, run), = cited(next(r for r in q1 if r[0] == "blur")[column])  # fmt: skip
    doc = by_run[run]
    values = [doc["per_class"][c]["AP50"] for c in cfg.classes.comparison if doc["per_class"].get(c, {}).get("AP50")
              is not None]  # fmt: skip
    assert (doc["model_id"], doc["eval_data"]) == ("blur-n", "org") and text == f"{100 * np.mean(values):.1f}"

    # Q6/Q7: a fine-tune's difference from the Anon-only model (mask-n on mask).
    q6 = table_after(md, "## Q6 and Q7")
    row = next(r for r in q6 if r[0] == "ft-neck")
    (text, run), = cited(row[q6[0].index("Δ vs Anon model")])  # fmt: skip
    value = 100 * (metrics("ft-neck", "mask")["AP"] - metrics("mask-n", "mask")["AP"])
    assert by_run[run]["model_id"] == "ft-neck" and text.startswith(f"{value:+.1f} [")


def test_q9_shows_each_audit_beside_chance_void_where_null(built_report: tuple[Config, list[Path]]) -> None:
    """Q9's cells are the privacy files' rates (tests/report_study.py's PRIVACY), null ones void, never 0.000."""
    cfg, _ = built_report
    md = (cfg.paths.reports / "study.md").read_text()
    q9 = md[md.index("## Q9") : md.index("## Anonymization coverage")]
    totals = table_after(q9, "Detected: the share")
    header, rows = totals[0], {row[0]: row for row in totals[1:]}
    assert list(rows) == ["org", "mask", "blur"], "org (the control) first, then the methods in params order"
    column = {name: header.index(name) for name in header}
    for variant, rates in PRIVACY.items():
        row = rows[variant]
        assert row[column["naive<br>chance"]] == f"{1 / 11:.3f}" and row[column["appearance<br>chance"]] == "0.050"
        for name, key in (("detected", "detected"), ("naive<br>rank-1", "naive"), ("inverted<br>rank-1", "inversion"),
                          ("appearance<br>rank-1", "appearance"), ("naive TMR<br>@1% FMR", "tmr")):  # fmt: skip
            value = rates[key]
            assert row[column[name]] == ("void" if value is None else f"{value:.3f}"), (variant, name)
    assert rows["mask"][column["inversion"]] == "none" and rows["blur"][column["inversion"]] == "richardson-lucy"
    image_ids = sorted(int(p.stem) for p in cfg.image_dir("org", cfg.data.val_split).glob("*.jpg"))
    assert rows["mask"][column["residual faces"]] == f"2 (image {image_ids[0]}, {image_ids[1]})"
    assert rows["org"][column["residual faces"]] == "0"

    sized = table_after(q9, "Per COCO size bucket")
    small = [row for row in sized[1:] if row[1] == "small"]
    assert len(small) == 3 and all(row[3:7] == ["void"] * 4 and row[2] == "0" for row in small), "no face: void"
    blur_large = next(row for row in sized[1:] if row[:2] == ["blur", "large"])
    assert blur_large[2:] == ["5", "0.182", "0.273", "0.455", "0.350", "10"]
    assert "0.000" not in "".join("".join(row) for row in small)

    # The example image: the validation image whose largest non-crowd person box is largest (ties: smaller id).
    truth = json.loads(cfg.annotation_file("org", cfg.data.val_split).read_text())
    boxes = [(a["bbox"][2] * a["bbox"][3], -a["image_id"]) for a in truth["annotations"]
             if a["category_id"] == 1 and not a["iscrowd"]]  # fmt: skip
    chosen = -max(boxes)[1]
    for method in ("mask", "blur"):
        assert f"Q9: {method} on val2017 image {chosen}: original" in md
        assert (cfg.paths.reports / "figures" / f"q9_example_{method}.png").stat().st_size > 10_000
    assert "figures/q9_privacy_utility.png" in md
    assert "**Answer:** org: detected 1.000 of 11 faces, naive rank-1 1.000 (chance 0.091), inverted void" in md


def test_q9_names_the_missing_audits(report_copy: Config) -> None:
    cfg = report_copy
    (cfg.paths.metrics / "privacy" / "blur.json").unlink()
    (cfg.paths.metrics / "privacy" / "org.json").unlink()
    report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    q9 = md[md.index("## Q9") : md.index("## Anonymization coverage")]
    assert "**Missing:** no privacy audit of org, blur (`metrics/privacy/<variant>.json`)" in q9
    assert [row[0] for row in table_after(q9, "Detected: the share")[1:]] == ["mask"]


def test_void_evaluations_show_their_reason_and_take_part_in_no_difference(report_copy: Config) -> None:
    cfg = report_copy
    make_void(cfg, "mask-n_on_mask")
    report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    q3 = table_after(md, "### Size n")
    header, row = q3[0], next(r for r in q3 if r[0] == "mask")
    anon_on_anon = header.index("Anon on Anon")
    assert cited(row[anon_on_anon])[0][0] == "void (no detections)"
    assert cited(row[anon_on_anon + 1])[0][0] == "void", "no difference is taken from a void evaluation"
    assert re.match(INTERVAL, cited(row[header.index("Org on Anon") + 1])[0][0]), "the others still have theirs"
    assert (
        "1 of 27 evaluations are void (no detections); some are void in: Q1 (1 of 7), Q2 (1 of 7), Q3 (1 of 9), "
        "Q5 (1 of 7), Q6 and Q7 (1 of 8), Q8 (1 of 2)" in md
    ), "the header counts evaluations (the void relabel result is not one) and names the sections"
    assert "mask: Anon on Anon void" in md, "Q8 names the void relabel result"
    assert "All void" not in md

    make_void(cfg, "*")
    report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    assert md.count("**All void:**") == 7, "Q1, Q2, Q3, Q4's Δ AP, Q5, Q6/Q7 and Q8 each say so"
    every = "every result is void in: Q1, Q2, Q3, Q4 (Δ AP), Q5, Q6 and Q7, Q8"
    assert f"27 of 27 evaluations are void (no detections); {every}" in md
    detections = md[md.index("## Q1") : md.index("## Q4")] + md[md.index("## Q5") : md.index("### Frequency")]
    assert not re.search(INTERVAL, md) and not re.search(r"\[\d+\.\d\]\(", detections), "no number for a void one"
    for figure in ("q1_comparison_classes.png", "q5_grid_ap.png", "q6_q7_freeze.png"):
        assert f"figures/{figure}" not in md


def test_a_second_family_asks_whether_the_answer_depends_on_the_detector(report_copy: Config) -> None:
    """YOLOv8 beside YOLOv10: Q2 gains a table per family and size; the other questions stay YOLOv10's."""
    cfg = report_copy
    before = (cfg.paths.reports / "study.md").read_text()
    assert "Does the answer depend on the detector?" not in before, "one family: nothing to compare"
    variants = (ORIGINAL, *cfg.anonymize.methods)
    for seed, (train, data) in enumerate(((t, d) for t in variants for d in variants), start=500):
        write_evaluation(cfg, model_id(train, "n", "yolov8"), train, data, seed, "n", "yolov8")
    report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    q1 = slice(md.index("## Q1"), md.index("## Q2"))
    assert md[q1] == before[before.index("## Q1") : before.index("## Q2")], "Q1 is still asked of YOLOv10 only"
    table = table_after(md, "### Does the answer depend on the detector?")
    header, rows = table[0], {row[0]: row for row in table[1:]}
    assert list(rows) == ["yolov10 n", "yolov8 n"]
    study = load_study(cfg)
    for family, ids in (("yolov10", "{}-n"), ("yolov8", "{}-yolov8-n")):
        base = study.find(ids.format(ORIGINAL), ORIGINAL)
        after = study.find(ids.format(ORIGINAL), "mask")  # mask: Org on Anon
        assert base is not None and after is not None
        cell = rows[f"{family} n"][header.index("mask: Org on Anon − Org on Org")]
        assert cited(cell)[0] == (study.delta(after, base).text(), after.run_id), family
    signs = {column: set() for column in header[2:]}  # which side of zero each family's interval lies on
    for row in rows.values():
        for column, cell in zip(header[2:], row[2:], strict=True):
            if bounds := re.search(r"\[([+-]\d+\.\d), ([+-]\d+\.\d)\]", cell):
                low, high = map(float, bounds.groups())
                signs[column] |= {1} if low > 0 else {-1} if high < 0 else set()
    flipped = [c.removesuffix(" − Org on Org") for c, found in signs.items() if len(found) > 1]
    answer = md[md.index("### Does the answer depend on the detector?") :].split("**Answer:**")[1].split("\n")[0]
    assert answer.startswith(f" yes for {'; '.join(flipped)}:") if flipped else answer.startswith(" no "), answer


def test_header_states_the_dp2_mode_and_weights(make_config: Any, tiny_coco: Path, mlflow_db: Path) -> None:
    grid = ["anonymize.methods=[dp2_fullbody, mask]", "train.variants=[org, mask]", "evaluate.variants=[org, mask]"]
    cfg = make_config("workers=1", *grid, source=tiny_coco)
    dp2 = {"mode": "detector", "untrained": True, "config": "configs/anonymizers/FB_cse.py", "device": "cpu",
           "amp": False}  # fmt: skip
    write_coverage(cfg, "dp2_fullbody", dp2)
    report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    assert "dp2_fullbody: DeepPrivacy2 in `detector` mode with **untrained** weights (not the paper's)" in md
    assert "4 persons below its size filter" in md


def test_header_names_the_criterion_and_head_the_files_record(report_copy: Config) -> None:
    cfg = report_copy
    report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    trained = len(list(cfg.paths.models.glob("*/train.json")))
    assert f"training criterion {V10_CRITERION} ({trained} models)" in md
    assert "best.pt weights, YOLOv10's NMS-free one-to-one head (its top 300)" in md
    assert "not recorded" not in md[: md.index("## Q1")]

    train_json = cfg.paths.models / "org-n" / "train.json"
    atomic_write_json(train_json, {k: v for k, v in json.loads(train_json.read_text()).items() if k != "criterion"})
    metrics_json = cfg.paths.metrics / "eval" / "org-n_on_org" / "metrics.json"
    old = json.loads(metrics_json.read_text())
    atomic_write_json(metrics_json, {k: v for k, v in old.items() if k not in ("head", "nms", "head_topk")})
    report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    assert f"{V10_CRITERION} ({trained - 1} models); not recorded (1 model)" in md
    assert "head not recorded (nms not recorded): 1 evaluations" in md


def test_a_narrowed_grid_compares_sizes_only_where_it_trains_them(
    make_config: Any, tiny_coco: Path, mlflow_db: Path
) -> None:
    """The paper's grid in small: blur at s only, as the paper trained its classic methods at m only."""
    narrowed = ("train.sizes=[n, s]", "finetune.base.size=s", "train.sizes_by_variant={blur: [s]}")
    cfg = make_config(*GRID, *narrowed, source=tiny_coco)
    synthetic_study(cfg)
    report.run(cfg)
    md = (cfg.paths.reports / "study.md").read_text()
    assert "| models | YOLOv10 n, s (blur at s only) from scratch" in md
    q2 = table_after(md, "## Q2")
    assert [row[0] for row in q2[1:]] == ["Org on Org", *(f"mask: {name}" for name in ANON_COMBINATIONS)]
    assert "Not compared across sizes: blur (trained at s), as train.sizes_by_variant sets" in md
    assert "Not trained at n (train.sizes_by_variant): blur." in md
    assert [row[0] for row in table_after(md, "### Size n")[1:]] == ["mask"]
    assert [row[0] for row in table_after(md, "### Size s")[1:]] == ["mask", "blur"]
    # Q1 compares every method at the base size, where each was trained: no cell is missing.
    q1 = table_after(md, "## Q1")
    assert [row[0] for row in q1[1:]] == ["mask", "blur"] and NOT_RUN not in str(q1)
    assert "**Answer (size s):**" in md


def test_missing_inputs_are_named_not_fatal(report_cfg: Config) -> None:
    report.run(report_cfg)
    md = (report_cfg.paths.reports / "study.md").read_text()
    for question in QUESTIONS:
        assert question in md
    assert md.count("**Missing:**") >= 9
    assert "anonbench relabel --variant" in md and "anonbench drift" in md and "anonbench finetune" in md


def test_inline_marks_and_escaping() -> None:
    assert inline_html("[0.5](http://x/#/runs/1) **b** `c` <script>") == (
        '<a href="http://x/#/runs/1">0.5</a> <b>b</b> <code>c</code> &lt;script&gt;'
    )
    # An interval inside link text (one level of brackets) is still one link; a newline breaks a cell's line.
    assert inline_html("[+1.2 [-0.3, +2.0]](http://x/#/runs/2)\nvoid") == (
        '<a href="http://x/#/runs/2">+1.2 [-0.3, +2.0]</a><br>void'
    )
    doc = Document()
    doc.table(["a|b", "c"], [["1", "2\n3"]])
    doc.table(["empty"], [])
    assert doc.markdown(Path(".")) == "| a\\|b | c |\n| --- | ---: |\n| 1 | 2<br>3 |\n"
    assert '<td class="l">1</td><td>2<br>3</td>' in doc.html("t")
