"""Stage report: the study's answers to Q1-Q8 (DESIGN.md), the paper's tables and figures beside ours.

Writes ``reports/study.md`` with ``reports/figures/*.png`` beside it and
``reports/study.html``, the same report as one self-contained file (figures
embedded), and logs all of it to one MLflow run (stage ``report``). Names and
units are the paper's: per anonymization method the four combinations Org on
Org, Org on Anon, Anon on Org and Anon on Anon (model trained on ... evaluated
on ...), AP and AP50 in percent with one decimal, differences in percentage
points with a paired bootstrap interval over the validation images. Every
number links to the MLflow run that produced it. A void evaluation (its
metrics file says so: no detections) shows its reason and takes part in no
difference; a question whose inputs are missing says which and how to make
them instead of failing. Reading the stored predictions and tables only: no
torch, no inference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from anonbench import report_figures as charts
from anonbench.cka import YOLOV10_PARTS, plot_cka
from anonbench.config import FINETUNE_PREFIX, ORIGINAL, Config, finetune_model_id, model_id
from anonbench.io import atomic_write_text
from anonbench.reportdoc import Block, Document
from anonbench.study import Delta, EvalRecord, RunLinks, Study, load_study, percent
from anonbench.tracking import PARENT_TAG, finish_study, mlflow_run

TITLE = "anonbench study report"
SIZE_ORDER = "nsmlx"
FREQUENCIES: tuple[Literal["low", "medium", "high"], ...] = ("low", "medium", "high")
OBJECT_SIZES: tuple[Literal["small", "medium", "large"], ...] = ("small", "medium", "large")
# The paper's names: which model (trained on) on which validation images (evaluated on).
COMBINATIONS = ("Org on Org", "Org on Anon", "Anon on Org", "Anon on Anon")
ANON_COMBINATIONS = COMBINATIONS[1:]
STATS = ("AP", "AP50")
NOT_RUN = "not run"
# Figure 6's colours: the paper's blue (full training set) and green (fine-tune subset) bars.
FIGURE6_COLOURS = ("#1f77b4", "#2ca02c")


@dataclass
class Context:
    """What every section needs: the results, the link maker, where figures go, what was made and found void."""

    study: Study
    links: RunLinks
    figures: Path
    made: list[Path] = field(default_factory=list)
    void_sections: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def cfg(self) -> Config:
        """The configuration the report was made with."""
        return self.study.cfg

    def figure(self, doc: Document, path: Path, caption: str) -> None:
        """Add a written figure to the document and remember it."""
        self.made.append(path)
        doc.figure(path, caption)

    def ap(self, record: EvalRecord | None, classes: list[str] | None = None, stat: str = "AP") -> str:
        """AP or AP50 of an evaluation (over ``classes``) in percent, linked to its run; void with its reason."""
        if record is None:
            return NOT_RUN
        if record.void:
            return self.links.text(f"void ({record.void_reason})", record.run_id)
        value = record.ap(classes, stat)
        return "n/a" if value is None else self.links.text(percent(value), record.run_id)

    def delta(
        self, after: EvalRecord | None, before: EvalRecord | None, classes: list[str] | None = None, stat: str = "AP"
    ) -> Delta:
        """Paired difference with its interval; undefined when either evaluation is missing, void when one is."""
        if after is None or before is None:
            return Delta(None)
        return self.study.delta(after, before, classes, stat)

    def linked_delta(
        self, after: EvalRecord | None, before: EvalRecord | None, classes: list[str] | None = None, stat: str = "AP"
    ) -> str:
        """A difference in points with its interval, linked to the run of ``after``."""
        if after is None or before is None:
            return NOT_RUN
        if after.key == before.key:
            return "reference"
        delta = self.delta(after, before, classes, stat)
        return self.links.text(delta.text(), after.run_id) if delta.value is not None or delta.void else delta.text()

    def org_on_org(self) -> tuple[str | None, EvalRecord | None]:
        """The reference size and the Org model's evaluation on original data at that size."""
        size = reference_size(self.study)
        return size, self.study.find(f"{ORIGINAL}-{size}", ORIGINAL) if size else None

    def combination(self, method: str, size: str, name: str) -> EvalRecord | None:
        """The evaluation a paper name stands for, for one anonymization method and model size."""
        trained_on, _, evaluated_on = name.partition(" on ")
        model = ORIGINAL if trained_on == "Org" else method
        data = ORIGINAL if evaluated_on == "Org" else method
        return self.study.find(f"{model}-{size}", data)

    def check_void(
        self, doc: Document, section: str, records: Iterable[EvalRecord | None], what: str = "this section"
    ) -> bool:
        """Say plainly when every evaluation a section (or ``what`` part of it) uses is void; count it for the header.

        Returns:
            True when all of them are void (there is no number to show).
        """
        found = list({r.key: r for r in records if r is not None}.values())
        return self.count_void(doc, section, [str(r.void_reason) for r in found if r.void], len(found), what)

    def count_void(self, doc: Document, section: str, reasons: list[str], total: int, what: str) -> bool:
        """:meth:`check_void` for results given as their void reasons (one per void result) out of ``total``."""
        if reasons:
            self.void_sections[section] = (len(reasons), total)
        if not total or len(reasons) < total:
            return False
        doc.note(
            f"**All void:** every result {what} uses ({total}) is void ({', '.join(sorted(set(reasons)))}): "
            "there is no AP and no difference to show."
        )
        return True


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


def methods_of(study: Study) -> list[str]:
    """Anonymization methods (configured order) that some trained model was trained or evaluated on."""
    seen = {e.train_data for e in trained(study)} | {e.eval_data for e in trained(study)}
    return [m for m in study.cfg.anonymize.methods if m in seen]


def in_grid(cfg: Config, method: str, size: str) -> bool:
    """Whether the questions across sizes show ``method`` at ``size``.

    True where the grid trains a model on it at that size, and for a method no model is trained on
    (only its Org combinations exist); False where ``train.sizes_by_variant`` leaves the size out
    (the paper profile trains the classic methods at m only: Q1 and Q3 compare them there).
    """
    return method not in cfg.train.variants or size in cfg.train.sizes_for(method)


