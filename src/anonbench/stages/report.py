"""Stage report: the study's answers to Q1-Q8 (DESIGN.md) from every stage's outputs.

Writes ``reports/study.md`` with ``reports/figures/*.png`` beside it and
``reports/study.html``, the same report as one self-contained file (figures
embedded), and logs all of it to one MLflow run (stage ``report``). Every
number links to the MLflow run that produced it; every AP difference carries a
paired bootstrap interval over the validation images. A question whose inputs
are missing says which and how to make them instead of failing. Reading the
stored predictions and tables only: no torch, no inference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from anonbench import report_figures as charts
from anonbench.cka import YOLOV10_PARTS, plot_cka
from anonbench.config import FINETUNE_PREFIX, ORIGINAL, Config, finetune_model_id
from anonbench.io import atomic_write_text
from anonbench.reportdoc import Document
from anonbench.study import Delta, EvalRecord, RunLinks, Study, load_study
from anonbench.tracking import mlflow_run

TITLE = "anonbench study report"
SIZE_ORDER = "nsmlx"
FREQUENCIES: tuple[Literal["low", "medium", "high"], ...] = ("low", "medium", "high")


@dataclass
class Context:
    """What every section needs: the results, the link maker, where figures go, the figures made."""

    study: Study
    links: RunLinks
    figures: Path
    made: list[Path]

    @property
    def cfg(self) -> Config:
        """The configuration the report was made with."""
        return self.study.cfg

    def figure(self, doc: Document, path: Path, caption: str) -> None:
        """Add a written figure to the document and remember it."""
        self.made.append(path)
        doc.figure(path, caption)

    def ap(self, record: EvalRecord | None, classes: list[str] | None = None) -> str:
        """AP of an evaluation (over ``classes``), linked to its run."""
        return "n/a" if record is None else self.links.number(record.ap(classes), record.run_id)

    def delta(self, after: EvalRecord | None, before: EvalRecord | None, classes: list[str] | None = None) -> Delta:
        """Paired difference with its interval; undefined when either evaluation is missing."""
        if after is None or before is None:
            return Delta(None)
        return self.study.delta(after, before, classes)

    def org_on_org(self) -> tuple[str | None, EvalRecord | None]:
        """The reference size and the Org model's evaluation on original data at that size."""
        size = reference_size(self.study)
        return size, self.study.find(f"{ORIGINAL}-{size}", ORIGINAL) if size else None

    def linked_delta(
        self, after: EvalRecord | None, before: EvalRecord | None, classes: list[str] | None = None
    ) -> str:
        """A difference with its interval, linked to the run of ``after``."""
        if after is not None and before is not None and after.key == before.key:
            return "reference"
        delta = self.delta(after, before, classes)
        return delta.text() if after is None or delta.value is None else self.links.text(delta.text(), after.run_id)


def trained(study: Study) -> list[EvalRecord]:
    """Evaluations of models trained from scratch (not fine-tuned)."""
    return [e for e in study.evaluations if not e.model_id.startswith(FINETUNE_PREFIX)]


def sizes_of(records: list[EvalRecord]) -> list[str]:
    """Model sizes present, smallest first."""
    return sorted({e.model_size for e in records}, key=SIZE_ORDER.index)


def reference_size(study: Study) -> str | None:
    """The size single-size questions use: the fine-tune base size when trained, else the smallest."""
    sizes = sizes_of(trained(study))
    if not sizes:
        return None
    return study.cfg.finetune.base.size if study.cfg.finetune.base.size in sizes else sizes[0]


def variants_in(cfg: Config, names: set[str]) -> list[str]:
    """Variant names in the configured order (org first)."""
    order = [ORIGINAL, *cfg.anonymize.methods]
    return sorted(names, key=lambda v: order.index(v) if v in order else len(order))


def significance(delta: Delta) -> str:
    """Plain words for whether an interval excludes zero."""
    if delta.value is None or delta.low is None or delta.high is None:
        return "no interval"
    return "interval excludes 0" if delta.low > 0 or delta.high < 0 else "interval includes 0"


