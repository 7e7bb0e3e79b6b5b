"""Q2: does model size matter (AP against fused parameter count)?"""

from __future__ import annotations

from anonbench.config import ORIGINAL
from anonbench.families import DEFAULT_FAMILY
from anonbench.report import charts
from anonbench.report.context import (
    ANON_COMBINATIONS,
    SIZE_ORDER,
    Context,
    in_grid,
    methods_of,
    missing_models,
    scaled,
    sizes_of,
    trained,
)
from anonbench.report.doc import Document
from anonbench.study import EvalRecord


def q2_size(doc: Document, ctx: Context) -> None:
    """Q2: AP against model size (fused parameter counts) for the four combinations of every method."""
    section = "Q2"
    doc.heading("Q2: Does model size matter?")
    records = trained(ctx.study)
    if not records:
        missing_models(doc, "no evaluation of a trained model")
        return
    sizes = sizes_of(records)
    params = {}
    for size in sizes:
        counts = [
            t.get("params_fused")
            for t in ctx.study.trainings.values()
            if str(t.get("model_size")) == size and t.get("family", DEFAULT_FAMILY) == DEFAULT_FAMILY
        ]
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
            (float(params[s] or SIZE_ORDER.index(s) + 1), scaled(e.ap() if e else None)) for s, e in found.items()
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