def grid_text(cfg: Config) -> str:
    """The trained grid in words: ``n, s, m`` plus the variants that ``train.sizes_by_variant`` narrows."""
    narrowed = [f"{v} at {', '.join(cfg.train.sizes_for(v))}" for v in cfg.train.variants
                if cfg.train.sizes_for(v) != cfg.train.sizes]  # fmt: skip
    return ", ".join(cfg.train.sizes) + (f" ({'; '.join(narrowed)} only)" if narrowed else "")


def variants_in(cfg: Config, names: set[str]) -> list[str]:
    """Variant names in the configured order (org first)."""
    order = [ORIGINAL, *cfg.anonymize.methods]
    return sorted(names, key=lambda v: order.index(v) if v in order else len(order))


def significance(delta: Delta) -> str:
    """Plain words for whether an interval excludes zero."""
    if delta.value is None or not delta.interval_known:
        return "no interval"
    assert delta.low is not None and delta.high is not None
    return "interval excludes 0" if delta.low > 0 or delta.high < 0 else "interval includes 0"


def _missing_models(doc: Document, what: str) -> None:
    doc.missing(f"{what} (run `anonbench train` and `anonbench evaluate` for the models and variants in params.yaml).")


def _scaled(value: float | None) -> float | None:
    """An AP (0-1) or AP difference as a percentage (points) for a figure."""
    return None if value is None else 100 * value


def header(doc: Document, ctx: Context) -> None:
    """Title and "how to read this": profile, data, models and criterion, protocol and head, DP2, void sections."""
    cfg, study = ctx.cfg, ctx.study
    doc.heading(TITLE, 1)
    counts = {}
    for split in cfg.data.splits:
        stats = cfg.paths.data / "prepared" / split / "stats.json"
        counts[split] = json.loads(stats.read_text(encoding="utf-8")) if stats.is_file() else {}
    images = ", ".join(
        f"{split} {c.get('images', '?')} images ({c.get('images_with_person', '?')} with a person)"
        for split, c in counts.items()
    )
    # What the trainings really ran (train.json), which may differ from the current params.
    ran = sorted({str(t["epochs"]) for t in study.trainings.values() if t.get("stage") == "train" and "epochs" in t})
    epochs = "/".join(ran) or str(cfg.train.epochs)
    if cfg.profile == "mini":
        doc.note(
            f"**Mini profile:** detection numbers come from {epochs} CPU epochs on "
            f"{counts.get(cfg.data.train_split, {}).get('images') or 128} training images. They exercise the "
            "pipeline end to end; they are **not findings**. SSIM, coverage and the relabel proposals are real "
            "measurements."
        )
    doc.heading("How to read this")
    rep = cfg.report
    n_val = next(iter({len(ids) for ids, _ in study.resamples.values()}), None)
    n_val = n_val or max((int(e.stats.get("images") or 0) for e in study.evaluations), default=0)
    rows = [
        ["profile", f"**{cfg.profile}** (params.yaml; seed {cfg.seed})"],
        ["data", f"`{cfg.data.source}`: {images}"],
        ["models", f"YOLOv10 {grid_text(cfg)} from scratch, {epochs} epochs at imgsz {cfg.train.imgsz} "
                   f"on `{cfg.train.device}`; fine-tunes of {cfg.finetune.base.variant}-{cfg.finetune.base.size} "
                   f"on {cfg.finetune.variant}; training criterion {_criterion(study)}"],
        ["protocol", _protocol(study)],
        ["anonymization", _anonymization(ctx)],
        ["names", "Org on Anon: the model trained on original images, evaluated on the method's anonymized "
                  "validation images; likewise Org on Org, Anon on Org, Anon on Anon (Anon: the method's images)"],
        ["units", "AP = COCO AP@[.50:.95], AP50 = AP@.50, both in percent with one decimal; SSIM 0-1"],
        ["differences", f"percentage points, value [low, high]: a {rep.confidence:.0%} percentile bootstrap interval "
                        f"from {rep.bootstrap_samples} resamples of the {n_val or '?'} validation images "
                        f"(seed {cfg.seed}), paired (both sides scored on the same resampled images)"],
        ["cells", f"void (reason): the evaluation gave no number and is left out of every difference; n/a: no "
                  f"ground truth for the class(es), or no interval; {NOT_RUN}: the evaluation does not exist"],
        ["links", f"every number links to the MLflow run that produced it (UI {rep.tracking_ui}; `make mlflow-ui` "
                  "serves the local store); a difference links to the run of its first term"],
        ["void", _void_summary(ctx)],
    ]  # fmt: skip
    doc.table(["", "this report"], rows, left=2)


def _protocol(study: Study) -> str:
    """The evaluation protocol, checkpoint and inference head as the metrics files record them."""
    if not study.evaluations:
        return "no evaluation yet"
    kinds: dict[str, int] = {}
    for e in study.evaluations:
        conf, max_det = e.stats.get("conf"), e.stats.get("max_det")
        protocol = e.stats.get("protocol")
        if protocol == "coco":
            text = f"COCO (every detection down to conf {conf}, at most {max_det} per image)"
        elif protocol == "authors":
            scorer = "their crowd rule" if e.stats.get("scorer") == "authors" else "the COCO API"
            text = f"the authors' (detections above conf {conf} only, scored with {scorer}: not the COCO protocol)"
        else:
            text = f"not recorded in the metrics files (conf {conf}, at most {max_det} per image)"
        checkpoint = e.stats.get("checkpoint")
        text += f", {checkpoint}.pt weights" if checkpoint else ", checkpoint not recorded"
        head, topk = e.stats.get("head"), e.stats.get("head_topk")
        if head == "one2one" and e.stats.get("nms") is False:
            text += f", YOLOv10's NMS-free one-to-one head (its top {topk})"
        else:
            text += f", head {head or 'not recorded'} (nms {e.stats.get('nms', 'not recorded')})"
        kinds[text] = kinds.get(text, 0) + 1
    if len(kinds) == 1:
        return next(iter(kinds))
    return "; ".join(f"{text}: {n} evaluations" for text, n in kinds.items())