def _missing_models(doc: Document, what: str) -> None:
    doc.missing(f"{what} (run `anonbench train` and `anonbench evaluate` for the models and variants in params.yaml).")


def header(doc: Document, ctx: Context) -> None:
    """Title, profile, what the numbers are and how to read them."""
    cfg = ctx.cfg
    doc.heading(TITLE, 1)
    counts = {}
    for split in cfg.data.splits:
        stats = cfg.paths.data / "prepared" / split / "stats.json"
        counts[split] = json.loads(stats.read_text(encoding="utf-8")).get("images") if stats.is_file() else None
    images = ", ".join(f"{split} {n if n is not None else '?'} images" for split, n in counts.items())
    # What the trainings really ran (train.json), which may differ from the current params.
    ran = sorted(
        {str(t["epochs"]) for t in ctx.study.trainings.values() if t.get("stage") == "train" and "epochs" in t}
    )
    epochs = "/".join(ran) or str(cfg.train.epochs)
    doc.paragraph(
        f"Profile **{cfg.profile}**: data `{cfg.data.source}` ({images}); YOLOv10 sizes {', '.join(cfg.train.sizes)} "
        f"trained from scratch for {epochs} epochs at imgsz {cfg.train.imgsz} on `{cfg.train.device}`; "
        f"variants {', '.join(cfg.train.variants)}; seed {cfg.seed}."
    )
    if cfg.profile == "mini":
        doc.note(
            f"**Mini profile:** detection numbers come from {epochs} CPU epochs on "
            f"{counts.get(cfg.data.train_split) or 128} training images. They exercise the pipeline end to end; "
            "they are **not findings**. SSIM, coverage and the relabel proposals are real measurements."
        )
    rep = cfg.report
    n_val = next(iter({len(ids) for ids, _ in ctx.study.resamples.values()}), None)
    doc.paragraph(
        f"Every number links to the MLflow run that produced it (tracking UI {rep.tracking_ui}; `make mlflow-ui` "
        f"serves the local store). Every AP difference is given as value [low, high]: a {rep.confidence:.0%} "
        f"percentile bootstrap interval from {rep.bootstrap_samples} resamples of the {n_val or '?'} validation "
        f"images (seed {cfg.seed}), paired: both sides are scored on the same resampled images, reusing each "
        f"evaluation's per-image COCO matches. AP is COCO AP@[.50:.95] (detections down to conf "
        f"{cfg.evaluate.conf}, at most {cfg.evaluate.max_det} per image)."
    )


def q1_methods(doc: Document, ctx: Context) -> None:
    """Q1: training on each anonymization method, overall and on the comparison classes."""
    doc.heading("Q1: Does training on realistic anonymization beat non-realistic methods?")
    cfg, study = ctx.cfg, ctx.study
    size, base = ctx.org_on_org()
    if base is None:
        _missing_models(doc, f"the Org model's evaluation on original data (`metrics/eval/{ORIGINAL}-<size>_on_org`)")
        return
    classes = cfg.classes.comparison
    rows, per_class = [], {}
    for variant in variants_in(cfg, {e.train_data for e in trained(study) if e.model_size == size}):
        on_org = study.find(f"{variant}-{size}", ORIGINAL)
        on_own = study.find(f"{variant}-{size}", variant)
        rows.append([
            f"{variant}-{size}", ctx.ap(on_org), ctx.linked_delta(on_org, base), ctx.ap(on_own),
            ctx.ap(on_org, classes), ctx.linked_delta(on_org, base, classes),
        ])  # fmt: skip
        if on_org is not None:
            per_class[variant] = on_org
    doc.paragraph(
        f"Models of size {size} trained on each variant, scored on the original validation split (the deployment "
        f"case), against the Org model. Comparison classes ({len(classes)}): the earlier non-realistic study's."
    )
    doc.table(
        ["trained on", "AP on org", "Δ vs Org", "AP on own variant", "AP, comparison classes", "Δ vs Org"],
        rows,
    )
    doc.table(
        ["class", *per_class],
        [
            [c, *(ctx.links.number(e.per_class.get(c, {}).get("AP"), e.run_id) for e in per_class.values())]
            for c in classes
        ],
    )
    path = charts.grouped_bars(
        classes,
        {v: [e.per_class.get(c, {}).get("AP") for c in classes] for v, e in per_class.items()},
        f"AP per comparison class on original val, size {size}",
        "AP",
        ctx.figures / "q1_comparison_classes.png",
    )
    ctx.figure(doc, path, f"Q1: AP on the comparison classes by training variant (size {size}, evaluated on org).")
    answers = [
        f"{v}: {ctx.delta(e, base).text()} overall ({significance(ctx.delta(e, base))}), "
        f"{ctx.delta(e, base, classes).text()} on the comparison classes"
        for v, e in per_class.items()
        if v != ORIGINAL
    ]
    doc.paragraph("**Answer (AP change vs the Org model on original data):** " + ("; ".join(answers) or "n/a") + ".")


