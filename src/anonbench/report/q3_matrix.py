"""Q3: are original and anonymized data exchangeable (the four combinations per size, the train x eval matrix)?"""

from __future__ import annotations

from anonbench.config import ORIGINAL, model_id
from anonbench.report import charts
from anonbench.report.context import (
    ANON_COMBINATIONS,
    Context,
    ap_of,
    in_grid,
    methods_of,
    missing_models,
    scaled,
    sizes_of,
    trained,
    variants_in,
)
from anonbench.report.doc import Document


def q3_matrix(doc: Document, ctx: Context) -> None:
    """Q3: per size, the four combinations of every method against Org on Org; the full train x eval matrix."""
    section = "Q3"
    doc.heading("Q3: Are original and anonymized data exchangeable?")
    cfg, study = ctx.cfg, ctx.study
    records = trained(study)
    size, base = ctx.org_on_org()
    if size is None:
        missing_models(doc, "no evaluation of a trained model")
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
        values = [[scaled(ap_of(study.find(model_id(t, s), e))) for e in evals] for t in shown]
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