def _criterion(study: Study) -> str:
    """The training criteria as the models' train.json record them, with how many models used each."""
    kinds: dict[str, int] = {}
    for training in study.trainings.values():
        text = str(training.get("criterion", {}).get("text", "not recorded"))
        kinds[text] = kinds.get(text, 0) + 1
    if not kinds:
        return "not recorded (no train.json yet)"
    return "; ".join(f"{text} ({n} model{'s' if n > 1 else ''})" for text, n in kinds.items())


def _anonymization(ctx: Context) -> str:
    """The methods, and for DeepPrivacy2 its mode and whether its weights were trained."""
    cfg = ctx.cfg
    parts = [f"methods {', '.join(cfg.anonymize.methods)}; classic methods on `{cfg.anonymize.mask_source}` masks"]
    dp2 = [m for m in cfg.anonymize.methods if m.startswith("dp2")]
    for method in dp2:
        splits = ctx.study.coverage.get(method, {})
        settings = next((c["dp2"] for c in splits.values() if "dp2" in c), None)
        if settings is None:
            parts.append(f"{method}: not run (no `data/variants/{method}/coverage_*.json` with DP2 settings)")
            continue
        weights = "**untrained** weights (not the paper's)" if settings.get("untrained") else "trained weights"
        below = sum(int(c.get("persons_below_size_filter", 0)) for c in splits.values())
        parts.append(
            f"{method}: DeepPrivacy2 in `{settings.get('mode')}` mode with {weights}, config "
            f"`{settings.get('config')}`, on `{settings.get('device')}` (AMP {settings.get('amp')}); "
            f"{below} persons below its size filter"
        )
    if not dp2:
        parts.append("no DeepPrivacy2 variant in this run")
    return "; ".join(parts)


def _void_summary(ctx: Context) -> str:
    void = [e for e in ctx.study.evaluations if e.void]
    full = [s for s, (n, total) in ctx.void_sections.items() if n == total]
    partly = [f"{s} ({n} of {total})" for s, (n, total) in ctx.void_sections.items() if n < total]
    parts = []
    if void:
        reasons = ", ".join(sorted({str(e.void_reason) for e in void}))
        parts.append(f"{len(void)} of {len(ctx.study.evaluations)} evaluations are void ({reasons})")
    if full:
        parts.append(f"every result is void in: {', '.join(full)}")
    if partly:
        parts.append(f"some are void in: {', '.join(partly)}")
    return "; ".join(parts) or "no evaluation is void"


def q1_methods(doc: Document, ctx: Context) -> None:
    """Q1: the four combinations per method on the comparison classes, AP and AP50, and the differences."""
    section = "Q1"
    doc.heading("Q1: Does training on realistic anonymization beat non-realistic methods?")
    cfg = ctx.cfg
    size, base = ctx.org_on_org()
    if size is None or base is None:
        _missing_models(doc, f"the Org model's evaluation on original data (`metrics/eval/{ORIGINAL}-<size>_on_org`)")
        return
    classes = cfg.classes.comparison
    methods = methods_of(ctx.study)
    found = {m: {name: ctx.combination(m, size, name) for name in COMBINATIONS} for m in methods}
    doc.paragraph(
        f"Size {size}, the {len(classes)} comparison classes of the earlier non-realistic study (params "
        f"classes.comparison): mean AP and AP50 over those classes with ground truth, per method and combination."
    )
    if ctx.check_void(doc, section, [base, *(r for combos in found.values() for r in combos.values())]):
        return
    doc.table(
        ["method", *(f"{name}\n{stat}" for name in COMBINATIONS for stat in STATS)],
        [[m, *(ctx.ap(found[m][name], classes, stat) for name in COMBINATIONS for stat in STATS)] for m in methods],
    )
    doc.paragraph("The same as differences from Org on Org, in points:")
    doc.table(
        ["method", *(f"{name}\nΔ {stat}" for name in ANON_COMBINATIONS for stat in STATS)],
        [[m, *(ctx.linked_delta(found[m][name], base, classes, stat) for name in ANON_COMBINATIONS for stat in STATS)]
         for m in methods],
    )  # fmt: skip
    on_org = {ORIGINAL: base, **{m: found[m]["Anon on Org"] for m in methods}}
    doc.paragraph("AP per comparison class of each model on the original validation images (Org on Org, and each "
                  "method's Anon on Org):")  # fmt: skip
    doc.table(
        ["class", "Org on Org", *(f"{m}: Anon on Org" for m in methods)],
        [[c, *(ctx.ap(e, [c]) for e in on_org.values())] for c in classes],
    )
    path = charts.grouped_bars(
        classes,
        {("Org on Org" if v == ORIGINAL else f"{v}: Anon on Org"): [_scaled(e.ap([c])) if e else None for c in classes]
         for v, e in on_org.items()},
        f"AP per comparison class on original val, size {size}",
        "AP (%)",
        ctx.figures / "q1_comparison_classes.png",
    )  # fmt: skip
    ctx.figure(doc, path, f"Q1: AP per comparison class, Org on Org and each method's Anon on Org (size {size}).")
    answers = []
    for m in methods:
        delta = ctx.delta(found[m]["Anon on Org"], base, classes)
        answers.append(f"{m}: Anon on Org {delta.text()} ({significance(delta)})")
    answer = "; ".join(answers) or "n/a"
    doc.paragraph(f"**Answer (comparison classes, Anon on Org minus Org on Org, AP points):** {answer}.")