def q2_size(doc: Document, ctx: Context) -> None:
    """Q2: mAP against model size for every train x eval combination."""
    doc.heading("Q2: Does model size matter?")
    records = trained(ctx.study)
    if not records:
        _missing_models(doc, "no evaluation of a trained model")
        return
    sizes = sizes_of(records)
    params = {}
    for size in sizes:
        counts = [t.get("params_fused") for t in ctx.study.trainings.values() if str(t.get("model_size")) == size]
        params[size] = next((c for c in counts if c), None)
    combos = sorted({(e.train_data, e.eval_data) for e in records})
    rows, series = [], {}
    for train, evaluated in combos:
        found = {s: ctx.study.find(f"{train}-{s}", evaluated) for s in sizes}
        row = [f"{train} on {evaluated}", *(ctx.ap(found[s]) for s in sizes)]
        if len(sizes) > 1:
            row.append(ctx.linked_delta(found[sizes[-1]], found[sizes[0]]))
        rows.append(row)
        series[f"{train} on {evaluated}"] = [
            (float(params[s] or SIZE_ORDER.index(s) + 1), _ap_of(found[s])) for s in sizes
        ]
    header = [f"{s} ({count / 1e6:.1f} M)" if (count := params[s]) else s for s in sizes]
    doc.paragraph("AP of every train x eval combination per model size (fused parameter count from train.json).")
    doc.table(["combination", *header, *([f"Δ {sizes[-1]} vs {sizes[0]}"] if len(sizes) > 1 else [])], rows)
    logx = all(params[s] for s in sizes)
    path = charts.lines(
        series, "AP against model size", "fused parameters" if logx else "size", "AP", ctx.figures / "q2_size.png", logx
    )
    ctx.figure(doc, path, "Q2: AP against model size for every train x eval combination.")
    if len(sizes) == 1:
        doc.paragraph(f"**Answer:** only size {sizes[0]} was trained (train.sizes); Q2 needs several sizes.")
    else:
        doc.paragraph(
            f"**Answer:** the last column is the AP gained from {sizes[0]} to {sizes[-1]}, with its interval."
        )


def q3_matrix(doc: Document, ctx: Context) -> None:
    """Q3: the train x eval matrix (heatmap per size) and its differences from Org on Org."""
    doc.heading("Q3: Are original and anonymized data exchangeable?")
    cfg, study = ctx.cfg, ctx.study
    records = trained(study)
    size, base = ctx.org_on_org()
    if size is None:
        _missing_models(doc, "no evaluation of a trained model")
        return
    trains = variants_in(cfg, {e.train_data for e in records})
    evals = variants_in(cfg, {e.eval_data for e in records})
    rows = [
        [
            t,
            *(
                f"{ctx.ap(study.find(f'{t}-{size}', e))} ({ctx.linked_delta(study.find(f'{t}-{size}', e), base)})"
                for e in evals
            ),
        ]
        for t in trains
    ]
    doc.paragraph(f"AP of each training variant (rows) on each evaluation variant (columns), size {size}; in brackets "
                  "the difference from Org on Org with its interval.")  # fmt: skip
    doc.table(["trained on \\ evaluated on", *evals], rows)
    panels = {
        f"size {s}": (trains, evals, [[_ap_of(study.find(f"{t}-{s}", e)) for e in evals] for t in trains])
        for s in sizes_of(records)
    }
    path = charts.heatmaps(panels, "AP: train (rows) x eval (columns)", ctx.figures / "q3_matrix.png")
    ctx.figure(doc, path, "Q3: the train x eval AP matrix, one heatmap per model size.")
    answers = []
    for variant in (v for v in evals if v != ORIGINAL):
        org_on_anon = study.find(f"{ORIGINAL}-{size}", variant)
        anon_on_org = study.find(f"{variant}-{size}", ORIGINAL)
        anon_on_anon = study.find(f"{variant}-{size}", variant)
        answers.append(
            f"{variant}: Org on Anon {ctx.delta(org_on_anon, base).text()} vs Org on Org; "
            f"Anon on Org {ctx.delta(anon_on_org, anon_on_anon).text()} vs Anon on Anon"
        )
    doc.paragraph("**Answer:** " + ("; ".join(answers) or "no anonymized evaluation variant") + ".")