def q2_size(doc: Document, ctx: Context) -> None:
    """Q2: AP against model size (fused parameter counts) for the four combinations of every method."""
    section = "Q2"
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
    methods = methods_of(ctx.study)
    across = [m for m in methods if all(in_grid(ctx.cfg, m, s) for s in sizes)]
    combos = [("Org on Org", ORIGINAL)] + [(f"{m}: {n}", m) for m in across for n in ANON_COMBINATIONS]
    rows, series, used = [], {}, list[EvalRecord | None]()
    for label, method in combos:
        name = label.split(": ")[-1]
        found = {s: ctx.combination(method, s, name) for s in sizes}
        used += found.values()
        row = [label, *(ctx.ap(found[s]) for s in sizes)]
        if len(sizes) > 1:
            row.append(ctx.linked_delta(found[sizes[-1]], found[sizes[0]]))
        rows.append(row)
        series[label] = [
            (float(params[s] or SIZE_ORDER.index(s) + 1), _scaled(e.ap() if e else None)) for s, e in found.items()
        ]
    heads = [f"{s} ({count / 1e6:.1f} M)" if (count := params[s]) else s for s in sizes]
    doc.paragraph("AP (%) of each combination per model size (fused parameter count from train.json; the paper's: "
                  "n 2.3, s 7.2, m 15.4, l 24.4, x 29.5 M).")  # fmt: skip
    if left := [m for m in methods if m not in across]:
        trained_at = [f"{m} (trained at {', '.join(ctx.cfg.train.sizes_for(m))})" for m in left]
        doc.paragraph(f"Not compared across sizes: {'; '.join(trained_at)}, as train.sizes_by_variant sets; Q1 and "
                      "Q3 compare them at that size.")  # fmt: skip
    if ctx.check_void(doc, section, used):
        return
    doc.table(["combination", *heads, *([f"{sizes[-1]} − {sizes[0]}"] if len(sizes) > 1 else [])], rows)
    logx = all(params[s] for s in sizes)
    path = charts.lines(
        series, "AP against model size", "fused parameters" if logx else "size", "AP (%)", ctx.figures / "q2_size.png",
        logx,
    )  # fmt: skip
    ctx.figure(doc, path, "Q2: AP against model size for every combination.")
    if len(sizes) == 1:
        doc.paragraph(f"**Answer:** only size {sizes[0]} was trained (train.sizes); Q2 needs several sizes.")
    else:
        doc.paragraph(f"**Answer:** the last column is the AP gained from {sizes[0]} to {sizes[-1]} (interval).")


def q3_matrix(doc: Document, ctx: Context) -> None:
    """Q3: per size, the four combinations of every method against Org on Org; the full train x eval matrix."""
    section = "Q3"
    doc.heading("Q3: Are original and anonymized data exchangeable?")
    cfg, study = ctx.cfg, ctx.study
    records = trained(study)
    size, base = ctx.org_on_org()
    if size is None:
        _missing_models(doc, "no evaluation of a trained model")
        return
    doc.paragraph("AP (%) of the four combinations per method, one table per model size; Δ: the difference from "
                  "Org on Org of the same size, in points.")  # fmt: skip
    if ctx.check_void(doc, section, records):
        return
    methods = methods_of(study)
    for s in sizes_of(records):
        reference = ctx.combination(ORIGINAL, s, "Org on Org")
        doc.heading(f"Size {s}", 3)
        if left := [m for m in methods if not in_grid(cfg, m, s)]:
            doc.paragraph(f"Not trained at {s} (train.sizes_by_variant): {', '.join(left)}.")
        header = ["method", "Org on Org"]
        for name in ANON_COMBINATIONS:
            header += [name, "Δ"]
        rows = []
        for m in (m for m in methods if in_grid(cfg, m, s)):
            row = [m, ctx.ap(reference)]
            for name in ANON_COMBINATIONS:
                record = ctx.combination(m, s, name)
                row += [ctx.ap(record), ctx.linked_delta(record, reference)]
            rows.append(row)
        doc.table(header, rows)
    trains = variants_in(cfg, {e.train_data for e in records})
    evals = variants_in(cfg, {e.eval_data for e in records})
    panels = {}
    for s in sizes_of(records):
        shown = [t for t in trains if in_grid(cfg, t, s)]
        values = [[_scaled(_ap_of(study.find(model_id(t, s), e))) for e in evals] for t in shown]
        panels[f"size {s}"] = charts.Panel(shown, evals, values)
    path = charts.heatmaps(panels, "AP (%): trained on (rows) x evaluated on (columns)", ctx.figures / "q3_matrix.png")
    ctx.figure(doc, path, "Q3: the whole train x eval AP matrix (every method on every other), one heatmap per size.")
    answers = []
    for m in methods:
        org_on_anon, anon_on_org, anon_on_anon = (ctx.combination(m, size, n) for n in ANON_COMBINATIONS)
        answers.append(
            f"{m}: Org on Anon {ctx.delta(org_on_anon, base).text()} vs Org on Org; "
            f"Anon on Org {ctx.delta(anon_on_org, anon_on_anon).text()} vs Anon on Anon"
        )
    doc.paragraph(f"**Answer (size {size}):** " + ("; ".join(answers) or "no anonymized evaluation variant") + ".")


def _ap_of(record: EvalRecord | None, classes: list[str] | None = None, stat: str = "AP") -> float | None:
    return None if record is None else record.ap(classes, stat)


def _ssim_mean(entry: dict[str, Any], level: str, component: str = "ssim") -> float | None:
    value: float | None = entry.get(level, {}).get(component, {}).get("mean")
    return value


def q4_ssim(doc: Document, ctx: Context) -> None:
    """Q4: SSIM on the validation split per use-case group and class, box plots, and the classes' AP change."""
    doc.heading("Q4: How much does anonymization alter images and objects?")
    cfg, study = ctx.cfg, ctx.study
    split = cfg.data.val_split
    measured = {v: s["splits"][split]["with_person"] for v, s in study.ssim.items() if split in s["splits"]}
    if not measured:
        doc.missing(f"no SSIM summary of {split} (`data/ssim/<variant>/summary.json`); run `anonbench ssim "
                    "--variant <method>`.")  # fmt: skip
        return
    runs = {v: ctx.links.find("ssim", variant=v) for v in measured}
    groups = cfg.classes.use_case_groups
    doc.paragraph(
        f"On {split} (the paper's split), images with a person: mean SSIM of whole images that contain the group's "
        "classes next to the mean SSIM of the classes' boxes, and the box SSIM's luminance (l), contrast (c) and "
        "structure (s) factors. Use-case groups from params (DESIGN.md Table 1)."
    )
    rows = []
    for variant, scope in measured.items():
        entries = {"all boxes": {**scope, "classes": ["every class"]}, **scope["use_case_groups"]}
        for group, entry in entries.items():
            rows.append([
                variant, group, ", ".join(entry["classes"]),
                *(ctx.links.number(_ssim_mean(entry, level, comp), runs[variant])
                  for level, comp in (("image", "ssim"), ("box", "ssim"), ("box", "luminance"),
                                      ("box", "contrast"), ("box", "structure"))),
                str(entry.get("box", {}).get("count", 0)),
            ])  # fmt: skip
    doc.table(
        ["method", "group", "classes", "image SSIM", "box SSIM", "box l", "box c", "box s", "boxes"], rows, left=3
    )
    series = {}
    for variant, scope in measured.items():
        entries = scope["use_case_groups"]
        series[f"{variant} image"] = [_ssim_mean(entries[g], "image") for g in groups]
        series[f"{variant} box"] = [_ssim_mean(entries[g], "box") for g in groups]
    path = charts.grouped_bars(list(groups), series, f"Mean SSIM per use-case group ({split})", "SSIM",
                               ctx.figures / "q4_ssim.png")  # fmt: skip
    ctx.figure(doc, path, f"Q4: whole-image vs box SSIM per use-case group and method ({split}, images with a person).")
    _q4_classes(doc, ctx, measured, runs)


def _q4_classes(doc: Document, ctx: Context, measured: dict[str, Any], runs: dict[str, str | None]) -> None:
    """The Table 1 classes one by one: box SSIM and the AP change beside it; per-box SSIM box plots."""
    cfg, study = ctx.cfg, ctx.study
    name = cfg.report.per_class_combination
    size, base = ctx.org_on_org()
    classes = [(group, c) for group, names in cfg.classes.use_case_groups.items() for c in names]
    afters = {v: ctx.combination(v, size, name) if size else None for v in measured}
    ctx.check_void(doc, "Q4 (Δ AP)", [base, *afters.values()], "the Δ AP columns")
    doc.paragraph(
        f"Per class of the use-case groups ({cfg.data.val_split}): mean box SSIM (boxes with defined SSIM) and the "
        f"class's AP change {name} − Org on Org (size {size}, points; params report.per_class_combination)."
    )
    rows = []
    for group, c in classes:
        row = [group, c]
        for variant, scope in measured.items():
            entry = scope["classes"].get(c)
            ssim = ctx.links.number(_ssim_mean(entry, "box"), runs[variant]) if entry else "no boxes"
            row += [ssim, ctx.linked_delta(afters[variant], base, [c])]
        rows.append(row)
    header = ["group", "class"]
    for variant in measured:
        header += [f"{variant}\nbox SSIM", f"{variant}\nΔ AP"]
    doc.table(header, rows, left=2)
    labels = [c for _, c in classes]
    series = {
        v: [study.ssim_boxes[v].loc[study.ssim_boxes[v]["category"] == c, "ssim"].tolist() for c in labels]
        for v in measured
    }
    path = charts.grouped_boxes(labels, series, f"Per-box SSIM per class and method ({cfg.data.val_split})", "SSIM",
                                ctx.figures / "q4_ssim_boxes.png")  # fmt: skip
    ctx.figure(doc, path, f"Q4: the per-box SSIM of the Table 1 classes per method ({cfg.data.val_split}, images "
                          "with a person; a class without boxes has no box).")  # fmt: skip
    answers = []
    for variant, scope in measured.items():
        parts = [f"{g} {_fmt(_ssim_mean(e, 'box'))}" for g, e in scope["use_case_groups"].items()]
        answers.append(f"{variant}: box SSIM " + ", ".join(parts))
    doc.paragraph(f"**Answer ({cfg.data.val_split}):** " + "; ".join(answers) + ".")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def q5_grid(doc: Document, ctx: Context) -> None:
    """Q5: absolute AP and its change per size x frequency cell, per class, for AP and AP50; the placement check."""
    section = "Q5"
    doc.heading("Q5: Do object size and co-occurrence with 'person' matter?")
    cfg = ctx.cfg
    size, base = ctx.org_on_org()
    if size is None or base is None:
        _missing_models(doc, "the Org model's evaluation on original data")
        return
    grid = cfg.classes.size_frequency
    cells = [(f"{o} / {f}", grid[o][f]) for o in OBJECT_SIZES for f in FREQUENCIES]
    methods = methods_of(ctx.study)
    combos = {(m, n): ctx.combination(m, size, n) for m in methods for n in ANON_COMBINATIONS}
    doc.paragraph(
        f"Size {size}. Each cell of the grid (object size / co-occurrence with a person; params "
        f"classes.size_frequency, the paper's Table 5) holds four classes; a cell's AP is the mean over those with "
        f"ground truth. Differences are from Org on Org, in points."
    )
    void = ctx.check_void(doc, section, [base, *combos.values()])
    if not void:
        for stat in STATS:
            _q5_stat(doc, ctx, stat, cells, base, combos)
    _frequency_check(doc, ctx)