def _ap_of(record: EvalRecord | None) -> float | None:
    return None if record is None else record.ap()


def _ssim_mean(entry: dict[str, Any], level: str, component: str = "ssim") -> float | None:
    value: float | None = entry.get(level, {}).get(component, {}).get("mean")
    return value


def q4_ssim(doc: Document, ctx: Context) -> None:
    """Q4: SSIM per use-case group and class, whole image vs box, with the l / c / s split."""
    doc.heading("Q4: How much does anonymization alter images and objects?")
    cfg, study = ctx.cfg, ctx.study
    if not study.ssim:
        doc.missing("no SSIM summary (`data/ssim/<variant>/summary.json`); run `anonbench ssim --variant <method>`.")
        return
    doc.paragraph(
        "Mean SSIM of whole images that contain the group's classes next to the mean SSIM of the classes' boxes, "
        "and the box SSIM's luminance (l), contrast (c) and structure (s) factors; images with a person "
        "(the paper's scope). Use-case groups from params (DESIGN.md Table 1)."
    )
    rows, figure_series = [], {}
    for variant, summary in study.ssim.items():
        run = ctx.links.find("ssim", variant=variant)
        for split, scopes in summary["splits"].items():
            scope = scopes["with_person"]
            entries = {"all boxes": {**scope, "classes": ["every class"]}, **scope["use_case_groups"]}
            for group, entry in entries.items():
                rows.append([
                    variant, split, group, ", ".join(entry["classes"]),
                    *(ctx.links.number(_ssim_mean(entry, level, comp), run)
                      for level, comp in (("image", "ssim"), ("box", "ssim"), ("box", "luminance"),
                                          ("box", "contrast"), ("box", "structure"))),
                    str(entry.get("box", {}).get("count", 0)),
                ])  # fmt: skip
            if split == _primary_split(cfg, summary):
                groups = scope["use_case_groups"]
                figure_series[f"{variant} image"] = [_ssim_mean(groups[g], "image") for g in groups]
                figure_series[f"{variant} box"] = [_ssim_mean(groups[g], "box") for g in groups]
    doc.table(
        ["variant", "split", "group", "classes", "image SSIM", "box SSIM", "box l", "box c", "box s", "boxes"], rows
    )
    groups = list(cfg.classes.use_case_groups)
    path = charts.grouped_bars(
        groups, figure_series, "Mean SSIM per use-case group", "SSIM", ctx.figures / "q4_ssim.png"
    )
    ctx.figure(doc, path, "Q4: whole-image vs box SSIM per use-case group and variant (images with a person).")
    class_rows = []
    for variant, summary in study.ssim.items():
        run = ctx.links.find("ssim", variant=variant)
        split = _primary_split(cfg, summary)
        classes = summary["splits"][split]["with_person"]["classes"]
        for group, names in cfg.classes.use_case_groups.items():
            for name in names:
                entry = classes.get(name)
                if entry is None:
                    class_rows.append([variant, split, group, name, "no boxes", "", "", "", ""])
                    continue
                class_rows.append([
                    variant, split, group, name,
                    *(ctx.links.number(_ssim_mean(entry, level, comp), run) for level, comp in
                      (("image", "ssim"), ("box", "ssim"), ("box_overlapping_anonymized", "ssim"),
                       ("box_outside_anonymized", "ssim"))),
                    str(entry["box"]["count"]),
                ])  # fmt: skip
    doc.paragraph("Per class of the use-case groups; boxes overlapping the anonymized region (changed objects) "
                  "apart from boxes outside it (neighbours of changed people).")  # fmt: skip
    doc.table(["variant", "split", "group", "class", "image SSIM", "box SSIM", "box SSIM, overlapping",
               "box SSIM, outside", "boxes"], class_rows)  # fmt: skip
    answers = []
    for variant, summary in study.ssim.items():
        groups_entry = summary["splits"][_primary_split(cfg, summary)]["with_person"]["use_case_groups"]
        parts = [f"{g} {_fmt(_ssim_mean(e, 'box'))}" for g, e in groups_entry.items()]
        answers.append(f"{variant}: box SSIM " + ", ".join(parts))
    doc.paragraph("**Answer:** " + "; ".join(answers) + ".")