def _q5_stat(
    doc: Document,
    ctx: Context,
    stat: str,
    cells: list[tuple[str, list[str]]],
    base: EvalRecord,
    combos: dict[tuple[str, str], EvalRecord | None],
) -> None:
    """Q5 for AP or AP50: the heatmaps, the cell table with intervals and the per-class 3 x 12 grids."""
    cfg = ctx.cfg
    doc.heading(stat, 3)
    labels = [f"{m}: {n}" for m, n in combos]
    absolute = charts.Panel(
        ["Org on Org", *labels], [c for c, _ in cells],
        [[_scaled(_ap_of(r, classes, stat)) for _, classes in cells] for r in (base, *combos.values())],
    )  # fmt: skip
    change = charts.Panel(
        labels, [c for c, _ in cells],
        [[_scaled(ctx.delta(r, base, classes, stat).value) for _, classes in cells] for r in combos.values()],
        diverging=True,
    )  # fmt: skip
    path = charts.heatmaps(
        {f"{stat} (%)": absolute, f"{stat} − Org on Org (points)": change},
        f"{stat} per size / frequency cell", ctx.figures / f"q5_grid_{stat.lower()}.png",
    )  # fmt: skip
    ctx.figure(doc, path, f"Q5: {stat} per size / frequency cell (left) and its change from Org on Org (right).")
    name = cfg.report.per_class_combination
    doc.paragraph(f"{name} − Org on Org per cell, {stat} points, with intervals:")
    doc.table(
        ["cell", "Org on Org", *(f"{m}\n{name} − Org on Org" for m, n in combos if n == name)],
        [[cell, ctx.ap(base, classes, stat), *(ctx.linked_delta(r, base, classes, stat)
                                                for (_, n), r in combos.items() if n == name)]
         for cell, classes in cells],
    )  # fmt: skip
    grid = cfg.classes.size_frequency
    for (m, n), record in combos.items():
        if n != name:
            continue
        doc.paragraph(f"**{m}**, per class: Org on Org → {name} {stat} (%), and the change in points:")
        header = ["size \\ frequency"]
        for f in FREQUENCIES:
            header += [f, *([""] * (max(len(grid[o][f]) for o in OBJECT_SIZES) - 1))]
        rows = []
        for o in OBJECT_SIZES:
            row: list[str] = [o]
            for f in FREQUENCIES:
                row += [_grid_cell(ctx, c, base, record, stat) for c in grid[o][f]]
            rows.append(row + [""] * (len(header) - len(row)))
        doc.table(header, rows, style="grid")


def _grid_cell(ctx: Context, name: str, base: EvalRecord, record: EvalRecord | None, stat: str) -> str:
    """One class of the 3 x 12 grid: its name, Org on Org → the combination, the change with its interval."""
    if base.ap([name], stat) is None and (record is None or record.ap([name], stat) is None):
        return f"{name}\nn/a"
    return f"{name}\n{ctx.ap(base, [name], stat)} → {ctx.ap(record, [name], stat)}\n" + ctx.linked_delta(
        record, base, [name], stat
    )


def _frequency_check(doc: Document, ctx: Context) -> None:
    """Whether each Table 5 class falls into the paper's frequency group on this data (prepare's counts)."""
    cfg, stats = ctx.cfg, ctx.study.class_stats
    split = cfg.data.train_split
    doc.heading("Frequency groups: the paper's placement against this data", 3)
    if stats is None:
        doc.missing(f"no class statistics (`data/prepared/{split}/class_stats.csv`); run `anonbench prepare`.")
        return
    borders = cfg.prepare.frequency_borders
    table5 = [(o, f, c) for o in OBJECT_SIZES for f in FREQUENCIES for c in cfg.classes.size_frequency[o][f]]
    placed = [(o, f, c) for o, f, c in table5 if c in stats.index]
    _note_absent(doc, [c for _, _, c in table5 if c not in stats.index])
    disagree = [
        [c, o, f, str(stats.loc[c, "frequency_group"]), str(int(stats.loc[c, "images_with_person"]))]
        for o, f, c in placed
        if stats.loc[c, "frequency_group"] != f
    ]
    doc.paragraph(
        f"Computed from the images of {split} that hold the class and a person (prepare's class_stats.csv), with "
        f"the borders of params prepare.frequency_borders (high ≥ {borders.high}, medium ≥ {borders.medium}): "
        f"**{len(placed) - len(disagree)} of {len(placed)}** Table 5 classes fall into the paper's group."
    )
    if disagree and cfg.data.source == "coco-mini":
        doc.note(
            f"On coco-mini {len(disagree)} classes disagree, and that is expected: a few hundred images cannot "
            "reproduce the frequencies of the 118,000 COCO training images the paper counted (and the borders are "
            "scaled down). The paper's placement (params) is what the grid uses."
        )
    doc.table(["class", "object size", "paper's group", "group here", "images with a person"], disagree, left=4)


def _note_absent(doc: Document, classes: list[str]) -> None:
    """Say which Table 5 classes this dataset's category table lacks (prepare lists them in stats.json)."""
    if classes:
        doc.note(
            f"Not among this dataset's categories, so left out: {', '.join(classes)} "
            "(prepare's stats.json, classes_absent)."
        )


def figure6(doc: Document, ctx: Context) -> None:
    """The paper's Figure 6: images per Table 5 class with a person, full training set beside the fine-tune subset."""
    doc.heading("Figure 6: images per class with a person, training set and fine-tune subset")
    cfg, study = ctx.cfg, ctx.study
    if study.class_stats is None or study.subset is None or study.subset_counts is None:
        doc.missing(
            f"the class statistics (`data/prepared/{cfg.data.train_split}/class_stats.csv`, `anonbench prepare`) or "
            "the fine-tune subset (`data/finetune_subset/summary.json` and `class_counts.csv`, `anonbench finetune`)."
        )
        return
    counts, chosen = study.class_stats["images_with_person"], study.subset_counts["subset_images"]
    present = [c for c in cfg.classes.size_frequency_classes if c in counts.index]
    _note_absent(doc, [c for c in cfg.classes.size_frequency_classes if c not in counts.index])
    classes = sorted(present, key=lambda c: (-counts[c], c))
    full = [float(counts[c]) for c in classes]
    subset = [float(chosen[c]) if c in chosen.index else None for c in classes]
    summary = study.subset
    borders = cfg.prepare.frequency_borders
    path = charts.grouped_bars(
        classes, {f"full {cfg.data.train_split}": full, "fine-tune subset": subset},
        "Images with a person holding the class", "images", ctx.figures / "figure6_cooccurrence.png",
        colors=FIGURE6_COLOURS, levels={"high": borders.high, "medium": borders.medium},
    )  # fmt: skip
    doc.paragraph(
        f"Per Table 5 class, the {cfg.data.train_split} images that hold it and a person (blue; prepare's "
        "class_stats.csv), beside the fine-tune subset's (green; data/finetune_subset/class_counts.csv). Eligible: "
        "training images with a person and a Table 5 class; the subset is a seeded random share of them whose "
        "per-class shares should follow the full set's. Dashed lines: the frequency group borders."
    )
    run = ctx.links.find("finetune")
    fraction = summary.get("fraction")
    counted = [ctx.links.number(summary.get(k), run, 0) for k in ("train_images", "eligible_images", "subset_images")]
    doc.table(
        ["training images", "eligible", "subset", "fraction", "largest share difference", "chi-square p"],
        [[*counted, f"{fraction} of {summary.get('fraction_of', '?')}" if fraction is not None else "not recorded",
          ctx.links.number(summary.get("max_abs_share_diff"), run), ctx.links.number(summary.get("chi2_p"), run)]],
        left=0,
    )  # fmt: skip
    ctx.figure(doc, path, "Figure 6: images per class co-occurring with a person, full training set (blue) and "
                          "fine-tune subset (green).")  # fmt: skip


def q6_q7_freeze(doc: Document, ctx: Context) -> None:
    """Q6 and Q7: every freeze config on anonymized val against the Anon-only and the Org model; layer drift."""
    section = "Q6 and Q7"
    doc.heading("Q6 and Q7: Is fine-tuning enough, and which part of the detector is most affected?")
    cfg, study = ctx.cfg, ctx.study
    ft = cfg.finetune
    org_model = study.find(f"{ft.base.variant}-{ft.base.size}", ft.variant)
    anon_model = study.find(f"{ft.variant}-{ft.base.size}", ft.variant)
    tuned = {name: study.find(finetune_model_id(name), ft.variant) for name in ft.freeze}
    if org_model is None or not any(tuned.values()):
        doc.missing(
            f"fine-tuned models' evaluations on {ft.variant} (`metrics/eval/ft-<freeze>_on_{ft.variant}`) or the "
            "Org model's; run `anonbench finetune` and `anonbench evaluate` for them."
        )
    else:
        doc.paragraph(
            f"The Org model ({ft.base.variant}-{ft.base.size}) fine-tuned on a subset of {ft.variant} training "
            f"images (Figure 6), one model per freeze config, scored on the {ft.variant} validation images; the "
            f"paired differences from the Anon-only model ({ft.variant}-{ft.base.size}, Anon on Anon) and from the "
            f"Org model (Org on Anon), in points."
        )
        if not ctx.check_void(doc, section, [org_model, anon_model, *tuned.values()]):
            _freeze_table(doc, ctx, org_model, anon_model, tuned)
    drift_section(doc, ctx)


def _freeze_table(
    doc: Document,
    ctx: Context,
    org_model: EvalRecord,
    anon_model: EvalRecord | None,
    tuned: dict[str, EvalRecord | None],
) -> None:
    ft = ctx.cfg.finetune
    models = [("Org model (Org on Anon)", "—", org_model), ("Anon model (Anon on Anon)", "—", anon_model)]
    models += [(finetune_model_id(name), _frozen(ctx.cfg, name), record) for name, record in tuned.items()]
    rows = [
        [label, frozen, ctx.ap(record), ctx.ap(record, stat="AP50"),
         ctx.linked_delta(record, anon_model), ctx.linked_delta(record, org_model)]
        for label, frozen, record in models
    ]  # fmt: skip
    doc.table(["model", "frozen layers", "AP", "AP50", "Δ vs Anon model", "Δ vs Org model"], rows, left=2)
    boxes = [
        [100 * v for v in (r.per_class[c]["AP"] for c in r.per_class) if v is not None] if r and not r.void else []
        for _, _, r in models
    ]
    path = charts.grouped_boxes(
        [label.split(" (")[0] for label, _, _ in models], {f"per-class AP on {ft.variant} val": boxes},
        "Per-class AP by model and freeze config", "AP (%)", ctx.figures / "q6_q7_freeze.png",
    )  # fmt: skip
    ctx.figure(doc, path, f"Q6/Q7: per-class AP on {ft.variant} val, one box per model (classes with ground truth).")
    best = max(
        ((name, r) for name, r in tuned.items() if r is not None and r.ap() is not None),
        key=lambda item: item[1].ap() or 0.0,
        default=None,
    )
    if best is not None:
        gain = ctx.delta(best[1], anon_model)
        doc.paragraph(f"**Answer:** on {ft.variant}, the best fine-tune is {finetune_model_id(best[0])} "
                      f"({gain.text()} vs the Anon model, {significance(gain)}).")  # fmt: skip


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
    doc.table(["method", *(f"{name} ({a}-{b})" for name, a, b in YOLOV10_PARTS), "lowest layer"], rows)
    curves = {v: [layer["cka"] for layer in r["layers"]] for v, r in drift.items()}
    path = plot_cka(curves, ctx.figures / "q7_drift.png", f"Layer drift of {model}")
    ctx.figure(doc, path, "Q7: linear CKA per YOLOv10 layer, original vs anonymized images.")