def _primary_split(cfg: Config, summary: dict[str, Any]) -> str:
    """The split figures use: train when measured (more boxes), else the first one."""
    splits = list(summary["splits"])
    return cfg.data.train_split if cfg.data.train_split in splits else splits[0]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def q5_grid(doc: Document, ctx: Context) -> None:
    """Q5: AP differences on the size x frequency grid relative to Org on Org."""
    doc.heading("Q5: Do object size and co-occurrence with 'person' matter?")
    cfg, study = ctx.cfg, ctx.study
    size, base = ctx.org_on_org()
    if base is None:
        _missing_models(doc, "the Org model's evaluation on original data")
        return
    grid = cfg.classes.size_frequency
    cells = [(f"{object_size} / {f}", grid[object_size][f]) for object_size in grid for f in FREQUENCIES]
    doc.paragraph(
        f"Mean AP over each cell's classes (object size / co-occurrence with person; params "
        f"classes.size_frequency, DESIGN.md Table 5) minus the same for Org on Org ({ctx.ap(base)} overall), "
        f"size {size}, with intervals."
    )
    rows, labels, values, answers = [], [], [], []
    for record in (e for e in trained(study) if e.model_size == size and e.key != base.key):
        deltas = [ctx.delta(record, base, classes) for _, classes in cells]
        label = f"{record.train_data} on {record.eval_data}"
        rows.append([label, *(ctx.links.text(d.text(), record.run_id) for d in deltas)])
        labels.append(label)
        values.append([d.value for d in deltas])
        defined = [(d.value, name, d) for (name, _), d in zip(cells, deltas, strict=True) if d.value is not None]
        if defined:
            _, name, worst = min(defined, key=lambda item: item[0])
            answers.append(f"{label}: {name} {worst.text()}")
    if not rows:
        _missing_models(doc, f"no evaluation other than Org on Org at size {size}")
        return
    doc.table(["combination", *(name for name, _ in cells)], rows)
    panel = {f"size {size}": (labels, [name for name, _ in cells], values)}
    path = charts.heatmaps(panel, "Δ AP vs Org on Org per size / frequency cell", ctx.figures / "q5_grid.png", True)
    ctx.figure(doc, path, f"Q5: AP differences on the size x frequency grid (size {size}), one row per combination.")
    doc.paragraph("**Answer (the cell that lost most per combination):** " + "; ".join(answers) + ".")


def q6_q7_freeze(doc: Document, ctx: Context) -> None:
    """Q6 and Q7: fine-tuning with frozen layer ranges against the Org and Anon models, and layer drift."""
    doc.heading("Q6 and Q7: Is fine-tuning enough, and which part of the detector is most affected?")
    cfg, study = ctx.cfg, ctx.study
    ft = cfg.finetune
    base = study.find(f"{ft.base.variant}-{ft.base.size}", ORIGINAL)
    base_anon = study.find(f"{ft.base.variant}-{ft.base.size}", ft.variant)
    tuned = [e for e in study.evaluations if e.model_id.startswith(FINETUNE_PREFIX)]
    if base is None or not tuned:
        doc.missing(
            "fine-tuned models' evaluations (`metrics/eval/ft-<freeze>_on_<variant>`) or the base model's; run "
            "`anonbench finetune` and `anonbench evaluate` for them."
        )
    else:
        models = [
            ("Org model", f"{ft.base.variant}-{ft.base.size}", "trained on org"),
            ("Anon model", f"{ft.variant}-{ft.base.size}", f"trained on {ft.variant}"),
            *((finetune_model_id(name), finetune_model_id(name), _frozen(cfg, name)) for name in ft.freeze),
        ]
        rows = []
        series: dict[str, list[float | None]] = {ORIGINAL: [], ft.variant: []}
        for label, model_id, frozen in models:
            on_org, on_anon = study.find(model_id, ORIGINAL), study.find(model_id, ft.variant)
            rows.append([label, frozen, ctx.ap(on_org), ctx.linked_delta(on_org, base), ctx.ap(on_anon),
                         ctx.linked_delta(on_anon, base_anon)])  # fmt: skip
            series[ORIGINAL].append(_ap_of(on_org))
            series[ft.variant].append(_ap_of(on_anon))
        doc.paragraph(
            f"The Org model ({ft.base.variant}-{ft.base.size}) fine-tuned on a {ft.fraction:.0%} subset of "
            f"{ft.variant} training images with persons, one model per freeze config; differences from the Org model "
            f"on the same evaluation data."
        )
        doc.table(["model", "frozen layers", "AP on org", "Δ vs Org model", f"AP on {ft.variant}",
                   "Δ vs Org model"], rows)  # fmt: skip
        path = charts.grouped_bars(
            [m[0] for m in models], series, "AP by freeze config", "AP", ctx.figures / "q6_q7_freeze.png"
        )
        ctx.figure(doc, path, "Q6/Q7: fine-tuned models by freeze config against the Org and Anon models.")
        best = max(
            (e for e in tuned if e.eval_data == ft.variant and e.ap() is not None),
            key=lambda e: e.ap() or 0.0,
            default=None,
        )
        if best is not None:
            gain = ctx.delta(best, base_anon)
            doc.paragraph(f"**Answer:** on {ft.variant}, the best fine-tune is {best.model_id} "
                          f"({gain.text()} vs the Org model, {significance(gain)}).")  # fmt: skip
    drift_section(doc, ctx)


def _frozen(cfg: Config, name: str) -> str:
    layers = cfg.finetune.frozen_layers(name)
    return f"{layers[0]}-{layers[-1]}" if layers else "none"


def drift_section(doc: Document, ctx: Context) -> None:
    """Layer drift: linear CKA per layer of the Org model between original and anonymized images."""
    doc.heading("Layer drift (linear CKA)", 3)
    drift = ctx.study.drift
    if not drift:
        doc.missing("no layer drift (`metrics/drift/<variant>.json`); run `anonbench drift --variant <method>`.")
        return
    rows = []
    for variant, result in drift.items():
        scores = {layer["layer"]: layer["cka"] for layer in result["layers"]}
        lowest = min(scores, key=lambda i: (math.isnan(scores[i]), scores[i]))  # a constant layer's NaN is no drop
        means = [
            sum(scores[i] for i in range(first, last + 1)) / (last - first + 1) for _, first, last in YOLOV10_PARTS
        ]
        rows.append([variant, *(ctx.links.number(m, result["mlflow_run_id"]) for m in means),
                     ctx.links.text(f"{lowest} ({scores[lowest]:.3f})", result["mlflow_run_id"])])  # fmt: skip
    model = next(iter(drift.values()))["model_id"]
    doc.paragraph(
        f"CKA between {model}'s activations on original and anonymized versions of the same validation images "
        "(1: the layer sees them alike); means per part, and the layer that moves most."
    )
    doc.table(["variant", *(f"{name} ({a}-{b})" for name, a, b in YOLOV10_PARTS), "lowest layer"], rows)
    curves = {v: [layer["cka"] for layer in r["layers"]] for v, r in drift.items()}
    path = plot_cka(curves, ctx.figures / "q7_drift.png", f"Layer drift of {model}")
    ctx.figure(doc, path, "Q7: linear CKA per YOLOv10 layer, original vs anonymized images.")