def q8_relabel(doc: Document, ctx: Context) -> None:
    """Q8: Org on Anon and Anon on Anon scored against the original and the corrected ground truth."""
    doc.heading("Q8: Do stale labels distort results?")
    study = ctx.study
    size = reference_size(study)
    shown = {
        (variant, name): r
        for variant in ctx.cfg.anonymize.methods
        for name in ("Org on Anon", "Anon on Anon")
        for r in study.relabel
        if r["eval_data"] == variant and r["model_id"] == f"{ORIGINAL if name.startswith('Org') else variant}-{size}"
    }
    if not shown:
        doc.missing("no relabel evaluation (`metrics/relabel/*.json`); run `anonbench relabel --variant <method>`.")
        return
    doc.paragraph(
        f"Size {size}: the same stored predictions scored on the validation split against the original ground truth "
        "and against the corrected one (objects likely removed dropped, person boxes grown to the anonymized region; "
        "`data/relabel/<method>/`). Corrections: auto-accepted (every proposal taken) or reviewed by a person."
    )
    void = [str(r.get("void_reason") or "no reason given") for r in shown.values() if r.get("void")]
    ctx.count_void(doc, "Q8", void, len(shown), "this table")
    rows = []
    for (variant, name), result in shown.items():
        counts = study.proposals.get(variant, {})
        corrections = study.reviews.get(variant, {}).get("corrections", "not recorded")
        rows.append([
            f"{variant}: {name}", corrections, f"{counts.get('remove', '?')} / {counts.get('extend', '?')}",
            *_relabel_cells(ctx, result, "AP"), *_relabel_cells(ctx, result, "AP50")[2:],
        ])  # fmt: skip
    doc.table(["combination", "corrections", "proposals (remove / extend)", "AP, original GT", "AP, corrected GT",
               "Δ AP", "Δ AP50"], rows, left=2)  # fmt: skip
    if len(study.relabel) > len(shown):
        doc.paragraph(f"{len(study.relabel) - len(shown)} more models evaluated on anonymized data (fine-tunes, "
                      "other sizes and methods) are scored in `metrics/relabel/` and not shown here.")  # fmt: skip
    series, labels = {}, []
    for (variant, name), result in shown.items():
        if name != "Org on Anon" or result.get("void"):
            continue
        per_class = result["delta"]["per_class"]
        changed = {c: d["AP"] for c, d in per_class.items() if d["AP"]["value"]}
        top = sorted(changed, key=lambda c: (-abs(changed[c]["value"]), c))[:10]
        doc.paragraph(f"**{variant}: Org on Anon**, the classes whose AP moved most:")
        before, after = result["original"]["per_class"], result["corrected"]["per_class"]
        run, eval_run = result["mlflow_run_id"], result.get("eval_mlflow_run_id")
        doc.table(
            ["class", "AP, original GT", "AP, corrected GT", "Δ AP"],
            [[c, ctx.links.number(_scaled(before[c]["AP"]), eval_run, 1),
              ctx.links.number(_scaled(after[c]["AP"]), run, 1), ctx.links.text(_delta_of(changed[c]).text(), run)]
             for c in top] or [["(no class changed)", "", "", ""]],
        )  # fmt: skip
        labels += [c for c in top if c not in labels]
        series[f"{variant}: Org on Anon"] = per_class
    if labels:
        figure_series = {
            n: [_scaled(p.get(c, {}).get("AP", {}).get("value")) for c in labels] for n, p in series.items()
        }
        path = charts.grouped_bars(labels, figure_series, "AP change per class: corrected minus original ground truth",
                                   "Δ AP (points)", ctx.figures / "q8_relabel.png")  # fmt: skip
        ctx.figure(doc, path, "Q8: per-class AP change from correcting stale labels (Org on Anon).")
    answers = [f"{v}: {n} {_delta_of(r['delta']['AP']).text()}" if not r.get("void") else f"{v}: {n} void"
               for (v, n), r in shown.items()]  # fmt: skip
    doc.paragraph("**Answer (AP with corrected minus original labels, points):** " + "; ".join(answers) + ".")


def _relabel_cells(ctx: Context, result: dict[str, Any], stat: str) -> list[str]:
    """AP against the original and the corrected ground truth and their difference; void with its reason."""
    if result.get("void"):
        text = ctx.links.text(f"void ({result.get('void_reason') or 'no reason given'})", result["mlflow_run_id"])
        return [text, text, "void"]
    return [
        ctx.links.number(_scaled(result["original"][stat]), result.get("eval_mlflow_run_id"), 1),
        ctx.links.number(_scaled(result["corrected"][stat]), result["mlflow_run_id"], 1),
        ctx.links.text(_delta_of(result["delta"][stat]).text(), result["mlflow_run_id"]),
    ]


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
    doc.table(["method", "split", "images with person", "persons", "anonymized", "left", "small / degenerate / "
               "empty / crowd", "pixel coverage", "worst image"], rows, left=2)  # fmt: skip
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
    q1_methods,
    q2_size,
    q3_matrix,
    q4_ssim,
    q5_grid,
    figure6,
    q6_q7_freeze,
    q8_relabel,
    coverage_section,
)


def build(cfg: Config, study: Study, links: RunLinks) -> tuple[Document, list[Path]]:
    """The report document and the figures it shows (written under ``reports/figures/``).

    The sections are built first so that the header can say which of them are void. Each section that
    cites runs ends with a link to MLflow's compare view on exactly those runs.
    """
    ctx = Context(study, links, cfg.paths.reports / "figures")
    body = Document()
    for section in SECTIONS:
        links.section = []
        section(body, ctx)
        if link := links.compare():
            body.paragraph(link)
    doc = Document()
    header(doc, ctx)
    blocks: list[Block] = [*doc.blocks, *body.blocks]
    return Document(blocks), ctx.made


def headline_metrics(study: Study) -> dict[str, float]:
    """The study's headline numbers: how many evaluations, how many void, and each one's AP and AP50.

    Keys are ``evaluations``, ``void_evaluations``, ``AP/<model> on <variant>`` and ``AP50/...``.
    Logged to the study run, they let two studies compare model by model in MLflow's compare view.
    """
    return {
        "evaluations": len(study.evaluations),
        "void_evaluations": sum(record.void for record in study.evaluations),
        **{
            f"{stat}/{record.model_id} on {record.eval_data}": float(record.stats[stat])
            for record in study.evaluations
            if not record.void
            for stat in ("AP", "AP50")
            if record.stats.get(stat) is not None
        },
    }


def run(cfg: Config) -> list[Path]:
    """Build the study report from every stage's outputs and log it to an MLflow run.

    Args:
        cfg: Validated configuration (``report`` settings, paths of every stage's outputs).

    Returns:
        ``reports/study.md``, ``reports/study.html`` and the figures.
    """
    with mlflow_run(cfg, "study report", "report", reads=None) as active:
        import mlflow

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
        mlflow.set_tag("cited_runs", len(links.cited))
        mlflow.log_params({"bootstrap_samples": cfg.report.bootstrap_samples, "confidence": cfg.report.confidence,
                           "per_class_combination": cfg.report.per_class_combination})  # fmt: skip
        mlflow.log_dict({"cited_runs": sorted(links.cited)}, "cited_runs.json")
        mlflow.log_artifact(str(written[0]))
        mlflow.log_artifact(str(written[1]))
        mlflow.log_artifacts(str(out / "figures"), "figures")
        finish_study(mlflow.get_run(active.info.run_id).data.tags[PARENT_TAG], headline_metrics(study))
    return written