def q8_relabel(doc: Document, ctx: Context) -> None:
    """Q8: the same predictions scored against the original and the corrected ground truth."""
    doc.heading("Q8: Do stale labels distort results?")
    study = ctx.study
    if not study.relabel:
        doc.missing("no relabel evaluation (`metrics/relabel/*.json`); run `anonbench relabel --variant <method>`.")
        return
    rows = []
    for result in study.relabel:
        variant = result["eval_data"]
        counts = study.proposals.get(variant, {})
        delta, delta50 = result["delta"]["AP"], result["delta"]["AP50"]
        rows.append([
            f"{result['model_id']} on {variant}", f"{counts.get('remove', '?')} / {counts.get('extend', '?')}",
            ctx.links.number(result["original"]["AP"], result.get("eval_mlflow_run_id")),
            ctx.links.number(result["corrected"]["AP"], result["mlflow_run_id"]),
            ctx.links.text(_delta_of(delta).text(), result["mlflow_run_id"]),
            ctx.links.text(_delta_of(delta50).text(), result["mlflow_run_id"]),
        ])  # fmt: skip
    doc.paragraph(
        "Every model evaluated on an anonymized variant, scored on its validation split against the original "
        "ground truth and against the corrected one (objects likely removed dropped, person boxes grown to the "
        "anonymized region; `data/relabel/<variant>/`), from the same stored predictions."
    )
    doc.table(["model on variant", "proposals (remove / extend)", "AP, original GT", "AP, corrected GT",
               "Δ AP", "Δ AP50"], rows)  # fmt: skip
    size = reference_size(study)
    focus = [r for r in study.relabel if r["model_id"] == f"{ORIGINAL}-{size}"] or study.relabel[:1]
    series, labels = {}, []
    for result in focus:
        changed = {c: d["AP"] for c, d in result["delta"]["per_class"].items() if d["AP"]["value"]}
        top = sorted(changed, key=lambda c: -abs(changed[c]["value"]))[:10]
        doc.paragraph(f"Classes that moved most for **{result['model_id']} on {result['eval_data']}**:")
        doc.table(["class", "Δ AP"], [[c, ctx.links.text(_delta_of(changed[c]).text(), result["mlflow_run_id"])]
                                     for c in top] or [["(no class changed)", ""]])  # fmt: skip
        labels += [c for c in top if c not in labels]
        series[f"{result['model_id']} on {result['eval_data']}"] = result
    figure_series = {
        name: [r["delta"]["per_class"].get(c, {}).get("AP", {}).get("value") for c in labels]
        for name, r in series.items()
    }
    path = charts.grouped_bars(labels or ["none"], figure_series if labels else {"none": [0.0]},
                               "Δ AP per class: corrected minus original ground truth", "Δ AP",
                               ctx.figures / "q8_relabel.png")  # fmt: skip
    ctx.figure(doc, path, "Q8: per-class AP change from correcting stale labels.")
    answers = [f"{r['model_id']} on {r['eval_data']} {_delta_of(r['delta']['AP']).text()}" for r in study.relabel]
    doc.paragraph("**Answer (AP with corrected minus original labels):** " + "; ".join(answers) + ".")


def _delta_of(entry: dict[str, Any]) -> Delta:
    """A stored ``{"value", "ci"}`` difference as a :class:`Delta`."""
    ci = entry.get("ci") or [None, None]
    return Delta(entry.get("value"), ci[0], ci[1])


def coverage_section(doc: Document, ctx: Context) -> None:
    """Anonymization coverage: who was left un-anonymized, and why."""
    doc.heading("Anonymization coverage: who was left un-anonymized?")
    coverage = ctx.study.coverage
    if not coverage:
        doc.missing("no coverage summary (`data/variants/<method>/coverage_<split>.json`); run `anonbench anonymize`.")
        return
    rows, labels = [], []
    stacks: dict[str, list[float]] = {
        k: [] for k in ("anonymized", "small", "degenerate", "empty segmentation", "other")
    }
    for variant, splits in coverage.items():
        run = ctx.links.find("anonymize", method=variant)
        for split, c in splits.items():
            left = c["persons_gt"] - c["persons_anonymized"]
            rows.append([
                variant, split, str(c["images_with_person"]), ctx.links.number(c["persons_gt"], run, 0),
                ctx.links.number(c["persons_anonymized"], run, 0), ctx.links.number(left, run, 0),
                f"{c['persons_small']} / {c['persons_degenerate']} / {c['persons_empty']} / {c['crowd_regions']}",
                ctx.links.number(c.get("coverage"), run), ctx.links.number(c.get("coverage_min_image"), run),
            ])  # fmt: skip
            labels.append(f"{variant} {split}")
            reasons = [c["persons_small"], c["persons_degenerate"], c["persons_empty"]]
            stacks["anonymized"].append(c["persons_anonymized"])
            stacks["small"].append(reasons[0])
            stacks["degenerate"].append(reasons[1])
            stacks["empty segmentation"].append(reasons[2])
            stacks["other"].append(max(0, left - sum(reasons)))
    doc.paragraph(
        "Ground-truth persons (crowd regions count one each) and how many were anonymized; the rest were too small, "
        "had a degenerate or empty segmentation. Coverage: the share of ground-truth person pixels that changed "
        "(pixel-weighted over the split, and the worst image)."
    )
    doc.table(["variant", "split", "images with person", "persons", "anonymized", "left", "small / degenerate / "
               "empty / crowd", "pixel coverage", "worst image"], rows)  # fmt: skip
    path = charts.stacked_bars(
        labels, stacks, "Persons anonymized and left out", "persons", ctx.figures / "coverage.png"
    )
    ctx.figure(doc, path, "Coverage: anonymized persons and the reasons others were left out.")
    answers = [
        f"{variant} {split}: {c['persons_gt'] - c['persons_anonymized']} of {c['persons_gt']} persons left, "
        f"pixel coverage {_fmt(c.get('coverage'))}"
        for variant, splits in coverage.items()
        for split, c in splits.items()
    ]
    doc.paragraph("**Answer:** " + "; ".join(answers) + ".")


SECTIONS: tuple[Callable[[Document, Context], None], ...] = (
    header,
    q1_methods,
    q2_size,
    q3_matrix,
    q4_ssim,
    q5_grid,
    q6_q7_freeze,
    q8_relabel,
    coverage_section,
)


def build(cfg: Config, study: Study, links: RunLinks) -> tuple[Document, list[Path]]:
    """The report document and the figures it shows (written under ``reports/figures/``)."""
    doc = Document()
    ctx = Context(study, links, cfg.paths.reports / "figures", [])
    for section in SECTIONS:
        section(doc, ctx)
    return doc, ctx.made


def run(cfg: Config) -> list[Path]:
    """Build the study report from every stage's outputs and log it to an MLflow run.

    Args:
        cfg: Validated configuration (``report`` settings, paths of every stage's outputs).

    Returns:
        ``reports/study.md``, ``reports/study.html`` and the figures.
    """
    study = load_study(cfg)
    links = RunLinks(cfg)
    out = cfg.paths.reports
    doc, figures = build(cfg, study, links)
    for stale in (out / "figures").glob("*.png"):
        if stale not in figures:
            stale.unlink()
    written = [
        atomic_write_text(out / "study.md", doc.markdown(out)),
        atomic_write_text(out / "study.html", doc.html(TITLE)),
        *figures,
    ]
    with mlflow_run(cfg, "study report", "report", {"cited_runs": len(links.cited)}):
        import mlflow

        mlflow.log_params({"bootstrap_samples": cfg.report.bootstrap_samples, "confidence": cfg.report.confidence})
        mlflow.log_dict({"cited_runs": sorted(links.cited)}, "cited_runs.json")
        mlflow.log_artifact(str(written[0]))
        mlflow.log_artifact(str(written[1]))
        mlflow.log_artifacts(str(out / "figures"), "figures")
    return written
